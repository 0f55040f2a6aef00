"""
Daily cost rollup: the ledger aggregated per tenant, scope and UTC day.

One day is rolled up in three set-based statements inside one transaction:
the ledger's rows for the day (usage records and their adjustments, which
count on their trace's day) are reduced to one row per scope combination and
per model into temporary tables (``CREATE TABLE AS`` may use parallel
workers, ``INSERT ... SELECT`` may not), then one
``INSERT ... ON CONFLICT DO UPDATE`` writes every scope's summary. Re-running
a day rewrites the same rows with the same numbers, period_end included
(seed 004's review found period_end left stale on re-runs), so the rollup is
idempotent and a late adjustment changes the day's totals on the next run.

Only billable usage counts (records and adjustments that are pending or
reported); skipped traces are visible in the ledger, not in the costs.
Suspended tenants are not rolled up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.db import connection
from django.utils import timezone

from billing.tenancy import tenant_context

DAY = timedelta(days=1)
BILLABLE = ("pending", "reported")

# Scope type -> (project column, scope column) in the fine-grained table.
SCOPES = {
    "project": ("''", "project_id"),
    "agent": ("project_id", "agent_id"),
    "epic": ("project_id", "epic_id"),
    "user": ("''", "user_id"),
}


@dataclass(frozen=True)
class Dialect:
    each: str  # table function over a JSON object's members: key, value
    cost: str  # a member's cost as a number
    count: str  # a member's token count as an integer; {key} is the field
    object_agg: str  # aggregate (key, value) pairs into one JSON object
    object: str  # build a JSON object from key, value, ...
    money: str  # cast a sum to the money type


POSTGRES = Dialect(
    each="jsonb_each(u.model_breakdown)",
    cost="(m.value->>'cost')::numeric",
    count="(m.value->>'{key}')::bigint",
    object_agg="jsonb_object_agg",
    object="jsonb_build_object",
    money="::numeric(20, 10)",
)
SQLITE = Dialect(
    each="json_each(u.model_breakdown)",
    cost="CAST(json_extract(m.value, '$.cost') AS REAL)",
    count="CAST(json_extract(m.value, '$.{key}') AS INTEGER)",
    object_agg="json_group_object",
    object="json_object",
    money="",
)


def _dialect() -> Dialect:
    return POSTGRES if connection.vendor == "postgresql" else SQLITE


def _usage_sql(tenant_filter: str) -> str:
    """The day's billable ledger rows, adjustments under their trace's scopes."""
    statuses = ", ".join(f"'{s}'" for s in BILLABLE)
    return f"""
        SELECT r.tenant_id, r.project_id, r.agent_id, r.epic_id, r.user_id,
               1 AS traces, r.input_tokens, r.output_tokens, r.cached_tokens,
               r.cost, r.model_breakdown
        FROM billing_usagerecord r
        JOIN billing_tenant t ON t.id = r.tenant_id AND t.status = 'active'
        WHERE r.trace_timestamp >= %(start)s AND r.trace_timestamp < %(end)s
          AND r.status IN ({statuses}) {tenant_filter.format(table="r")}
        UNION ALL
        SELECT a.tenant_id, r.project_id, r.agent_id, r.epic_id, r.user_id,
               0, a.input_tokens, a.output_tokens, a.cached_tokens,
               a.cost, a.model_breakdown
        FROM billing_usageadjustment a
        JOIN billing_usagerecord r ON r.id = a.usage_record_id
        JOIN billing_tenant t ON t.id = a.tenant_id AND t.status = 'active'
        WHERE a.trace_timestamp >= %(start)s AND a.trace_timestamp < %(end)s
          AND a.status IN ({statuses}) {tenant_filter.format(table="a")}
    """


def _scoped(table: str, columns: str, extra_keys: str = "") -> str:
    """One row per scope (and model, with extra_keys) from a fine table."""
    parts = []
    for scope, (project, column) in SCOPES.items():
        group = ", ".join(c for c in ("tenant_id", project, column) if c != "''")
        parts.append(
            f"""SELECT tenant_id, '{scope}' AS scope_type, {project} AS project_id,
                       {column} AS scope_id{extra_keys}, {columns}
                FROM {table} WHERE {column} <> ''
                GROUP BY {group}{extra_keys}"""
        )
    return " UNION ALL ".join(parts)


def rollup_day(*, day: date, tenant_id: int | None = None) -> int:
    """Write the summaries of one UTC day; return how many were written."""
    start = datetime.combine(day, time.min, tzinfo=UTC)
    end = start + DAY
    sql = _dialect()
    adapt = connection.ops.adapt_datetimefield_value
    params = {
        "start": adapt(start),
        "end": adapt(end),
        "now": adapt(timezone.now()),
        "tenant": tenant_id,
    }
    tenant_filter = "AND {table}.tenant_id = %(tenant)s" if tenant_id else ""
    usage = _usage_sql(tenant_filter)
    totals = """sum(traces) AS traces,
        sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
        sum(cached_tokens) AS cached_tokens, sum(cost) AS cost"""
    fine = f"""
        CREATE TEMP TABLE rollup_fine AS
        SELECT tenant_id, project_id, agent_id, epic_id, user_id,
               sum(traces) AS traces, sum(input_tokens) AS input_tokens,
               sum(output_tokens) AS output_tokens,
               sum(cached_tokens) AS cached_tokens, sum(cost) AS cost
        FROM ({usage}) u
        GROUP BY tenant_id, project_id, agent_id, epic_id, user_id
    """
    fine_models = f"""
        CREATE TEMP TABLE rollup_models AS
        SELECT u.tenant_id, u.project_id, u.agent_id, u.epic_id, u.user_id,
               m.key AS model, sum(u.traces) AS traces,
               sum({sql.count.format(key="input")}) AS input_tokens,
               sum({sql.count.format(key="output")}) AS output_tokens,
               sum({sql.count.format(key="cached")}) AS cached_tokens,
               sum({sql.cost}) AS cost
        FROM ({usage}) u, {sql.each} m
        GROUP BY u.tenant_id, u.project_id, u.agent_id, u.epic_id, u.user_id, m.key
    """
    breakdown = f"""{sql.object_agg}(model, {sql.object}(
            'cost', CAST(cost AS TEXT), 'input', input_tokens,
            'output', output_tokens, 'cached', cached_tokens, 'traces', traces))"""
    upsert = f"""
        INSERT INTO billing_costsummary (
            tenant_id, scope_type, project_id, scope_id, period_start, period_end,
            trace_count, input_tokens, output_tokens, cached_tokens, cost,
            model_breakdown, computed_at)
        SELECT s.tenant_id, s.scope_type, s.project_id, s.scope_id,
               %(start)s, %(end)s, s.traces, s.input_tokens, s.output_tokens,
               s.cached_tokens, s.cost{sql.money}, COALESCE(b.breakdown, '{{}}'),
               %(now)s
        FROM ({_scoped("rollup_fine", totals)}) s
        LEFT JOIN (
            SELECT tenant_id, scope_type, project_id, scope_id, {breakdown} AS breakdown
            FROM ({
        _scoped(
            "rollup_models",
            "sum(traces) AS traces, sum(input_tokens) AS input_tokens, "
            "sum(output_tokens) AS output_tokens, "
            "sum(cached_tokens) AS cached_tokens, sum(cost) AS cost",
            extra_keys=", model",
        )
    }) per_model
            GROUP BY tenant_id, scope_type, project_id, scope_id
        ) b ON b.tenant_id = s.tenant_id AND b.scope_type = s.scope_type
           AND b.project_id = s.project_id AND b.scope_id = s.scope_id
        WHERE true
        ON CONFLICT (tenant_id, scope_type, project_id, scope_id, period_start)
        DO UPDATE SET
            period_end = excluded.period_end,
            trace_count = excluded.trace_count,
            input_tokens = excluded.input_tokens,
            output_tokens = excluded.output_tokens,
            cached_tokens = excluded.cached_tokens,
            cost = excluded.cost,
            model_breakdown = excluded.model_breakdown,
            computed_at = excluded.computed_at
    """
    scope = [tenant_id] if tenant_id else ()
    with (
        tenant_context(scope, all_tenants=tenant_id is None),
        connection.cursor() as cursor,
    ):
        if connection.vendor == "postgresql":
            # Session-local tuning for one big aggregation; reset with the
            # transaction.
            cursor.execute("SET LOCAL work_mem = '256MB'")
        cursor.execute("DROP TABLE IF EXISTS rollup_fine")
        cursor.execute("DROP TABLE IF EXISTS rollup_models")
        cursor.execute(fine, params)
        cursor.execute(fine_models, params)
        cursor.execute(upsert, params)
        written = cursor.rowcount
        cursor.execute("DROP TABLE rollup_fine")
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
