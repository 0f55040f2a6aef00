"""
The anomaly rules, each one set-based query over a day's cost summaries.

Every detector returns ``Finding`` rows for one UTC day: the cohort rule (a
scope far from its group's median that day), the baseline rule (a scope far
above its own complete-day history, weekday-aware), missing data (steady
usage that stopped) and expensive traces (one trace far above its agent's
recent p95). ``detect_day`` keeps the findings whose money at stake reaches
the tenant's materiality floor; recording them (create, update in place,
reopen) and grouping them into incidents is ``anomalies.services``' job.
The SQL is portable between Postgres and SQLite (window functions; only the
median has a faster Postgres form), so the embedded demo runs the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db import connection
from django.db.models import Q

from billing.models import CostSummary
from billing.scope_usage import BILLABLE
from billing.tenancy import tenant_context
from billing.trace_costs import BUCKETS_PER_OCTAVE
from billing.utc_days import day_bounds

DAY = timedelta(days=1)

# Cohort rule: a group needs this many members before its median means
# anything; one runaway or idle member is never the middle of three or more,
# so it cannot move its peers' yardstick (an average would: one agent at 30x
# made its ordinary peers look 94% down).
MIN_COHORT_SIZE = 3
# ...and a verdict needs volume: a scope with one or two traces that day (or
# peers with that few) swings 10x on a single request, which is noise.
MIN_TRACES = 5

# Baseline rule: trailing window, and how many complete days of it must have
# cost. A scope's first day in the window, when it is not the window's
# first, is partial (the scope started, or came back, during it) and left out.
BASELINE_DAYS = 28
BASELINE_MIN_DAYS = 7
# Flag when cost > median + k * scaled MAD (robust z-score) and also above
# this multiple of the expected cost: a flat history has MAD 0, and 1.1x of
# a flat line is not a spike. An agent's or project's day must still be
# above it without its costliest trace (``without_single_trace_days``), and
# a cohort verdict of low needs the scope under its usual day divided by it.
BASELINE_MAD_K = Decimal("5")
BASELINE_MIN_RATIO = Decimal("2")
MAD_SCALE = Decimal("1.4826")  # MAD -> standard deviation for normal data
# The baseline's first pass keeps scopes above this share of the bar.
ROUGH_MARGIN = Decimal("0.75")
# Users and epics mix many agents: their day swings with which agents their
# few traces hit. The cost rules flag one only when its volume moved the
# same way too, by at least this factor of its usual trace count (its own
# median day, or its group's that day without history). One costly trace
# is the expensive-trace rule's at its agent; a price change shows there.
MIXED_SCOPES = ("user", "epic")
MIXED_MIN_VOLUME = Decimal("2")
# Weekly seasonality: the same weekday of the previous weeks, when at least
# this many of them had cost, may raise what is expected (a Monday of a
# weekday-heavy scope, a Saturday of a weekend-heavy one).
WEEKS = 4
WEEKDAY_MIN_DAYS = 2

# Missing-data rule: cost on each of the last STEADY_DAYS days, every day
# within [STEADY_LOW, STEADY_HIGH] x their mean, then none at all.
STEADY_DAYS = 7
STEADY_LOW = Decimal("0.5")
STEADY_HIGH = Decimal("2")

# Expensive-trace rule: an agent's recent p95 is over its traces of the last
# TRACE_DAYS days: TRACE_MIN_TRACES traces in all, and at least
# TRACE_MIN_DAYS days with traces in one cost bucket (a week, not a burst).
TRACE_DAYS = 7
TRACE_MIN_DAYS = 3
TRACE_MIN_TRACES = 20


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
    # The money at stake, held against the tenant's floor: how far from
    # expected, or for a cohort verdict how far from the scope's own usual
    # day (a small agent at 0.02x its peers' median has not lost the
    # difference: it never spent it).
    stake: Decimal | None = None

    def money_at_stake(self) -> Decimal:
        if self.stake is not None:
            return self.stake
        return abs(self.observed - self.expected)


def _rows(
    sql: str, params: dict, tenant_id: int | None, *, nested_loops: bool = True
) -> list[tuple]:
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
            if not nested_loops:
                # For a query that joins whole sets, whose tables' statistics
                # lag behind a day's growth: the daily trace costs' did, and
                # a nested loop planned on them took 60 s instead of 6 at
                # 100k scopes.
                cursor.execute("SET LOCAL enable_nestloop = off")
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
    (default 0.1) times the group's median is ``high_cost`` /
    ``suspiciously_low``. Groups: agents within a project, epics within a
    project, users within a tenant. Groups smaller than MIN_COHORT_SIZE, and
    scopes or groups with fewer than MIN_TRACES traces that day (the group:
    its median), get no verdict.

    A scope that is normally that far from its peers is not flagged: with
    BASELINE_MIN_DAYS complete days of history, a high scope must also cost
    more than ``anomaly_high_ratio`` times its usual day (its median, or its
    median same weekday if higher), a low one less than its usual day (the
    lower of the two) divided by BASELINE_MIN_RATIO; the money at stake is
    then the distance from its usual day. A new scope is flagged only far
    above the costliest of its peers, never low. A user or epic needs its
    volume to have moved the same way (MIXED_MIN_VOLUME). Users are never
    low: a person's quiet day is no anomaly, an agent's or an epic's may be
    lost usage. Expected = the group's median.
    """
    start, _ = day_bounds(day)
    sql = f"""
        WITH day AS (
            SELECT s.id, s.tenant_id, s.scope_type, s.project_id, s.scope_id,
                   s.cost, s.trace_count,
                   t.anomaly_high_ratio AS high, t.anomaly_low_ratio AS low,
                   DENSE_RANK() OVER (
                       ORDER BY s.tenant_id, s.scope_type, s.project_id
                   ) AS grp,
                   COUNT(*) OVER grp AS members,
                   -- The costliest other member: the second of the group
                   -- when this is the first.
                   CASE WHEN s.cost >= MAX(s.cost) OVER grp
                        THEN NTH_VALUE(s.cost, 2) OVER (grp ORDER BY s.cost DESC
                             ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
                        ELSE MAX(s.cost) OVER grp END AS peer_max
            FROM billing_costsummary s {ACTIVE}
            WHERE s.period_start = %(start)s
              AND s.scope_type IN ('agent', 'epic', 'user') {TENANT_FILTER}
            WINDOW grp AS (PARTITION BY s.tenant_id, s.scope_type, s.project_id)
        ),
        peer_cost AS ({_median_sql("day", "cost", key="grp")}),
        peer_traces AS ({_median_sql("day", "trace_count", key="grp")}),
        candidates AS (
            SELECT day.*, pc.median AS peer_median, pt.median AS peer_traces
            FROM day
            JOIN peer_cost pc ON pc.grp = day.grp
            JOIN peer_traces pt ON pt.grp = day.grp
            WHERE day.members >= %(min_members)s AND pc.median > 0
              AND day.trace_count >= %(min_traces)s
              AND pt.median >= %(min_traces)s
              AND (day.cost > day.high * pc.median OR day.cost < day.low * pc.median)
        ),
        {_own_expectation("candidates")},
        volume AS ({_median_sql("history", "trace_count")})
        SELECT c.id, c.tenant_id, c.scope_type, c.project_id, c.scope_id,
               c.cost, c.peer_median, c.high, c.peer_max, c.trace_count,
               COALESCE(volume.median, c.peer_traces), med.median, med.n,
               CASE WHEN weekly.n >= %(weekday_min)s THEN weekly.median END
        FROM candidates c
        LEFT JOIN med ON med.id = c.id
        LEFT JOIN volume ON volume.id = c.id
        LEFT JOIN weekly ON weekly.id = c.id
    """
    params = {
        **_window_params(start),
        "min_members": MIN_COHORT_SIZE,
        "min_traces": MIN_TRACES,
        "weekday_min": WEEKDAY_MIN_DAYS,
    }
    findings = []
    for row in _rows(sql, params, tenant_id):
        row_id, tenant, scope_type, project, scope, cost, median, *rest = row
        high_ratio, peer_max, traces, usual_traces, *own = rest
        cost, median = _decimal(cost), _decimal(median)
        high_ratio = _decimal(high_ratio)
        high = cost > high_ratio * median
        if not high and scope_type == "user":
            continue  # a person's quiet day is no anomaly
        if scope_type in MIXED_SCOPES and not _volume_moved(
            traces, usual_traces, high=high
        ):
            continue
        stake = None
        usual = _usual_day(*own, high=high)
        if usual is None:
            # A new scope: its first days are partial or ramping up, and an
            # agent may simply be pricier than the others. It is flagged
            # only far above the costliest of them, never for being low.
            if not high or cost <= high_ratio * _decimal(peer_max or 0):
                continue
        else:
            # Beyond its peers, but is it beyond its own usual day? As far
            # up as the tenant's high ratio (the spikes worth a look triple
            # a day), or down to half of it (usage going missing).
            if high and cost <= usual * high_ratio:
                continue
            if not high and cost * BASELINE_MIN_RATIO >= usual:
                continue
            stake = abs(cost - usual)
        kind = "high_cost" if high else "suspiciously_low"
        findings.append(
            Finding(
                kind, tenant, scope_type, project, scope, row_id, cost, median, stake
            )
        )
    return findings


