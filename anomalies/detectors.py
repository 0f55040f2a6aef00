"""
The anomaly rules, each one set-based query over a day's cost summaries.

Every detector returns ``Finding`` rows for one UTC day; recording them
(create, update in place, reopen) is ``anomalies.services``' job. The SQL is
portable between Postgres and SQLite (window functions; only the median has
a faster Postgres form), so the embedded demo runs the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from django.db import connection

from billing.tenancy import tenant_context

DAY = timedelta(days=1)

# Cohort rule: a group needs this many members before its average means
# anything; a scope is compared with the average of the *other* members, so
# one runaway agent cannot drag its own yardstick up.
MIN_COHORT_SIZE = 3
# ...and a verdict needs volume: a scope with one or two traces that day (or
# peers averaging that few) swings 10x on a single request, which is noise.
MIN_TRACES = 5

# Baseline rule: trailing window, and how many days of it must have cost.
BASELINE_DAYS = 28
BASELINE_MIN_DAYS = 7
# Flag when cost > median + k * scaled MAD (robust z-score) and also above
# this multiple of the median: a flat history has MAD 0, and 1.1x of a flat
# line is not a spike.
BASELINE_MAD_K = Decimal("5")
BASELINE_MIN_RATIO = Decimal("2")
MAD_SCALE = Decimal("1.4826")  # MAD -> standard deviation for normal data
# Below this, a tenfold change is a few cents of noise.
SPIKE_MIN_COST = Decimal("0.01")

# Missing-data rule: cost on each of the last STEADY_DAYS days, every day
# within [STEADY_LOW, STEADY_HIGH] x their mean, then none at all.
STEADY_DAYS = 7
STEADY_LOW = Decimal("0.5")
STEADY_HIGH = Decimal("2")


@dataclass(frozen=True)
class Finding:
    anomaly_type: str
    tenant_id: int
    scope_type: str
    project_id: str
    scope_id: str
    summary_id: int | None
    observed: Decimal
    expected: Decimal


def _bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + DAY


def _rows(sql: str, params: dict, tenant_id: int | None) -> list[tuple]:
    adapt = connection.ops.adapt_datetimefield_value
    params = {k: adapt(v) if isinstance(v, datetime) else v for k, v in params.items()}
    params["tenant"] = tenant_id
    scope = [tenant_id] if tenant_id else ()
    with (
        tenant_context(scope, all_tenants=tenant_id is None),
        connection.cursor() as cursor,
    ):
        if connection.vendor == "postgresql":
            # Transaction-local: each rule is one query of a few seconds at
            # most, where JIT compilation costs more than it saves (0.5-1 s a
            # query at 100k scopes), and the median sorts a day's whole
            # history (2.8M rows at 100k scopes), in memory rather than on disk.
            cursor.execute("SET LOCAL jit = off")
            cursor.execute("SET LOCAL work_mem = '256MB'")
        cursor.execute(sql, params)
        return cursor.fetchall()


def _decimal(value) -> Decimal:
    # SQLite hands back floats; Postgres Decimals. Normalise to 10 places.
    return Decimal(str(value)).quantize(Decimal("1e-10"))


TENANT_FILTER = "AND (%(tenant)s IS NULL OR s.tenant_id = %(tenant)s)"
ACTIVE = "JOIN billing_tenant t ON t.id = s.tenant_id AND t.status = 'active'"


def detect_cohort(day: date, tenant_id: int | None = None) -> list[Finding]:
    """
    Seed 004's rule: within a group on one day, a scope whose cost is more than
    ``anomaly_high_ratio`` (default 3) or less than ``anomaly_low_ratio``
    (default 0.1) times the average of the group's other members is
    ``high_cost`` / ``suspiciously_low``. Groups: agents within a project,
    epics within a project, users within a tenant. Groups smaller than
    MIN_COHORT_SIZE, and scopes or peers with fewer than MIN_TRACES traces
    that day, get no verdict.
    """
    start, _ = _bounds(day)
    sql = f"""
        SELECT g.id, g.tenant_id, g.scope_type, g.project_id, g.scope_id,
               g.cost, g.peer_average, g.high, g.low
        FROM (
            SELECT s.id, s.tenant_id, s.scope_type, s.project_id, s.scope_id,
                   s.cost, t.anomaly_high_ratio AS high, t.anomaly_low_ratio AS low,
                   s.trace_count,
                   COUNT(*) OVER grp AS members,
                   (SUM(s.cost) OVER grp - s.cost)
                       / NULLIF(COUNT(*) OVER grp - 1, 0) AS peer_average,
                   (SUM(s.trace_count) OVER grp - s.trace_count) * 1.0
                       / NULLIF(COUNT(*) OVER grp - 1, 0) AS peer_traces
            FROM billing_costsummary s {ACTIVE}
            WHERE s.period_start = %(start)s
              AND s.scope_type IN ('agent', 'epic', 'user') {TENANT_FILTER}
            WINDOW grp AS (PARTITION BY s.tenant_id, s.scope_type, s.project_id)
        ) g
        WHERE g.members >= %(min_members)s AND g.peer_average > 0
          AND g.trace_count >= %(min_traces)s AND g.peer_traces >= %(min_traces)s
          AND (g.cost > g.high * g.peer_average OR g.cost < g.low * g.peer_average)
    """
    params = {
        "start": start,
        "min_members": MIN_COHORT_SIZE,
        "min_traces": MIN_TRACES,
    }
    findings = []
    for row_id, tenant, scope_type, project, scope, cost, average, high, _ in _rows(
        sql, params, tenant_id
    ):
        cost, average = _decimal(cost), _decimal(average)
        kind = (
            "high_cost" if cost > Decimal(str(high)) * average else "suspiciously_low"
        )
        findings.append(
            Finding(kind, tenant, scope_type, project, scope, row_id, cost, average)
        )
    return findings


def _median_sql(source: str, value: str) -> str:
    """
    Per-id median of ``value`` in ``source``. Postgres has an ordered-set
    aggregate for it (about twice as fast at 100k scopes); SQLite, the demo's
    database, gets the same number from window functions.
    """
    if connection.vendor == "postgresql":
        return f"""
            SELECT id, percentile_cont(0.5) WITHIN GROUP (ORDER BY {value}) AS median,
                   COUNT(*) AS n
            FROM {source} GROUP BY id
        """
    return f"""
        SELECT id, AVG({value}) AS median, MAX(n) AS n FROM (
            SELECT id, {value},
                   ROW_NUMBER() OVER (PARTITION BY id ORDER BY {value}) AS rn,
                   COUNT(*) OVER (PARTITION BY id) AS n
            FROM {source}
        ) ranked
        WHERE rn IN ((n + 1) / 2, (n + 2) / 2)
        GROUP BY id
    """


def detect_baseline(day: date, tenant_id: int | None = None) -> list[Finding]:
    """
    A scope's cost far above its own trailing history: over the previous
    BASELINE_DAYS days (at least BASELINE_MIN_DAYS of them with cost), flag
    ``spike_vs_baseline`` when cost > median + 5 x 1.4826 x MAD (a robust
    z-score above 5: one earlier outlier moves neither the median nor the
    MAD), cost > 2 x median and cost >= SPIKE_MIN_COST. Expected = median.
    """
    start, _ = _bounds(day)
    same_scope = """h.tenant_id = {0}.tenant_id AND h.scope_type = {0}.scope_type
         AND h.project_id = {0}.project_id AND h.scope_id = {0}.scope_id
         AND h.period_start >= %(history_start)s AND h.period_start < %(start)s"""
    # Only a scope above BASELINE_MIN_RATIO x its median can be flagged, so
    # the MAD (a second pass over the history) is computed for those alone.
    sql = f"""
        WITH day AS (
            SELECT s.id, s.tenant_id, s.scope_type, s.project_id, s.scope_id, s.cost
            FROM billing_costsummary s {ACTIVE}
            WHERE s.period_start = %(start)s AND s.cost >= %(min_cost)s
              {TENANT_FILTER}
        ),
        history AS (
            SELECT day.id, h.cost
            FROM day JOIN billing_costsummary h ON {same_scope.format("day")}
        ),
        med AS ({_median_sql("history", "cost")}),
        candidates AS (
            SELECT day.*, med.median FROM day JOIN med ON med.id = day.id
            WHERE med.n >= %(min_days)s AND day.cost > med.median * %(min_ratio)s
        ),
        deviation AS (
            SELECT c.id, ABS(h.cost - c.median) AS dev
            FROM candidates c JOIN billing_costsummary h ON {same_scope.format("c")}
        ),
        mad AS ({_median_sql("deviation", "dev")})
        SELECT c.id, c.tenant_id, c.scope_type, c.project_id, c.scope_id,
               c.cost, c.median
        FROM candidates c JOIN mad ON mad.id = c.id
        WHERE c.cost > c.median + %(k)s * %(scale)s * mad.median
    """
    params = {
        "start": start,
        "history_start": start - BASELINE_DAYS * DAY,
        "min_cost": SPIKE_MIN_COST,
        "min_days": BASELINE_MIN_DAYS,
        "min_ratio": BASELINE_MIN_RATIO,
        "k": BASELINE_MAD_K,
        "scale": MAD_SCALE,
    }
    return [
        Finding(
            "spike_vs_baseline",
            tenant,
            scope_type,
            project,
            scope,
            row_id,
            _decimal(cost),
            _decimal(median),
        )
        for row_id, tenant, scope_type, project, scope, cost, median in _rows(
            sql, params, tenant_id
        )
    ]


def detect_missing_data(day: date, tenant_id: int | None = None) -> list[Finding]:
    """
    A scope with steady cost that drops to nothing: cost on each of the
    previous STEADY_DAYS days, every one within 0.5x..2x of their mean, and
    no cost on this day. Usually lost usage (a broken integration), not
    savings. Observed 0, expected = the steady mean.
    """
    start, _ = _bounds(day)
    sql = f"""
        SELECT s.tenant_id, s.scope_type, s.project_id, s.scope_id, AVG(s.cost)
        FROM billing_costsummary s {ACTIVE}
        WHERE s.period_start >= %(steady_start)s AND s.period_start < %(start)s
          AND s.cost > 0 {TENANT_FILTER}
          AND NOT EXISTS (
              SELECT 1 FROM billing_costsummary d
              WHERE d.tenant_id = s.tenant_id AND d.scope_type = s.scope_type
                AND d.project_id = s.project_id AND d.scope_id = s.scope_id
                AND d.period_start = %(start)s AND d.cost > 0
          )
        GROUP BY s.tenant_id, s.scope_type, s.project_id, s.scope_id
        HAVING COUNT(*) = %(days)s
           AND MIN(s.cost) >= AVG(s.cost) * %(low)s
           AND MAX(s.cost) <= AVG(s.cost) * %(high)s
    """
    params = {
        "start": start,
        "steady_start": start - STEADY_DAYS * DAY,
        "days": STEADY_DAYS,
        "low": STEADY_LOW,
        "high": STEADY_HIGH,
    }
    return [
        Finding(
            "missing_data",
            tenant,
            scope_type,
            project,
            scope,
            None,
            Decimal(0),
            _decimal(mean),
        )
        for tenant, scope_type, project, scope, mean in _rows(sql, params, tenant_id)
    ]


DETECTORS = (detect_cohort, detect_baseline, detect_missing_data)


def detect_day(day: date, tenant_id: int | None = None) -> list[Finding]:
    return [finding for detector in DETECTORS for finding in detector(day, tenant_id)]
