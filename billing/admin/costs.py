"""Daily cost summaries."""

from __future__ import annotations

from django.contrib import admin

from billing.admin.base import (
    ReadOnlyAdminMixin,
    TenantFilter,
    TenantScopedAdminMixin,
)
from billing.models import CostSummary


@admin.register(CostSummary)
class CostSummaryAdmin(ReadOnlyAdminMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    list_display = [
        "period_start",
        "tenant",
        "scope_type",
        "project_id",
        "scope_id",
        "trace_count",
        "cost",
        "computed_at",
    ]
    list_filter = ["scope_type", TenantFilter]
    search_fields = ["scope_id", "project_id"]
    date_hierarchy = "period_start"
    list_select_related = ["tenant"]
