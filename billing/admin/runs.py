"""Sync runs and analytics runs: what the jobs did."""

from __future__ import annotations

from django.contrib import admin

from billing.admin.base import (
    OfferedActionsOnlyMixin,
    ReadOnlyAdminMixin,
    TenantFilter,
    TenantScopedAdminMixin,
)
from billing.models import (
    AnalyticsRun,
    SyncRun,
)


@admin.register(SyncRun)
class SyncRunAdmin(
    OfferedActionsOnlyMixin,
    ReadOnlyAdminMixin,
    TenantScopedAdminMixin,
    admin.ModelAdmin,
):
    # What fits a 1400 px screen; every counter is on the run's page.
    list_display = [
        "started_at",
        "tenant",
        "kind",
        "outcome",
        "traces_fetched",
        "billed",
        "skipped",
        "langfuse_calls",
        "stripe_calls",
        "error",
    ]
    list_filter = ["status", "kind", TenantFilter]
    date_hierarchy = "started_at"
    list_select_related = ["tenant"]

    @admin.display(description="Status", ordering="status")
    def outcome(self, obj: SyncRun) -> str:
        status = obj.get_status_display()
        if obj.consecutive_failures >= SyncRun.STUCK_AFTER:
            return f"{status}: stuck ({obj.consecutive_failures} in a row)"
        if obj.consecutive_failures > 1:
            return f"{status} ({obj.consecutive_failures} in a row)"
        return status


@admin.register(AnalyticsRun)
class AnalyticsRunAdmin(OfferedActionsOnlyMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "started_at",
        "kind",
        "status",
        "period_start",
        "period_end",
        "tenant",
        "duration_ms",
        "summaries_written",
        "scopes_examined",
        "anomalies_created",
        "anomalies_updated",
        "anomalies_reopened",
        "error",
    ]
    list_filter = ["kind", "status"]
    date_hierarchy = "started_at"
    # Nullable (a run over every tenant has none): not joined by default.
    list_select_related = ["tenant"]

    def has_view_permission(self, request, obj=None) -> bool:
        # Runs span tenants: platform operators only.
        return request.user.is_superuser
