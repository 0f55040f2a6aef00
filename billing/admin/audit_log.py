"""The audit log, read-only: services write it, nobody edits it."""

from __future__ import annotations

from django.contrib import admin

from billing.admin.base import (
    OfferedActionsOnlyMixin,
    TenantFilter,
    TenantScopedAdminMixin,
)
from billing.models import AuditLog


@admin.register(AuditLog)
class AuditLogAdmin(OfferedActionsOnlyMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    list_display = [
        "created_at",
        "tenant",
        "actor",
        "actor_kind",
        "api_token",
        "action",
        "object_type",
        "object_id",
    ]
    # Django's plain related filter would list every user of the platform;
    # this one lists the actors of the rows the user may see.
    list_filter = [
        "action",
        "actor_kind",
        ("actor", admin.RelatedOnlyFieldListFilter),
        TenantFilter,
    ]
    search_fields = ["object_id", "note", "correlation_id"]
    date_hierarchy = "created_at"
    # All nullable, so Django would not join them by itself: one lookup per
    # row each (111 queries for 100 rows).
    list_select_related = ["tenant", "actor", "api_token"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
