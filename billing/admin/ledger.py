"""The usage ledger and the sync cursors, read-only."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator

from billing.admin.base import (
    OfferedActionsOnlyMixin,
    ReadOnlyAdminMixin,
    TenantFilter,
    TenantScopedAdminMixin,
)
from billing.ledger import RULE
from billing.models import (
    ModelPrice,
    SyncCursor,
    UsageAdjustment,
    UsageRecord,
)
from billing.models.ledger import BillingStatus
from billing.pricing import PriceSource

# A reason in a list row; the whole one is on the record's page.
REASON_CHARS = 80


@admin.register(UsageRecord)
class UsageRecordAdmin(
    OfferedActionsOnlyMixin,
    ReadOnlyAdminMixin,
    TenantScopedAdminMixin,
    admin.ModelAdmin,
):
    list_display = [
        "trace_id",
        "tenant",
        "trace_timestamp",
        "status",
        "billed_cost",
        "total_tokens",
        "reason",
    ]
    list_filter = ["status", "price_source", TenantFilter]
    search_fields = ["trace_id", "user_id", "agent_id", "project_id", "epic_id"]
    date_hierarchy = "trace_timestamp"
    list_select_related = ["tenant"]
    show_full_result_count = False
    ordering = ["-pk"]

    @admin.display(description="Cost", ordering="cost")
    def billed_cost(self, obj: UsageRecord) -> str:
        if obj.status == BillingStatus.UNPRICED:
            # Only the priced part is known: the rest waits for a price.
            return f"held (${obj.cost:.6f} priced so far)"
        return f"${obj.cost:.6f}"

    @admin.display(description="Why skipped or held")
    def reason(self, obj: UsageRecord) -> str:
        return Truncator(obj.skip_reason).chars(REASON_CHARS)

    # The report that billed it is the "Report" field's link.
    readonly_fields = ["priced_by"]

    @admin.display(description="Priced by")
    def priced_by(self, obj: UsageRecord) -> str:
        """Each observation's model, cost and the price rule that gave it."""
        sources = dict(PriceSource.choices)
        # An entry: [model, input, output, cached, "cost", price source,
        # usage, price row id, priced at]; entries written before the price
        # table was in the database stop at the source or the usage.
        entries = sorted(obj.observations.items())
        rule_ids = {e[RULE] for _, e in entries if len(e) > RULE and e[RULE]}
        rules = ModelPrice.objects.in_bulk(rule_ids)
        rows = []
        for observation, entry in entries:
            model, cost, source = entry[0], entry[4], entry[5]
            rule = rules.get(entry[RULE]) if len(entry) > RULE else None
            if rule is None:
                shown = sources.get(source, source)
            else:
                url = reverse("admin:billing_modelprice_change", args=[rule.pk])
                shown = format_html(
                    '<a href="{}">{} (pattern {})</a>{}',
                    url,
                    rule.model_name,
                    rule.match_pattern,
                    " and Langfuse cost" if source == PriceSource.LANGFUSE else "",
                )
            rows.append((observation, model, cost, shown))
        return format_html(
            "<table><thead><tr><th>Observation</th><th>Model</th><th>Cost</th>"
            "<th>Price rule</th></tr></thead><tbody>{}</tbody></table>",
            format_html_join(
                "", "<tr><td>{}</td><td>{}</td><td>${}</td><td>{}</td></tr>", rows
            ),
        )


@admin.register(UsageAdjustment)
class UsageAdjustmentAdmin(
    OfferedActionsOnlyMixin,
    ReadOnlyAdminMixin,
    TenantScopedAdminMixin,
    admin.ModelAdmin,
):
    list_display = [
        "usage_record",
        "tenant",
        "status",
        "cost",
        "created_at",
        "skip_reason",
    ]
    list_filter = ["status", TenantFilter]
    search_fields = ["usage_record__trace_id"]
    list_select_related = ["tenant", "usage_record"]


@admin.register(SyncCursor)
class SyncCursorAdmin(
    OfferedActionsOnlyMixin,
    ReadOnlyAdminMixin,
    TenantScopedAdminMixin,
    admin.ModelAdmin,
):
    list_display = [
        "tenant",
        "watermark",
        "billed_amount",
        "billed_units",
        "updated_at",
    ]