def _volume_moved(traces: int, usual: object, *, high: bool) -> bool:
    """Whether a day's trace count moved MIXED_MIN_VOLUME-fold the verdict's way."""
    usual = _decimal(usual or 0)
    if high:
        return traces >= usual * MIXED_MIN_VOLUME
    return traces * MIXED_MIN_VOLUME <= usual


def _usual_day(
    median: object, days: int | None, weekday: object, *, high: bool
) -> Decimal | None:
    """
    A scope's usual day for the cohort rule's second look: its median day,
    or its median same weekday when that is further from a verdict (higher
    for a high one, lower for a low one); None without BASELINE_MIN_DAYS of
    history.
    """
    if not days or days < BASELINE_MIN_DAYS:
        return None
    usual = _decimal(median)
    if weekday is not None:
        weekday = _decimal(weekday)
        usual = max(usual, weekday) if high else min(usual, weekday)
    return usual


def _median_sql(source: str, value: str, key: str = "id") -> str:
    """
    Per-``key`` median of ``value`` in ``source``, and how many values. Postgres
    has an ordered-set aggregate for it (about twice as fast at 100k scopes);
    SQLite, the demo's database, gets the same number from window functions.
    """
    if connection.vendor == "postgresql":
        return f"""
            SELECT {key}, percentile_cont(0.5) WITHIN GROUP (ORDER BY {value})
                       AS median,
                   COUNT(*) AS n
            FROM {source} GROUP BY {key}
        """
    return f"""
        SELECT {key}, AVG({value}) AS median, MAX(n) AS n FROM (
            SELECT {key}, {value},
                   ROW_NUMBER() OVER (PARTITION BY {key} ORDER BY {value}) AS rn,
                   COUNT(*) OVER (PARTITION BY {key}) AS n
            FROM {source}
        ) ranked
        WHERE rn IN ((n + 1) / 2, (n + 2) / 2)
        GROUP BY {key}
    """


