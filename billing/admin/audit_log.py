"""The audit log, read-only: services write it, nobody edits it."""

from __future__ import annotations

from django.contrib import admin

from billing.admin.base import TenantFilter, TenantScopedAdminMixin
from billing.models import AuditLog


@admin.register(AuditLog)
class AuditLogAdmin(TenantScopedAdminMixin, admin.ModelAdmin):
    list_display = [
        "created_at",
        "tenant",
        "actor",
        "actor_kind",
        "action",
        "object_type",
        "object_id",
    ]
    list_filter = ["action", "actor_kind", TenantFilter]
    search_fields = ["object_id", "note", "correlation_id"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
