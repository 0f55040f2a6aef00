"""
Daily cost rollup: the ledger aggregated per tenant, scope and UTC day.

One day is rolled up in two set-based statements inside one transaction.
The day's usage lines (``UsageLine``: each billable record's and
adjustment's model breakdown as narrow rows, which count on their trace's
day) are aggregated per agent, epic and user and per model into a temporary
table (three parallel aggregates: ``CREATE TABLE AS`` may use parallel
workers, ``INSERT ... SELECT`` may not); project totals are the sums of their
agents'. Then one ``INSERT ... ON CONFLICT DO UPDATE`` writes every scope's
summary with its per-model breakdown. Re-running a day rewrites the same
rows with the same numbers, period_end included (seed 004's review found
period_end left stale on re-runs), so the rollup is idempotent and a late
adjustment changes the day's totals on the next run; a summary whose
numbers did not change is left as it is rather than rewritten.

Only billable usage counts (records and adjustments that are pending or
reported): skipped traces are visible in the ledger, not in the costs.
Suspended tenants are not rolled up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.db import connection
from django.utils import timezone

from billing.tenancy import tenant_context

DAY = timedelta(days=1)

# Scope type -> (its project, its id) as columns of the lines, for the
# scopes aggregated from them; projects are summed from their agents.
SCOPES = {
    "agent": ("l.project_id", "l.agent_id"),
    "epic": ("l.project_id", "l.epic_id"),
    "user": ("''", "l.user_id"),
}
TOTALS = ("traces", "model_traces", "input_tokens", "output_tokens")
TOTALS += ("cached_tokens", "cost")
SUMMARY_COLUMNS = ("period_end", "trace_count", "input_tokens", "output_tokens")
SUMMARY_COLUMNS += ("cached_tokens", "cost", "model_breakdown")


@dataclass(frozen=True)
class Dialect:
    object_agg: str  # aggregate (key, value) pairs into one JSON object
    object: str  # build a JSON object from key, value, ...
    money: str  # cast a sum to the money type
    distinct: str  # "a IS DISTINCT FROM b" for rows a and b


POSTGRES = Dialect(
    object_agg="jsonb_object_agg",
    object="jsonb_build_object",
    money="::numeric(20, 10)",
    distinct="({a}) IS DISTINCT FROM ({b})",
)
SQLITE = Dialect(
    object_agg="json_group_object",
    object="json_object",
    money="",
    distinct="({a}) IS NOT ({b})",
)


def _dialect() -> Dialect:
    return POSTGRES if connection.vendor == "postgresql" else SQLITE


def _per_model_sql(tenant_filter: str) -> str:
    """The day's lines summed per agent, epic and user, and per model."""
    parts = []
    for scope, (project, scope_id) in SCOPES.items():
        keys = ("l.tenant_id", project, scope_id, "l.model")
        parts.append(
            f"""SELECT l.tenant_id, '{scope}' AS scope_type,
                       {project} AS project_id, {scope_id} AS scope_id, l.model,
                       count(*) FILTER (WHERE l.counts_trace) AS traces,
                       count(*) FILTER (WHERE l.adjustment_id IS NULL)
                           AS model_traces,
                       sum(l.input_tokens) AS input_tokens,
                       sum(l.output_tokens) AS output_tokens,
                       sum(l.cached_tokens) AS cached_tokens,
                       sum(l.cost) AS cost
                FROM billing_usageline l
                WHERE l.trace_timestamp >= %(start)s AND l.trace_timestamp < %(end)s
                      {tenant_filter}
                GROUP BY {", ".join(c for c in keys if c != "''")}"""
        )
    return "CREATE TEMP TABLE rollup_models AS " + " UNION ALL ".join(parts)