# Summaries h of the same scope as {0}, in the trailing window.
SAME_SCOPE = """h.tenant_id = {0}.tenant_id AND h.scope_type = {0}.scope_type
     AND h.project_id = {0}.project_id AND h.scope_id = {0}.scope_id"""


def _own_expectation(scopes: str) -> str:
    """
    CTEs for each row of ``scopes`` (a CTE with id and the scope's key):
    ``window_days`` (its summaries in the baseline window), ``history`` (the
    complete ones: without the scope's first day there, unless that is the
    window's first day), ``med`` (their median cost and count) and
    ``weekly`` (the median cost and count of the same weekday in the last
    WEEKS weeks).
    """
    weekdays = ", ".join(f"%(week_{n})s" for n in range(1, WEEKS + 1))
    return f"""
        window_days AS (
            SELECT {scopes}.id, h.cost, h.trace_count, h.period_start,
                   MIN(h.period_start) OVER (PARTITION BY {scopes}.id) AS first_day
            FROM {scopes} JOIN billing_costsummary h ON {SAME_SCOPE.format(scopes)}
             AND h.period_start >= %(history_start)s AND h.period_start < %(start)s
        ),
        history AS (
            SELECT id, cost, trace_count, period_start FROM window_days
            WHERE period_start > first_day OR first_day = %(history_start)s
        ),
        med AS ({_median_sql("history", "cost")}),
        same_weekday AS (
            SELECT id, cost FROM history WHERE period_start IN ({weekdays})
        ),
        weekly AS ({_median_sql("same_weekday", "cost")})"""


