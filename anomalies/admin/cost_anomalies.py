"""
Admin for cost anomalies: the review queue, and a page per anomaly that
explains itself.

The list fits a 1400 px screen: day, tenant, type, scope, observed vs
expected, severity (the money at stake either way), status and assignee, and
how many other anomalies share its incident (``anomalies.incidents``). Its
default order is the review queue (open first, most money first), read from
an index on generated columns, and it counts no further than 10,000 matches
(``paging``).

The change page shows what the detector saw (``anomalies.evidence``): the
rule and what "expected" is made of, the scope's last 28 days as a chart,
the top models and traces with links to their ledger rows, its incident and
the incident's other anomalies, and the audit timeline.
"""

from __future__ import annotations

from decimal import Decimal

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.text import Truncator
from rangefilter.filters import DateRangeQuickSelectListFilterBuilder

from anomalies import evidence
from anomalies.admin.filters import AssigneeFilter, IncidentFilter
from anomalies.admin.paging import CappedPaginator
from anomalies.admin.review import ReviewActionsMixin, count
from anomalies.models import AnomalyType, CostAnomaly, ResolutionReason
from billing.admin.base import (
    OfferedActionsOnlyMixin,
    ReadOnlyAdminMixin,
    TenantFilter,
    TenantScopedAdminMixin,
    request_tenants,
)
from billing.admin.exports import CsvExportAdminMixin
from billing.charts import daily_cost_chart, usd
from billing.models import AuditLog

# A scope id in a list row; the whole one is on the anomaly's page.
SCOPE_CHARS = 40
SHORT_TYPES = {
    AnomalyType.HIGH_COST: "High vs peers",
    AnomalyType.SUSPICIOUSLY_LOW: "Low vs peers",
    AnomalyType.SPIKE_VS_BASELINE: "Spike vs own baseline",
    AnomalyType.MISSING_DATA: "Missing data",
    AnomalyType.EXPENSIVE_TRACE: "Expensive trace",
}


def scope_text(anomaly: CostAnomaly, chars: int | None = None) -> str:
    """The scope as rows show it, type then id under its project: agent web/bot."""
    name = (
        f"{anomaly.project_id}/{anomaly.scope_id}"
        if anomaly.project_id
        else anomaly.scope_id
    )
    return f"{anomaly.scope_type} {Truncator(name).chars(chars) if chars else name}"


def money_text(anomaly: CostAnomaly) -> str:
    """Observed vs expected and their ratio: $412.50 vs $2.00 (206.3x)."""
    return f"{usd(anomaly.observed)} vs {usd(anomaly.expected)} ({ratio_text(anomaly)})"


def ratio_text(anomaly: CostAnomaly) -> str:
    if anomaly.ratio is None:
        return "no expected cost"
    if anomaly.ratio == 0:
        return "none"
    return f"{anomaly.ratio:.1f}x" if anomaly.ratio >= 1 else f"{anomaly.ratio:.2f}x"


# Audit actions as an operator reads them.
ACTION_WORDS = {
    "anomaly.detect": "Detected",
    "anomaly.redetect": "Re-detected with new numbers",
    "anomaly.acknowledge": "Acknowledged",
    "anomaly.resolve": "Resolved",
    "anomaly.reopen": "Reopened",
    "anomaly.assign": "Assigned",
    "incident.acknowledge": "Acknowledged",
    "incident.resolve": "Resolved",
    "incident.reopen": "Reopened",
}


def timeline_entry(entry: AuditLog, users: dict[int, str]) -> dict:
    before, after = entry.before or {}, entry.after or {}
    change = ""
    if entry.action == "anomaly.assign":
        change = f"to {users.get(after.get('assignee'), 'a former user')}"
    elif before.get("status") and before.get("status") != after.get("status"):
        change = f"{before['status']} → {after.get('status')}"
    elif "observed" in before and before.get("observed") != after.get("observed"):
        change = (
            f"observed {usd(Decimal(before['observed']))} → "
            f"{usd(Decimal(after['observed']))}"
        )
    if "changed" in after:  # an incident's review: how many members it changed
        changed = count(len(after["changed"]))
        change = f"{change}, {changed}" if change else changed
    reason = after.get("resolution_reason") if entry.action.endswith(".resolve") else ""
    return {
        "action": entry.action,
        "created_at": entry.created_at,
        "what": ACTION_WORDS.get(entry.action, entry.action),
        "who": str(entry.actor)
        if entry.actor
        else entry.get_actor_kind_display().lower(),
        "change": change,
        "reason": ResolutionReason(reason).label
        if reason in ResolutionReason.values
        else reason,
        "note": entry.note,
    }