def _upsert_sql(sql: Dialect) -> str:
    sums = ", ".join(f"sum({c}) AS {c}" for c in TOTALS)
    breakdown = f"""{sql.object_agg}(model, {sql.object}(
            'cost', CAST(cost AS TEXT), 'input', input_tokens,
            'output', output_tokens, 'cached', cached_tokens,
            'traces', model_traces)) FILTER (WHERE model <> '')"""
    changed = sql.distinct.format(
        a=", ".join(f"billing_costsummary.{c}" for c in SUMMARY_COLUMNS),
        b=", ".join(f"excluded.{c}" for c in SUMMARY_COLUMNS),
    )
    return f"""
        INSERT INTO billing_costsummary (
            tenant_id, scope_type, project_id, scope_id, period_start, period_end,
            trace_count, input_tokens, output_tokens, cached_tokens, cost,
            model_breakdown, computed_at)
        SELECT tenant_id, scope_type, project_id, scope_id, %(start)s, %(end)s,
               sum(traces), sum(input_tokens), sum(output_tokens),
               sum(cached_tokens), sum(cost){sql.money},
               COALESCE({breakdown}, '{{}}'), %(now)s
        FROM (
            SELECT * FROM rollup_models WHERE scope_id <> ''
            UNION ALL
            SELECT tenant_id, 'project', '', project_id, model, {sums}
            FROM rollup_models WHERE scope_type = 'agent' AND project_id <> ''
            GROUP BY tenant_id, project_id, model
        ) per_model
        -- Suspended tenants are left out here, from a few hundred thousand
        -- rows, rather than from every line: that join cost a third of the time.
        WHERE tenant_id IN (SELECT id FROM billing_tenant WHERE status = 'active')
        GROUP BY tenant_id, scope_type, project_id, scope_id
        -- In the unique index's order: each of its pages is visited once.
        ORDER BY tenant_id, scope_type, project_id, scope_id
        ON CONFLICT (tenant_id, scope_type, project_id, scope_id, period_start)
        DO UPDATE SET {", ".join(f"{c} = excluded.{c}" for c in SUMMARY_COLUMNS)},
            computed_at = excluded.computed_at
        WHERE {changed}
    """


def rollup_day(*, day: date, tenant_id: int | None = None) -> int:
    """
    Write the summaries of one UTC day; return how many were written (new or
    changed).
    """
    start = datetime.combine(day, time.min, tzinfo=UTC)
    end = start + DAY
    adapt = connection.ops.adapt_datetimefield_value
    params = {
        "start": adapt(start),
        "end": adapt(end),
        "now": adapt(timezone.now()),
        "tenant": tenant_id,
    }
    tenant_filter = "AND l.tenant_id = %(tenant)s" if tenant_id else ""
    scope = [tenant_id] if tenant_id else ()
    with (
        tenant_context(scope, all_tenants=tenant_id is None),
        connection.cursor() as cursor,
    ):
        if connection.vendor == "postgresql":
            # Transaction-local tuning for one big aggregation: hash tables
            # in memory, and no JIT, whose compilation costs seconds here and
            # saves less.
            cursor.execute("SET LOCAL work_mem = '256MB'")
            cursor.execute("SET LOCAL jit = off")
        cursor.execute("DROP TABLE IF EXISTS rollup_models")
        cursor.execute(_per_model_sql(tenant_filter), params)
        if connection.vendor == "postgresql":
            # Its real size, not a guess: the upsert's plan depends on it.
            cursor.execute("ANALYZE rollup_models")
        cursor.execute(_upsert_sql(_dialect()), params)
        written = cursor.rowcount
        cursor.execute("DROP TABLE rollup_models")
        if connection.vendor == "postgresql":
            # A day's rollup adds ~100k rows at once; without fresh statistics
            # the detection that follows plans them as one row and picks
            # nested loops (minutes instead of seconds).
            cursor.execute("ANALYZE billing_costsummary")
    return written


def days_between(since: date, until: date) -> list[date]:
    """Every UTC day from ``since`` up to and including ``until``."""
    return [since + timedelta(days=n) for n in range((until - since).days + 1)]
