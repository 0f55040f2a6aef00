"""
Cost over time: a set of tenants' daily costs and where the money went.

Read from ``DailyScopeUsage``, not from ``CostSummary``. Both hold one row
per day and scope, but the summaries are written by the 02:00 UTC rollup
(today and yesterday are missing until it runs, suspended tenants are never
rolled up) and keep their models in a JSON column a breakdown would have to
unpack row by row. The scope usage is kept current by the ledger's triggers
in the same statement as every ledger write, has the model as a column, and
is the rollup's own input, so these numbers are the summaries' numbers once
a day is rolled up. A 90-day page reads the days' rows of the chosen tenants
through the (scope type, tenant, day) index: a few grouped queries, whatever
the ledger's size.

How the scope usage counts (``billing.scope_usage``):

- every trace counts once under each scope type it has (project, agent,
  epic, user), so adding scope types together counts a trace up to four
  times: a total reads one scope type, the project's;
- a trace without a project (or agent, or user) has no row of that scope
  type at all: there is no "(none)" row. The project is the scope every
  trace has under the default mapping (it falls back to the Langfuse
  project), so totals read the project rows; a tenant whose own mapping
  leaves traces without a project has those traces' cost outside these
  totals, and the page says so;
- a scope's traces are counted once, on one of its models (``trace_count``);
  the traces that used a model are ``model_trace_count``, so a trace that
  used two models counts in both of their rows of the model breakdown.

Days are UTC days, as the ledger's and the rollup's are.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db import models
from django.db.models import Count, Sum
from django.db.models.functions import Coalesce

from billing.models import DailyScopeUsage, ScopeType

ZERO = Decimal(0)
# How many rows a breakdown lists before the rest become "other": enough to
# name what matters, few enough to read at a glance.
BREAKDOWN_TOP = 10


class Dimension(models.TextChoices):
    """What a breakdown groups the period's cost by."""

    PROJECT = "project", "Project"
    AGENT = "agent", "Agent"
    MODEL = "model", "Model"
    USER = "user", "User"


@dataclass(frozen=True)
class DailyCost:
    day: date
    cost: Decimal
    traces: int


@dataclass(frozen=True)
class CostTotals:
    cost: Decimal
    traces: int
    days: int
    average_per_day: Decimal
    # The costliest day; None when every day cost nothing.
    peak: DailyCost | None


@dataclass(frozen=True)
class BreakdownRow:
    # The project, agent, model or user; "" on the "other" row.
    name: str
    # Projects, agents and users belong to a tenant: two tenants' "web"
    # projects are two rows. None for models, which every tenant shares.
    tenant_id: int | None
    # The agent's project (agents are scoped within their project).
    project_id: str
    cost: Decimal
    traces: int


@dataclass(frozen=True)
class CostBreakdown:
    dimension: str
    rows: list[BreakdownRow]
    # Everything after the top rows, summed; None when there is nothing more.
    other: BreakdownRow | None
    other_count: int
    # The sums over every row of the dimension (top rows and other).
    cost: Decimal
    traces: int


def cost_period(*, days: int, end: date | None = None) -> tuple[date, date]:
    """The last ``days`` UTC days up to ``end`` (today by default), inclusive."""
    if days < 1:
        raise ValueError("a period has at least one day")
    end = end or datetime.now(UTC).date()
    return end - timedelta(days=days - 1), end


def _usage(
    *, tenant_ids: Collection[int], start: date, end: date, scope_type: str
) -> models.QuerySet:
    # The filter every read here starts from: the (scope type, tenant, day)
    # index serves it.
    return DailyScopeUsage.objects.filter(
        day__gte=start,
        day__lte=end,
        tenant_id__in=list(tenant_ids),
        scope_type=scope_type,
    )


