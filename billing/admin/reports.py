"""The Stripe outbox: reports, and retrying the failed ones."""

from __future__ import annotations

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html, format_html_join

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
from billing.models import StripeReport, UsageAdjustment, UsageRecord
from billing.services import InvalidTransition
from billing.stripe_sink import report_retry

# Rows listed on a report's page; the rest are a link to the usage records.
CARRIED_SHOWN = 100


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

    readonly_fields = ["carried"]

    @admin.display(description="Ledger rows carried")
    def carried(self, report: StripeReport) -> str:
        """The records and adjustments this report billed, with their traces."""
        rows = [
            (
                reverse(f"admin:billing_{model._meta.model_name}_change", args=[pk]),
                kind,
                trace_id,
                f"{timestamp:%Y-%m-%d %H:%M:%S}",
                f"${cost:.6f}",
            )
            for model, kind, related, trace in (
                (UsageRecord, "record", report.usage_records, "trace_id"),
                (
                    UsageAdjustment,
                    "adjustment",
                    report.adjustments,
                    "usage_record__trace_id",
                ),
            )
            for pk, trace_id, timestamp, cost in related.order_by(
                "trace_timestamp", "pk"
            ).values_list("pk", trace, "trace_timestamp", "cost")[:CARRIED_SHOWN]
        ]
        table = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>',
            rows,
        )
        total = report.record_count + report.adjustment_count
        more = ""
        if total > len(rows):
            listed = reverse("admin:billing_usagerecord_changelist")
            more = format_html(
                '<p><a href="{}?report__id__exact={}">All {} rows</a></p>',
                listed,
                report.pk,
                total,
            )
        return format_html(
            "<table><thead><tr><th>Row</th><th>Langfuse trace</th><th>Trace time "
            "(UTC)</th><th>Cost</th></tr></thead><tbody>{}</tbody></table>{}",
            table,
            more,
        )

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