def _window_params(start: datetime) -> dict:
    return {
        "start": start,
        "history_start": start - BASELINE_DAYS * DAY,
        **{f"week_{n}": start - 7 * n * DAY for n in range(1, WEEKS + 1)},
    }


def detect_baseline(day: date, tenant_id: int | None = None) -> list[Finding]:
    """
    A scope's cost far above its own trailing history: over the complete
    days of the previous BASELINE_DAYS (at least BASELINE_MIN_DAYS of them
    with cost), flag ``spike_vs_baseline`` when cost > median + 5 x 1.4826 x
    MAD (a robust z-score above 5: one earlier outlier moves neither the
    median nor the MAD) and cost > 2 x expected.

    Expected is the median, or the median of the same weekday over the last
    WEEKS weeks when that is higher: a weekday-heavy scope's Monday is at its
    median already (most days are weekdays), and a weekend-heavy scope's
    Saturday is compared with its Saturdays.
    """
    start, _ = day_bounds(day)
    # One cheap pass over every scope's window (its median of all days)
    # keeps the scopes that could be flagged, generously (ROUGH_MARGIN):
    # leaving a partial first day out moves a median by one rank at most.
    # The complete-day history, its weekday median and the MAD (more passes
    # over the history) are computed for those alone.
    sql = f"""
        WITH today AS (
            SELECT s.id, s.tenant_id, s.scope_type, s.project_id, s.scope_id,
                   s.cost, s.trace_count
            FROM billing_costsummary s {ACTIVE}
            WHERE s.period_start = %(start)s AND s.cost > 0 {TENANT_FILTER}
        ),
        all_days AS (
            SELECT today.id, h.cost
            FROM today JOIN billing_costsummary h ON {SAME_SCOPE.format("today")}
             AND h.period_start >= %(history_start)s AND h.period_start < %(start)s
        ),
        rough AS ({_median_sql("all_days", "cost")}),
        day AS (
            SELECT today.* FROM today JOIN rough ON rough.id = today.id
            WHERE rough.n >= %(min_days)s
              AND today.cost > rough.median * %(min_ratio)s * %(rough_margin)s
        ),
        {_own_expectation("day")},
        candidates AS (
            SELECT day.*, med.median,
                   CASE WHEN weekly.n >= %(weekday_min)s AND weekly.median > med.median
                        THEN weekly.median ELSE med.median END AS expected
            FROM day JOIN med ON med.id = day.id
            LEFT JOIN weekly ON weekly.id = day.id
            WHERE med.n >= %(min_days)s AND day.cost > med.median * %(min_ratio)s
        ),
        -- The usual trace count, for the users and epics among them only.
        mixed_history AS (
            SELECT h.id, h.trace_count FROM candidates c JOIN history h ON h.id = c.id
            WHERE c.scope_type IN {MIXED_SCOPES}
        ),
        volume AS ({_median_sql("mixed_history", "trace_count")}),
        deviation AS (
            SELECT c.id, ABS(h.cost - c.median) AS dev
            FROM candidates c JOIN history h ON h.id = c.id
        ),
        mad AS ({_median_sql("deviation", "dev")})
        SELECT c.id, c.tenant_id, c.scope_type, c.project_id, c.scope_id,
               c.cost, c.expected
        FROM candidates c JOIN mad ON mad.id = c.id
        LEFT JOIN volume ON volume.id = c.id
        WHERE c.cost > c.median + %(k)s * %(scale)s * mad.median
          AND c.cost > c.expected * %(min_ratio)s
          AND (c.scope_type NOT IN {MIXED_SCOPES}
               OR c.trace_count >= volume.median * %(min_volume)s)
    """
    params = {
        **_window_params(start),
        "min_days": BASELINE_MIN_DAYS,
        "min_ratio": BASELINE_MIN_RATIO,
        "weekday_min": WEEKDAY_MIN_DAYS,
        "min_volume": MIXED_MIN_VOLUME,
        "rough_margin": ROUGH_MARGIN,
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
            _decimal(expected),
        )
        for row_id, tenant, scope_type, project, scope, cost, expected in _rows(
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
    start, _ = day_bounds(day)
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


def detect_expensive_traces(day: date, tenant_id: int | None = None) -> list[Finding]:
    """
    A runaway trace: an agent's most expensive trace of the day costs more
    than the tenant's ``anomaly_trace_factor`` (default 15) times the 95th
    percentile of the agent's trace costs over the previous TRACE_DAYS days
    (TRACE_MIN_TRACES traces in all, on at least TRACE_MIN_DAYS days in one
    cost bucket: a week's habit, not one day's burst). One trace in a busy
    scope hardly moves its day, so the day's rules miss what this one
    catches.

    The percentile comes from the trigger-kept histogram (``DailyTraceCost``):
    the middle of its bucket, within 10%. Agents whose costliest bucket could
    be that far above it are candidates; their costliest trace is then read
    from the ledger, and is the finding's observed value.
    """
    start, end = day_bounds(day)
    # One pass over the week's histograms (a day's for every agent is a few
    # hundred thousand rows); the agents are matched by hashing, never by a
    # lookup per agent (one agent's week is a handful of rows).
    sql = f"""
        WITH today AS (
            SELECT c.tenant_id, c.project_id, c.agent_id, MAX(c.bucket) AS top
            FROM billing_dailytracecost c
            WHERE c.day = %(day)s AND c.traces > 0
              AND (%(tenant)s IS NULL OR c.tenant_id = %(tenant)s)
            GROUP BY c.tenant_id, c.project_id, c.agent_id
        ),
        -- Each bucket of the week, and on how many of its days: an agent's
        -- days with traces are at least its busiest bucket's.
        buckets AS (
            SELECT c.tenant_id, c.project_id, c.agent_id, c.bucket,
                   SUM(c.traces) AS traces, COUNT(*) AS days
            FROM billing_dailytracecost c
            WHERE c.day >= %(since)s AND c.day < %(day)s AND c.traces > 0
              AND (%(tenant)s IS NULL OR c.tenant_id = %(tenant)s)
            GROUP BY c.tenant_id, c.project_id, c.agent_id, c.bucket
        ),
        ranked AS (
            SELECT buckets.*,
                   SUM(traces) OVER (
                       PARTITION BY tenant_id, project_id, agent_id ORDER BY bucket
                       ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
                   ) AS running,
                   SUM(traces) OVER (
                       PARTITION BY tenant_id, project_id, agent_id
                   ) AS total,
                   MAX(days) OVER (PARTITION BY tenant_id, project_id, agent_id)
                       AS busiest
            FROM buckets
        ),
        p95 AS (
            SELECT tenant_id, project_id, agent_id, MIN(bucket) AS bucket,
                   MAX(total) AS total, MAX(busiest) AS days
            FROM ranked WHERE running >= 0.95 * total
            GROUP BY tenant_id, project_id, agent_id
        )
        SELECT today.tenant_id, today.project_id, today.agent_id, p95.bucket,
               t.anomaly_trace_factor
        FROM today
        JOIN p95 ON p95.tenant_id = today.tenant_id
         AND p95.project_id = today.project_id AND p95.agent_id = today.agent_id
        JOIN billing_tenant t ON t.id = today.tenant_id AND t.status = 'active'
        WHERE p95.total >= %(min_traces)s AND p95.days >= %(min_days)s
          -- The top bucket's upper edge above factor x the p95 bucket's lower
          -- edge: whatever in the top bucket might be far enough above.
          AND today.top + 1 - p95.bucket
              > {BUCKETS_PER_OCTAVE} * log(2.0, t.anomaly_trace_factor)
    """
    adapt_day = connection.ops.adapt_datefield_value
    params = {
        "day": adapt_day(day),
        "since": adapt_day(day - TRACE_DAYS * DAY),
        "min_traces": TRACE_MIN_TRACES,
        "min_days": TRACE_MIN_DAYS,
    }
    candidates = {
        (tenant, project, agent): (_bucket_middle(bucket), _decimal(factor))
        for tenant, project, agent, bucket, factor in _rows(
            sql, params, tenant_id, nested_loops=False
        )
    }
    summaries = _agent_summaries(list(candidates), start)
    findings = []
    for key, top in _costliest_traces(sorted(candidates), start, end).items():
        p95, factor = candidates[key]
        if top > factor * p95 and key in summaries:
            tenant, project, agent = key
            findings.append(
                Finding(
                    "expensive_trace",
                    tenant,
                    "agent",
                    project,
                    agent,
                    summaries[key],
                    top,
                    p95,
                )
            )
    return sorted(findings, key=lambda f: (f.tenant_id, f.project_id, f.scope_id))


def _agent_summaries(
    agents: list[tuple[int, str, str]], start: datetime
) -> dict[tuple[int, str, str], int]:
    """The day's summary id of each of ``agents``."""
    found = {}
    for at in range(0, len(agents), SCOPE_BATCH):
        wanted = Q()
        for tenant, project, agent in agents[at : at + SCOPE_BATCH]:
            wanted |= Q(tenant_id=tenant, project_id=project, scope_id=agent)
        rows = CostSummary.objects.filter(
            wanted, scope_type="agent", period_start=start
        ).values_list("tenant_id", "project_id", "scope_id", "pk")
        with tenant_context(sorted({t for t, _, _ in agents})):
            found.update({(t, p, a): pk for t, p, a, pk in rows})
    return found


def _bucket_middle(bucket: int) -> Decimal:
    """The geometric middle of a trace-cost bucket, in USD."""
    return _decimal(2 ** ((bucket + 0.5) / BUCKETS_PER_OCTAVE))


# Scopes per ledger query: up to three parameters each, under SQLite's 999.
SCOPE_BATCH = 300


def _costliest_traces(
    scopes: list[tuple],
    start: datetime,
    end: datetime,
    columns=("project_id", "agent_id"),
) -> dict[tuple, Decimal]:
    """
    The most expensive billable trace between ``start`` and ``end`` of each
    of ``scopes``: (tenant, *values of ``columns``) tuples.
    """
    found = {}
    keys = ", ".join(f"r.{column}" for column in ("tenant_id", *columns))
    for at in range(0, len(scopes), SCOPE_BATCH):
        batch = scopes[at : at + SCOPE_BATCH]
        tenants = sorted({tenant for tenant, *_ in batch})
        one = "(" + ", ".join(["%s"] * (1 + len(columns))) + ")"
        sql = f"""
            SELECT {keys}, MAX(r.cost)
            FROM billing_usagerecord r
            WHERE r.trace_timestamp >= %s AND r.trace_timestamp < %s
              AND r.tenant_id IN ({", ".join(["%s"] * len(tenants))})
              AND r.status IN {BILLABLE}
              AND ({keys}) IN (VALUES {", ".join([one] * len(batch))})
            GROUP BY {keys}
        """
        adapt = connection.ops.adapt_datetimefield_value
        params = [adapt(start), adapt(end), *tenants]
        params += [value for scope in batch for value in scope]
        with tenant_context(tenants), connection.cursor() as cursor:
            cursor.execute(sql, params)
            for *key, top in cursor.fetchall():
                found[tuple(key)] = _decimal(top)
    return found


def without_single_trace_days(findings: list[Finding], day: date) -> list[Finding]:
    """
    Drop the high findings of agents and projects that are high only because
    of one trace: without its costliest trace, the day must still be beyond
    BASELINE_MIN_RATIO times its usual (its cost less the money at stake).
    One costly trace is the expensive-trace rule's to judge, against the
    agent's own tail; a sparse agent's day swings 3x on one tail trace.
    """
    start, end = day_bounds(day)
    high = [
        f
        for f in findings
        if f.anomaly_type in ("high_cost", "spike_vs_baseline")
        and f.scope_type in ("agent", "project")
    ]
    agents = _costliest_traces(
        sorted(
            {
                (f.tenant_id, f.project_id, f.scope_id)
                for f in high
                if f.scope_type == "agent"
            }
        ),
        start,
        end,
    )
    projects = _costliest_traces(
        sorted({(f.tenant_id, f.scope_id) for f in high if f.scope_type == "project"}),
        start,
        end,
        columns=("project_id",),
    )
    high_findings = set(high)
    kept = []
    for finding in findings:
        if finding in high_findings:
            key = (
                (finding.tenant_id, finding.project_id, finding.scope_id)
                if finding.scope_type == "agent"
                else (finding.tenant_id, finding.scope_id)
            )
            top = (agents if finding.scope_type == "agent" else projects).get(key, 0)
            usual = finding.observed - finding.money_at_stake()
            if finding.observed - top <= usual * BASELINE_MIN_RATIO:
                continue
        kept.append(finding)
    return kept


DETECTORS = (
    detect_cohort,
    detect_baseline,
    detect_missing_data,
    detect_expensive_traces,
)


def tenant_floors(day: date, tenant_ids: set[int]) -> dict[int, Decimal]:
    """
    Each tenant's materiality floor on ``day``: the larger of its
    ``anomaly_min_amount`` and ``anomaly_min_share`` of its cost that day
    (the sum of its projects').
    """
    start, _ = day_bounds(day)
    sql = """
        SELECT t.id, t.anomaly_min_amount, t.anomaly_min_share,
               (SELECT SUM(s.cost) FROM billing_costsummary s
                WHERE s.tenant_id = t.id AND s.period_start = %(start)s
                  AND s.scope_type = 'project')
        FROM billing_tenant t
        WHERE (%(tenant)s IS NULL OR t.id = %(tenant)s)
    """
    floors = {}
    single = next(iter(tenant_ids)) if len(tenant_ids) == 1 else None
    for tenant, amount, share, total in _rows(sql, {"start": start}, single):
        if tenant in tenant_ids:
            share_of_day = _decimal(share) * _decimal(total or 0)
            floors[tenant] = max(_decimal(amount), share_of_day)
    return floors


def is_material(finding: Finding, floor: Decimal) -> bool:
    """Whether the money at stake reaches the floor."""
    return finding.money_at_stake() >= floor


def detect_day(day: date, tenant_id: int | None = None) -> list[Finding]:
    """Every rule's findings of one day that reach their tenant's floor."""
    findings = [f for detector in DETECTORS for f in detector(day, tenant_id)]
    findings = without_single_trace_days(findings, day)
    if not findings:
        return []
    floors = tenant_floors(day, {f.tenant_id for f in findings})
    return [f for f in findings if is_material(f, floors[f.tenant_id])]