def cost_daily_list(
    *, tenant_ids: Collection[int], start: date, end: date
) -> list[DailyCost]:
    """
    The tenants' cost and traces per UTC day from ``start`` to ``end``
    inclusive: every day present, days without usage as zero.
    """
    sums = {
        row["day"]: row
        for row in _usage(
            tenant_ids=tenant_ids, start=start, end=end, scope_type=ScopeType.PROJECT
        )
        .values("day")
        .annotate(day_cost=Sum("cost"), day_traces=Sum("trace_count"))
        .order_by()
    }
    daily = []
    day = start
    while day <= end:
        row = sums.get(day)
        daily.append(
            DailyCost(
                day=day,
                cost=row["day_cost"] if row else ZERO,
                traces=row["day_traces"] if row else 0,
            )
        )
        day += timedelta(days=1)
    return daily


def cost_totals(*, daily: Sequence[DailyCost]) -> CostTotals:
    """The period's totals, from its days (no query: the days hold them)."""
    cost = sum((d.cost for d in daily), ZERO)
    peak = max(daily, key=lambda d: d.cost, default=None)
    return CostTotals(
        cost=cost,
        traces=sum(d.traces for d in daily),
        days=len(daily),
        average_per_day=cost / len(daily) if daily else ZERO,
        peak=peak if peak is not None and peak.cost > 0 else None,
    )


# Per dimension: the scope type whose rows it reads, the columns it groups
# by, and the trace count that is right for one of its rows.
_BREAKDOWNS: dict[str, tuple[str, tuple[str, ...], str]] = {
    Dimension.PROJECT: (ScopeType.PROJECT, ("tenant_id", "scope_id"), "trace_count"),
    Dimension.AGENT: (
        ScopeType.AGENT,
        ("tenant_id", "project_id", "scope_id"),
        "trace_count",
    ),
    Dimension.USER: (ScopeType.USER, ("tenant_id", "scope_id"), "trace_count"),
    # Every trace that used a model has a project row for it; the rows with
    # an empty model are traces without usage (no cost, no model).
    Dimension.MODEL: (ScopeType.PROJECT, ("model",), "model_trace_count"),
}


def cost_breakdown_list(
    *,
    tenant_ids: Collection[int],
    start: date,
    end: date,
    dimension: str,
    top: int = BREAKDOWN_TOP,
) -> CostBreakdown:
    """
    The period's cost and traces by project, agent, model or user: the
    ``top`` costliest, and the rest summed as "other". Two queries, whatever
    the number of days or scopes.
    """
    scope_type, keys, traces_column = _BREAKDOWNS[dimension]
    usage = _usage(tenant_ids=tenant_ids, start=start, end=end, scope_type=scope_type)
    if dimension == Dimension.MODEL:
        usage = usage.exclude(model="")
    groups = (
        usage.values(*keys)
        .annotate(group_cost=Sum("cost"), group_traces=Sum(traces_column))
        .order_by()
    )
    whole = groups.aggregate(
        count=Count("*"),
        all_cost=Coalesce(Sum("group_cost"), ZERO, output_field=models.DecimalField()),
        all_traces=Coalesce(Sum("group_traces"), 0),
    )
    # Ties in cost fall back to the name, so the same data lists the same way.
    ranked = groups.order_by("-group_cost", *keys)[:top]
    rows = [
        BreakdownRow(
            name=row["model"] if dimension == Dimension.MODEL else row["scope_id"],
            tenant_id=row.get("tenant_id"),
            project_id=row.get("project_id", ""),
            cost=row["group_cost"],
            traces=row["group_traces"],
        )
        for row in ranked
    ]
    other_count = whole["count"] - len(rows)
    other = None
    if other_count > 0:
        other = BreakdownRow(
            name="",
            tenant_id=None,
            project_id="",
            cost=whole["all_cost"] - sum((r.cost for r in rows), ZERO),
            traces=whole["all_traces"] - sum(r.traces for r in rows),
        )
    return CostBreakdown(
        dimension=dimension,
        rows=rows,
        other=other,
        other_count=max(other_count, 0),
        cost=whole["all_cost"],
        traces=whole["all_traces"],
    )
