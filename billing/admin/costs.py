"""
Daily cost summaries, and the "Cost over time" page.

The page shows one tenant's or all of the user's tenants' daily cost over the
last 30 or 90 UTC days: a server-rendered chart, the totals, a table of the
days and a breakdown by project, agent, model or user, each table also as a
CSV of exactly what it shows. The numbers come from ``billing.cost_history``
(which explains why it reads the scope usage and not these summaries); the
view only parses the query string, calls the selectors and shapes one table
per CSV, which the template and the CSV both render, so they cannot drift.

It lives on the cost summaries' admin because it is their view over time
and it shares their permission: whoever may view cost summaries may look at
it, a viewer included. A tenant outside the user's is a 404, and only the
user's tenants are ever named.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from billing.admin.base import (
    OfferedActionsOnlyMixin,
    ReadOnlyAdminMixin,
    TenantFilter,
    TenantScopedAdminMixin,
    request_tenants,
)
from billing.admin.exports import CsvExportAdminMixin, csv_response
from billing.charts import CENT, daily_cost_chart, usd
from billing.cost_history import (
    CostBreakdown,
    DailyCost,
    Dimension,
    cost_breakdown_list,
    cost_daily_list,
    cost_period,
    cost_totals,
)
from billing.models import CostSummary, Tenant

# The periods the page offers, in days; the first is the default.
COST_WINDOWS = (30, 90)
TABLES = ("daily", "breakdown")


@dataclass(frozen=True)
class Column:
    title: str  # the page's header
    csv: str  # the CSV's header: money columns name their currency
    kind: str = "text"  # text, money, count, percent, date


@dataclass(frozen=True)
class Table:
    """One table of the page, with typed cells: the page and the CSV format
    the same values, each its own way."""

    columns: list[Column]
    rows: list[list[Any]]
    # Rows after the body (the breakdown's "other" and total): same columns.
    footer: list[list[Any]]


def _cents(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def _page_cell(value: Any, kind: str) -> str:
    if value is None:
        return ""
    if kind == "money":
        return usd(value)
    if kind == "count":
        return f"{value:,}"
    if kind == "percent":
        return f"{value}%"
    if kind == "date":
        return value.isoformat()
    return str(value)


def _csv_cell(value: Any, kind: str) -> Any:
    # Money as the page shows it (cents), as a plain decimal; the text goes
    # through the export's formula neutralising in ``csv_lines``.
    if value is None:
        return ""
    if kind == "money":
        return f"{_cents(value):f}"
    if kind == "percent":
        return f"{value}"
    return value


def _share(part: Decimal, whole: Decimal) -> Decimal | None:
    if whole <= 0:
        return None
    return (part * 100 / whole).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def daily_table(daily: list[DailyCost]) -> Table:
    return Table(
        columns=[
            Column("Date", "date", "date"),
            Column("Cost", "cost_usd", "money"),
            Column("Traces", "traces", "count"),
        ],
        rows=[[d.day, d.cost, d.traces] for d in daily],
        footer=[],
    )


def breakdown_table(
    breakdown: CostBreakdown, *, tenant_names: dict[int, str] | None
) -> Table:
    """
    ``tenant_names``: when the page covers several tenants, the names of the
    user's tenants for a Tenant column (a project belongs to its tenant).
    """
    dimension = Dimension(breakdown.dimension)
    with_tenant = tenant_names is not None and dimension != Dimension.MODEL
    with_project = dimension == Dimension.AGENT
    columns = []
    if with_tenant:
        columns.append(Column("Tenant", "tenant"))
    if with_project:
        columns.append(Column("Project", "project"))
    columns += [
        Column(dimension.label, dimension.value),
        Column("Cost", "cost_usd", "money"),
        Column("Share", "share_percent", "percent"),
        Column("Traces", "traces", "count"),
    ]

    def row(name, tenant_id, project_id, cost, traces) -> list[Any]:
        cells: list[Any] = []
        if with_tenant:
            cells.append(tenant_names.get(tenant_id, "") if tenant_id else "")
        if with_project:
            cells.append(project_id)
        return [*cells, name, cost, _share(cost, breakdown.cost), traces]

    rows = [
        row(r.name, r.tenant_id, r.project_id, r.cost, r.traces) for r in breakdown.rows
    ]
    footer = []
    if breakdown.other is not None:
        footer.append(
            row(
                f"Other ({breakdown.other_count:,} more)",
                None,
                "",
                breakdown.other.cost,
                breakdown.other.traces,
            )
        )
    if breakdown.rows:
        footer.append(row("Total", None, "", breakdown.cost, breakdown.traces))
    return Table(columns=columns, rows=rows, footer=footer)


def _rendered(table: Table) -> dict[str, Any]:
    def cells(row):
        return [
            (_page_cell(v, c.kind), c.kind)
            for v, c in zip(row, table.columns, strict=True)
        ]

    return {
        "columns": table.columns,
        "rows": [cells(r) for r in table.rows],
        "footer": [cells(r) for r in table.footer],
    }


def _csv_rows(table: Table) -> list[list[Any]]:
    return [
        [_csv_cell(v, c.kind) for v, c in zip(row, table.columns, strict=True)]
        for row in [*table.rows, *table.footer]
    ]


def _choice(params: QueryDict, name: str, choices: list[str], default: str) -> str:
    # An unknown choice falls back to the default, which the page then
    # shows (and its CSV links carry), so nothing claims a period it lacks.
    value = params.get(name, "")
    return value if value in choices else default


@admin.register(CostSummary)
class CostSummaryAdmin(
    OfferedActionsOnlyMixin,
    CsvExportAdminMixin,
    ReadOnlyAdminMixin,
    TenantScopedAdminMixin,
    admin.ModelAdmin,
):
    list_display = [
        "period_start",
        "tenant",
        "scope_type",
        "project_id",
        "scope_id",
        "trace_count",
        "cost_display",
        "computed_at",
    ]
    list_filter = ["scope_type", TenantFilter]
    search_fields = ["scope_id", "project_id"]
    date_hierarchy = "period_start"
    list_select_related = ["tenant"]
    csv_fields = [
        "id",
        "tenant_id",
        ("tenant", "tenant__name"),
        "scope_type",
        "project_id",
        "scope_id",
        "period_start",
        "period_end",
        "trace_count",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        ("cost_usd", "cost"),
        "computed_at",
    ]

    @admin.display(description="Cost", ordering="cost")
    def cost_display(self, obj: CostSummary) -> str:
        return usd(obj.cost)

    def get_urls(self) -> list:
        return [
            path(
                "over-time/",
                self.admin_site.admin_view(self.cost_over_time_view),
                name=f"{self.opts.app_label}_{self.opts.model_name}_over_time",
            ),
            *super().get_urls(),
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict | None = None
    ) -> HttpResponse:
        # The object-tools link keeps the changelist's tenant filter.
        url = reverse("admin:billing_costsummary_over_time")
        tenant = request.GET.get(TenantFilter.parameter_name, "")
        if tenant.isascii() and tenant.isdigit():
            url += f"?tenant={tenant}"
        extra_context = {**(extra_context or {}), "cost_over_time_url": url}
        return super().changelist_view(request, extra_context)

    def cost_over_time_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        tenants = request_tenants(request).only("pk", "name", "slug").order_by("name")
        by_id = {t.pk: t for t in tenants}
        names = {pk: t.name for pk, t in by_id.items()}

        params = request.GET
        tenant = None
        if params.get("tenant"):
            value = params["tenant"]
            # Another tenant's page does not exist, for this user.
            if not (value.isascii() and value.isdigit()) or int(value) not in by_id:
                raise Http404("No such tenant.")
            tenant = by_id[int(value)]
        windows = [str(days) for days in COST_WINDOWS]
        days = int(_choice(params, "days", windows, windows[0]))
        dimension = _choice(params, "by", Dimension.values, Dimension.PROJECT)

        scope = [tenant.pk] if tenant else list(names)
        start, end = cost_period(days=days)
        daily = cost_daily_list(tenant_ids=scope, start=start, end=end)
        breakdown = cost_breakdown_list(
            tenant_ids=scope, start=start, end=end, dimension=dimension
        )
        tables = {
            "daily": daily_table(daily),
            # A Tenant column only when the rows may belong to several.
            "breakdown": breakdown_table(
                breakdown, tenant_names=None if len(scope) <= 1 else names
            ),
        }

        if params.get("format") == "csv":
            table = _choice(params, "table", list(TABLES), TABLES[0])
            who = tenant.slug if tenant else "all-tenants"
            suffix = f"-by-{dimension}" if table == "breakdown" else ""
            return csv_response(
                filename=f"cost-{who}-{start}-{end}-{table}{suffix}.csv",
                header=[c.csv for c in tables[table].columns],
                rows=_csv_rows(tables[table]),
            )

        shown = QueryDict(mutable=True)
        shown.update({"days": str(days), "by": dimension})
        if tenant:
            shown["tenant"] = str(tenant.pk)
        csv_links = {}
        for table in TABLES:
            query = shown.copy()
            query.update({"format": "csv", "table": table})
            csv_links[table] = f"?{query.urlencode()}"

        subject = tenant.name if tenant else "All your tenants"
        if getattr(request, "tenant_ids", []) is None and not tenant:
            subject = "All tenants"
        totals = cost_totals(daily=daily)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Cost over time",
            "subtitle": subject,
            "tenant": tenant,
            "tenant_choices": list(names.items()),
            "days": days,
            "day_choices": COST_WINDOWS,
            "dimension": Dimension(dimension),
            "dimension_choices": Dimension.choices,
            "start": start,
            "end": end,
            "totals": {
                "cost": usd(totals.cost),
                "traces": f"{totals.traces:,}",
                "average": usd(totals.average_per_day),
                "peak": (
                    f"{usd(totals.peak.cost)} on {totals.peak.day.isoformat()}"
                    if totals.peak
                    else "-"
                ),
            },
            "chart": daily_cost_chart(
                [(d.day, d.cost) for d in daily],
                label=f"Daily cost of {tenant.name if tenant else subject.lower()}",
            ),
            "daily": _rendered(tables["daily"]),
            "breakdown": _rendered(tables["breakdown"]),
            "csv_links": csv_links,
        }
        return TemplateResponse(
            request,
            "admin/billing/costsummary/cost_over_time.html",
            context,
        )


def cost_over_time_link(tenant: Tenant) -> str:
    """A link to the tenant's cost over time, for other admins' rows."""
    return format_html(
        '<a href="{}?tenant={}">Cost over time</a>',
        reverse("admin:billing_costsummary_over_time"),
        tenant.pk,
    )
