"""
Admin for cost anomalies (read-only until the review workflow lands: status
changes go through ``anomalies.services`` and their audit log only).
"""

from django.contrib import admin

from anomalies.models import CostAnomaly
from billing.admin import ReadOnlyAdminMixin, TenantScopedAdminMixin


@admin.register(CostAnomaly)
class CostAnomalyAdmin(ReadOnlyAdminMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    list_display = [
        "period_start",
        "tenant",
        "anomaly_type",
        "scope_type",
        "project_id",
        "scope_id",
        "observed",
        "expected",
        "ratio",
        "status",
    ]
    list_filter = ["status", "anomaly_type", "scope_type", "tenant"]
    search_fields = ["scope_id", "project_id"]
    date_hierarchy = "period_start"
    list_select_related = ["tenant"]
