"""
Daily cost rollup: the ledger aggregated per tenant, scope and UTC day.

The ledger's triggers keep ``DailyScopeUsage`` equal to its per-scope and
per-model sums (``billing.scope_usage``), so a day's rollup is one set-based
``INSERT ... ON CONFLICT DO UPDATE`` from that day's rows: every scope's
summary with its totals and per-model breakdown. Re-running a day rewrites
the same rows with the same numbers, period_end included (seed 004's review
found period_end left stale on re-runs), so the rollup is idempotent, and a
late adjustment changes the day's totals on the next run; a summary whose
numbers did not change is left as it is rather than rewritten, and a scope
whose usage was all skipped since is written as zero, not left stale.

Only billable usage counts (records and adjustments that are pending or
reported): skipped traces are visible in the ledger, not in the costs.
Suspended tenants are not rolled up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from django.db import connection
from django.utils import timezone

from billing.tenancy import tenant_context
from billing.utc_days import day_start

DAY = timedelta(days=1)
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


def _upsert_sql(sql: Dialect, tenant_filter: str) -> str:
    # Rows that netted out to nothing (usage counted in, then skipped) are
    # no model of the scope's.
    used = """u.model <> '' AND (u.model_trace_count <> 0 OR u.cost <> 0
        OR u.input_tokens <> 0 OR u.output_tokens <> 0 OR u.cached_tokens <> 0)"""
    breakdown = f"""{sql.object_agg}(u.model, {sql.object}(
            'cost', CAST(u.cost AS TEXT), 'input', u.input_tokens,
            'output', u.output_tokens, 'cached', u.cached_tokens,
            'traces', u.model_trace_count)) FILTER (WHERE {used})"""
    changed = sql.distinct.format(
        a=", ".join(f"billing_costsummary.{c}" for c in SUMMARY_COLUMNS),
        b=", ".join(f"excluded.{c}" for c in SUMMARY_COLUMNS),
    )
    return f"""
        INSERT INTO billing_costsummary (
            tenant_id, scope_type, project_id, scope_id, period_start, period_end,
            trace_count, input_tokens, output_tokens, cached_tokens, cost,
            model_breakdown, computed_at)
        SELECT u.tenant_id, u.scope_type, u.project_id, u.scope_id,
               %(start)s, %(end)s, sum(u.trace_count), sum(u.input_tokens),
               sum(u.output_tokens), sum(u.cached_tokens), sum(u.cost){sql.money},
               COALESCE({breakdown}, '{{}}'), %(now)s
        FROM billing_dailyscopeusage u
        JOIN billing_tenant t ON t.id = u.tenant_id AND t.status = 'active'
        WHERE u.day = %(day)s {tenant_filter}
        GROUP BY u.tenant_id, u.scope_type, u.project_id, u.scope_id
        -- In the unique index's order: each of its pages is visited once.
        ORDER BY u.tenant_id, u.scope_type, u.project_id, u.scope_id
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
    start = day_start(day)
    adapt = connection.ops.adapt_datetimefield_value
    params = {
        "day": connection.ops.adapt_datefield_value(day),
        "start": adapt(start),
        "end": adapt(start + DAY),
        "now": adapt(timezone.now()),
        "tenant": tenant_id,
    }
    tenant_filter = "AND u.tenant_id = %(tenant)s" if tenant_id else ""
    scope = [tenant_id] if tenant_id else ()
    with (
        tenant_context(scope, all_tenants=tenant_id is None),
        connection.cursor() as cursor,
    ):
        if connection.vendor == "postgresql":
            # Transaction-local: no JIT, whose compilation costs more than it
            # saves in a statement of a few seconds.
            cursor.execute("SET LOCAL jit = off")
            cursor.execute("SET LOCAL work_mem = '256MB'")
        cursor.execute(_upsert_sql(_dialect(), tenant_filter), params)
        written = cursor.rowcount
        if connection.vendor == "postgresql":
            # A day's rollup adds ~100k rows at once; without fresh statistics
            # the detection that follows plans them as one row and picks
            # nested loops (minutes instead of seconds).
            cursor.execute("ANALYZE billing_costsummary")
    return written