@admin.register(CostAnomaly)
class CostAnomalyAdmin(
    ReviewActionsMixin,
    OfferedActionsOnlyMixin,
    CsvExportAdminMixin,
    ReadOnlyAdminMixin,
    TenantScopedAdminMixin,
    admin.ModelAdmin,
):
    list_display = [
        "day",
        "tenant",
        "kind",
        "scope",
        "observed_vs_expected",
        "severity",
        "review",
        "related",
    ]
    list_display_links = ["day", "scope"]
    list_filter = [
        "status",
        "anomaly_type",
        "scope_type",
        TenantFilter,
        AssigneeFilter,
        ("period_start", DateRangeQuickSelectListFilterBuilder(title="day")),
        IncidentFilter,
    ]
    search_fields = ["scope_id", "project_id"]
    search_help_text = "A scope or project id (or part of one), or a tenant's name."
    list_select_related = ["tenant", "assignee", "incident"]
    # Counted up to 10,000 matches, and the table's total never.
    paginator = CappedPaginator
    show_full_result_count = False
    actions = ["acknowledge", "resolve", "reopen", "assign_to_me", "assign"]
    csv_fields = [
        "id",
        ("tenant", "tenant__name"),
        ("day", "period_start"),
        "anomaly_type",
        "scope_type",
        "project_id",
        "scope_id",
        ("observed_usd", "observed"),
        ("expected_usd", "expected"),
        "ratio",
        ("impact_usd", "impact"),
        "status",
        ("assignee", "assignee__username"),
        "resolution_reason",
        "resolution_note",
        "cause",
        "first_detected_at",
        "last_detected_at",
    ]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "tenant",
                    "anomaly_type",
                    "scope_type",
                    "project_id",
                    "scope_id",
                    "period_start",
                    "observed_money",
                    "expected_money",
                    "ratio_display",
                ]
            },
        ),
        (
            "Review",
            {
                "fields": [
                    "status",
                    "assignee",
                    "resolution_reason",
                    "resolution_note",
                    "resolved_by",
                    "resolved_at",
                    "first_detected_at",
                    "last_detected_at",
                ]
            },
        ),
    ]

    def changelist_view(self, request: HttpRequest, extra_context=None):
        # The queue needs the whole width of a 1400 px screen; the app list
        # is one click away in the breadcrumbs.
        extra_context = {"is_nav_sidebar_enabled": False, **(extra_context or {})}
        return super().changelist_view(request, extra_context)

    def history_view(self, request: HttpRequest, object_id: str, extra_context=None):
        # The audit log, not Django's LogEntry, holds an anomaly's story.
        anomaly = self.get_object(request, object_id)
        if anomaly is None:
            raise Http404
        url = reverse("admin:billing_auditlog_changelist")
        query = urlencode(
            {"object_type": anomaly._meta.label_lower, "object_id": anomaly.pk}
        )
        return HttpResponseRedirect(f"{url}?{query}")

    def get_search_results(self, request: HttpRequest, queryset, search_term: str):
        """
        A scope or project id (whole, through their indexes; any part of one
        when no id matches whole), or a tenant's name, looked up among the
        user's tenants first.

        Under row-level security Postgres may use an index only for
        leakproof operators: equality is, LIKE is not. A search for a part
        of an id reads every row the user may see (0.7 s at 1M for a
        superuser), so it runs only when the whole-id search found nothing.
        """
        term = search_term.strip()
        if not term:
            return queryset, False
        match = Q(scope_id=term) | Q(project_id=term)
        if not queryset.filter(match).exists():
            match = Q(scope_id__icontains=term) | Q(project_id__icontains=term)
        tenants = request_tenants(request).filter(name__icontains=term)
        named = list(tenants.values_list("pk", flat=True))
        if named:
            match |= Q(tenant_id__in=named)
        return queryset.filter(match), False

    # List columns ----------------------------------------------------------

    def get_list_display(self, request: HttpRequest) -> list[str]:
        # Staff of one tenant would read its name on every row.
        tenant_ids = getattr(request, "tenant_ids", None)
        if tenant_ids is not None and len(tenant_ids) == 1:
            return [c for c in self.list_display if c != "tenant"]
        return self.list_display

    @admin.display(description="Type", ordering="anomaly_type")
    def kind(self, obj: CostAnomaly) -> str:
        return SHORT_TYPES[obj.anomaly_type]

    @admin.display(description="Status", ordering="review_order")
    def review(self, obj: CostAnomaly) -> str:
        status = obj.get_status_display()
        return f"{status} · {obj.assignee}" if obj.assignee else status

    @admin.display(description="Day", ordering="period_start")
    def day(self, obj: CostAnomaly) -> str:
        return f"{obj.period_start:%Y-%m-%d}"

    @admin.display(description="Scope", ordering="scope_id")
    def scope(self, obj: CostAnomaly) -> str:
        return scope_text(obj, SCOPE_CHARS)

    @admin.display(description="Observed vs expected", ordering="ratio")
    def observed_vs_expected(self, obj: CostAnomaly) -> str:
        return money_text(obj)

    @admin.display(description="Severity", ordering="-impact")
    def severity(self, obj: CostAnomaly) -> str:
        sign = "+" if obj.observed >= obj.expected else "-"
        return f"{sign}{usd(obj.impact)}"

    @admin.display(description="Related", ordering="incident__anomaly_count")
    def related(self, obj: CostAnomaly) -> str:
        """The other members of the anomaly's incident, linked to the incident."""
        others = obj.incident.anomaly_count - 1 if obj.incident else 0
        if others < 1:
            return "-"
        url = reverse("admin:anomalies_incident_change", args=[obj.incident_id])
        return format_html(
            '<a href="{}" title="{}">+{}</a>', url, obj.incident.title, others
        )

    # Change page -----------------------------------------------------------

    @admin.display(description="Observed")
    def observed_money(self, obj: CostAnomaly) -> str:
        return usd(obj.observed)

    @admin.display(description="Expected")
    def expected_money(self, obj: CostAnomaly) -> str:
        return usd(obj.expected)

    @admin.display(description="Observed / expected")
    def ratio_display(self, obj: CostAnomaly) -> str:
        return ratio_text(obj)

    def render_change_form(
        self, request, context, add=False, change=False, form_url="", obj=None
    ):
        if obj is not None:
            context.update(self._evidence(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _evidence(self, request: HttpRequest, obj: CostAnomaly) -> dict:
        points = evidence.scope_daily_costs(anomaly=obj)
        traces = evidence.top_traces(anomaly=obj)
        for trace in traces:
            trace["url"] = (
                reverse("admin:billing_usagerecord_change", args=[trace["record_id"]])
                if trace["record_id"]
                else None
            )
        related = list(evidence.related_anomalies(anomaly=obj))
        explanation = evidence.anomaly_explanation(anomaly=obj)
        timeline = list(evidence.audit_timeline(anomaly=obj))
        users = dict(
            get_user_model()
            .objects.filter(pk__in={e.after.get("assignee") for e in timeline})
            .values_list("pk", "username")
        )
        return {
            "review_buttons": self.review_buttons(request, obj),
            "incident": obj.incident,
            "incident_size": count(obj.incident.anomaly_count) if obj.incident else "",
            "explanation": explanation,
            "chart": daily_cost_chart(
                points,
                marked=obj.period_start.date(),
                label=f"Daily cost of {obj.scope_type} {obj.scope_id}",
            ),
            "chart_total": usd(sum(cost for _, cost in points)),
            "top_models": [(m, usd(c)) for m, c in evidence.top_models(anomaly=obj)],
            "top_traces": [{**t, "cost": usd(t["cost"])} for t in traces],
            "related": [
                {
                    "anomaly": a,
                    "observed_vs_expected": self.observed_vs_expected(a),
                }
                for a in related
            ],
            "expected_money": usd(obj.expected),
            "peers": [(name, usd(cost)) for name, cost in explanation.peers],
            "timeline": [timeline_entry(e, users) for e in timeline],
        }
