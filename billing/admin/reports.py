"""The Stripe outbox: reports, and retrying the failed ones."""

from __future__ import annotations

from django.contrib import admin, messages

from billing.admin.base import (
    OPERATE_ROLES,
    OfferedActionsOnlyMixin,
    ReadOnlyAdminMixin,
    TenantFilter,
    TenantScopedAdminMixin,
    refuse_outside,
    request_actor,
    tenant_ids_acting_as,
)
from billing.admin.exports import CsvExportAdminMixin
from billing.models import StripeReport
from billing.services import InvalidTransition
from billing.stripe_sink import report_retry


@admin.register(StripeReport)
class StripeReportAdmin(
    OfferedActionsOnlyMixin,
    CsvExportAdminMixin,
    ReadOnlyAdminMixin,
    TenantScopedAdminMixin,
    admin.ModelAdmin,
):
    list_display = [
        "identifier",
        "tenant",
        "day",
        "value",
        "unit",
        "record_count",
        "adjustment_count",
        "status",
        "attempts",
        "last_error",
    ]
    list_filter = ["status", "unit", TenantFilter]
    search_fields = ["identifier", "stripe_customer_id"]
    date_hierarchy = "day"
    list_select_related = ["tenant"]
    actions = ["retry"]
    # ``amount`` is in the report's unit (micro-USD or tokens), not dollars.
    csv_fields = [
        "id",
        "tenant_id",
        ("tenant", "tenant__name"),
        "identifier",
        "event_name",
        "stripe_customer_id",
        "unit",
        "value",
        ("amount_in_unit", "amount"),
        "day",
        "timestamp",
        "record_count",
        "adjustment_count",
        "status",
        "attempts",
        "last_error",
        "created_at",
        "sent_at",
    ]

    def has_retry_permission(self, request) -> bool:
        tenant_ids = tenant_ids_acting_as(request, OPERATE_ROLES)
        return request.user.has_perm("billing.view_stripereport") and (
            tenant_ids is None or bool(tenant_ids)
        )

    @admin.action(description="Retry selected failed reports", permissions=["retry"])
    def retry(self, request, queryset) -> None:
        refuse_outside(request, queryset, OPERATE_ROLES)
        retried = 0
        failed = queryset.filter(status=StripeReport.Status.FAILED)
        for report_id in failed.values_list("pk", flat=True):
            try:
                retried += report_retry(
                    report_id=report_id, actor=request_actor(request)
                )
            except InvalidTransition as exc:
                self.message_user(request, str(exc), messages.WARNING)
        self.message_user(
            request,
            f"{retried} report(s) queued again for the tenant's current Stripe "
            "customer and meter; the next sync sends them.",
        )
