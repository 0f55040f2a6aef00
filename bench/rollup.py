"""
Benchmark of the daily cost rollup and the anomaly detectors on Postgres.

    .venv/bin/python bench/rollup.py [--rows 1000000 10000000]

For each size it fills a dedicated database ``bench_rollup`` with that many
ledger rows for ONE UTC day, generated with set-based SQL (``INSERT ...
SELECT FROM generate_series``, not the ORM), plus 28 days of prior cost
summaries for the same scopes, then times in a fresh Django process:

- ``billing.rollup.rollup_day(day=...)``, twice (the second run is the
  idempotent re-run, which finds every summary unchanged and writes none),
  reported as ledger rows per second;
- ``anomalies.detectors.detect_day(day)``, twice, over the resulting
  summaries, with the anomalies found per type;
- once, ``anomalies.pipeline.detect_days([day])``: the same rules plus
  recording the findings (CostAnomaly rows, audit log, top contributors).

Targets: 10M ledger rows rolled up in under 30 s (333k rows/s), detection
over 100k scopes in under 10 s.

The rollup reads ``DailyScopeUsage``, which the ledger's triggers keep as
the sync writes; the load adds the whole day to it set-based with the
triggers' SQL and prints that time too ("triggers bulk"), so the work moved
from the nightly rollup to the writes is in the figures as well.

Shape of the generated day (see README): 200 active tenants of four sizes
(weights 1:2:3:4); per tenant 5 projects, 30-50 agents and 20-40 epics per
project and 100-200 users, about 505 scopes a tenant and 101k in all. Traces
are in time order, tenants interleaved, as the sync writes them. Each trace
picks a user (mild skew, ``floor(n * random() ^ 1.2)``; 5% have none),
mostly (90%) in the user's home project; the user works on 3 neighbouring
epics (10% of traces have none), and the agent is mostly (70%) one of the
few that serve the epic, otherwise any agent of the project. A trace uses
1-3 models (60/30/10%): its tenant's standard chat model, an agent-specific
second one, an embedding model third. Its ``model_breakdown`` and
``observations`` hold one entry per model and its totals are their sums.
Every row is ``reported`` (one Stripe report per tenant). About 1 in 400
agents is a runaway (10x tokens) and as many are nearly idle (3% of the
tokens): cohort and baseline anomalies. About 1% of the records get a late
``UsageAdjustment`` (a tenth of one model's usage again). The daily scope
usage is then added from the records and adjustments with the SQL of the
ledger's triggers (which replica mode turns off during the load).

The history is generated analytically, not by rolling up more ledger: each
scope's usage on the generated day with the runaway and idle agents'
multipliers taken out, times per-day noise that shrinks with the scope's
volume, a sprinkle of 8x spikes (0.5% of scope-days, which a robust
baseline must shrug off), and retired scopes (an agent per project of
every fourth tenant, a user of every tenth) that have steady cost every day
until this one: missing data.

The ledger is loaded with ``session_replication_role = replica`` (no
foreign-key triggers; the generated rows are consistent by construction),
then ``VACUUM ANALYZE`` and a ``CHECKPOINT`` so that the timed runs see the
steady state. Progress goes to stderr, figures to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from support import (
    DEFAULT_POSTGRES_URL,
    MODEL_BREAKDOWN,
    ROOT,
    Timer,
    django_env,
    log,
    migrate,
    model_cost,
    model_prices,
    model_tokens,
    recreate_database,
    trace_members,
)

from billing import trace_costs
from billing.scope_usage import fill_sql

DATABASE = "bench_rollup"
SEED = 0.42
DAY = date(2026, 11, 20)

# Shape of the generated data.
TENANTS = 200
PARTS = 2  # connections generating at once
PROJECTS = 5
HISTORY_DAYS = 28
SKEW = 1.2  # users picked as floor(n * random() ^ SKEW)
NO_EPIC = 0.10
NO_USER = 0.05
ADJUSTED_EVERY = 100  # one record in this many gets a late adjustment
ANOMALY_MODULUS = 397  # one agent in this many runs away, as many go idle
RUNAWAY, IDLE = 10, 0.03  # token multipliers of those agents
HISTORY_SPIKE_RATE, HISTORY_SPIKE = 0.005, 8
# Chat models (a tenant's standard one, an agent's second one), then an
# embedding model; priced by the app's price table.
MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "o3-mini",
    "claude-3-5-sonnet-20241022",
    "claude-3-5-haiku-20241022",
    "gemini-1.5-pro-002",
    "text-embedding-3-small",
)
# Shares of a scope's cost per model in the generated history.
HISTORY_SHARES = tuple(
    Decimal(share) for share in ("0.3", "0.25", "0.15", "0.1", "0.1", "0.08", "0.02")
)

# Targets from the issue.
TARGET_ROLLUP_ROWS, TARGET_ROLLUP_SECONDS = 10_000_000, 30.0
TARGET_DETECT_SCOPES, TARGET_DETECT_SECONDS = 100_000, 10.0
ROLLUP_RATE = TARGET_ROLLUP_ROWS / TARGET_ROLLUP_SECONDS
DETECT_RATE = TARGET_DETECT_SCOPES / TARGET_DETECT_SECONDS


# --------------------------------------------------------------------------
# Database: create, migrate, fill
# --------------------------------------------------------------------------


def connect(postgres_url: str, database: str = DATABASE, **kwargs):
    import psycopg

    return psycopg.connect(f"{postgres_url}/{database}", **kwargs)


def _tenant_buckets() -> list[int]:
    """1000 buckets of tenant ordinals, as many per tenant as its weight
    (1 + i % 4): a trace's tenant is a random bucket's."""
    weights = [1 + i % 4 for i in range(1, TENANTS + 1)]
    buckets: list[int] = []
    cumulative = 0
    for i, weight in enumerate(weights, 1):
        cumulative += weight
        buckets += [i] * (round(1000 * cumulative / sum(weights)) - len(buckets))
    return buckets


TENANTS_SQL = """
    INSERT INTO billing_tenant (
        name, slug, status, stripe_customer_id, stripe_meter_event_name,
        meter_unit, langfuse_host, langfuse_public_key, langfuse_secret_key,
        sync_enabled, settle_seconds, sync_concurrency, sync_paused_reason,
        overlap_seconds, max_running_seconds, scope_mapping, sync_problem,
        anomaly_high_ratio, anomaly_low_ratio, anomaly_min_amount,
        anomaly_min_share, anomaly_trace_factor, created_at, updated_at)
    SELECT 'Bench tenant ' || i, 'bench-' || i, 'active', 'cus_bench' || i,
           'llm_usage', 'micro_usd', 'https://cloud.langfuse.com', '', '',
           true, 60, 4, '', 900, 3600, '{}', '', 3, 0.1, 1, 0.01, 15, now(), now()
    FROM generate_series(1, %(tenants)s) i
"""

REPORTS_SQL = """
    INSERT INTO billing_stripereport (
        identifier, event_name, stripe_customer_id, unit, value, amount, day,
        timestamp, record_count, adjustment_count, status, attempts,
        last_error, created_at, sent_at, tenant_id)
    SELECT 'bench-' || t.id || '-' || %(day)s, 'llm_usage', t.stripe_customer_id,
           'micro_usd', 0, 0, %(day)s, %(start)s + interval '1 day', 0, 0,
           'sent', 1, '', now(), now(), t.id
    FROM billing_tenant t
"""

# The tenants by ordinal i (1..TENANTS), with their one report of the day.
BENCH_TENANT_SQL = """
    CREATE UNLOGGED TABLE bench_tenant AS
    SELECT row_number() OVER (ORDER BY t.id) AS i, t.id AS tenant_id,
           r.id AS report_id
    FROM billing_tenant t JOIN billing_stripereport r ON r.tenant_id = t.id
"""

# Sizes of tenant t.i and its project p: 100-200 users, 30-50 agents and
# 20-40 epics per project (the same expressions for the ledger and history).
N_USERS = "(100 + mod(13 * t.i, 101))"
N_AGENTS = "(30 + mod(7 * t.i + 3 * p, 21))"
N_EPICS = "(20 + mod(5 * t.i + 2 * p, 21))"
# Runaway and idle agents, by position; the multiplier of a trace's tokens.
MULTIPLIER = f"""CASE mod(31 * t.i + 7 * p + a, {ANOMALY_MODULUS})
    WHEN 0 THEN {RUNAWAY} WHEN {ANOMALY_MODULUS // 2} THEN {IDLE} ELSE 1 END"""


# {"tr-000000001-o1": ["gpt-4o", 1, 2, 0, "0.0001", "price_table"], ...}
OBSERVATIONS = trace_members(
    """concat('"', trace_id, '-o{k}": ["', (%(names)s::text[])[m{k}], '", ',
        in{k}, ', ', out{k}, ', ', ca{k}, ', "', c{k}, '", "price_table"]')"""
)


# One row per trace n, in time order (tenants interleaved, as the sync
# writes them), built inside out: the random draws (a subquery with volatile
# functions in its target list is not flattened, so each is drawn once),
# the scopes, the models' tokens, their prices. Levels that need the
# tenant's ordinal and the project are named t, as N_AGENTS etc. expect.
RECORDS_SQL = f"""
    INSERT INTO billing_usagerecord (
        tenant_id, trace_id, trace_timestamp, last_activity_at, project_id,
        agent_id, epic_id, user_id, input_tokens, output_tokens, cached_tokens,
        cost, model_breakdown, observations, running, price_source,
        content_hash, status, skip_reason, report_id, created_at, updated_at)
    SELECT tenant_id, trace_id, at, at + interval '40 seconds',
           'proj-' || p, 'agent-' || a, epic_id, user_id,
           in1 + in2 + in3, out1 + out2 + out3, ca1 + ca2 + ca3, c1 + c2 + c3,
           {MODEL_BREAKDOWN}, {OBSERVATIONS}, '{{}}',
           'price_table', md5(trace_id), 'reported', '', report_id,
           %(created)s, %(created)s
    FROM (
        SELECT *, {model_cost(1)}, {model_cost(2)}, {model_cost(3)}
        FROM (
            SELECT *, {model_tokens(1)}, {model_tokens(2)}, {model_tokens(3)}
            FROM (
                SELECT *, {MULTIPLIER} AS mult,
                       CASE WHEN rno_epic < {NO_EPIC} THEN '' ELSE 'EPIC-' || e
                       END AS epic_id,
                       1 + (rm < 0.4)::int + (rm < 0.1)::int AS nm,
                       -- The tenant's standard model, an agent-specific
                       -- second one, an embedding model third.
                       1 + mod(t.i, 6) AS m1,
                       1 + mod(t.i + 1 + mod(5 * a, 5), 6) AS m2, 7 AS m3
                FROM (
                    SELECT *, CASE WHEN ragent < 0.7
                                   THEN mod(3 * e + floor(4 * ra ^ 2)::int, {N_AGENTS})
                                   ELSE floor({N_AGENTS} * ra ^ 1.5)::int END AS a
                    FROM (
                        -- A user works on 3 neighbouring epics of a project.
                        SELECT *, mod(3 * (u / 5) + floor(3 * re ^ 2)::int,
                                      {N_EPICS}) AS e
                        FROM (
                            -- ...mostly of their home project.
                            SELECT *, CASE WHEN rhome < 0.9 THEN mod(u, {PROJECTS})
                                           ELSE floor({PROJECTS} * rp)::int END AS p
                            FROM (
                                SELECT t.*, b.tenant_id, b.report_id,
                                       floor({N_USERS} * ru ^ {SKEW})::int AS u,
                                       CASE WHEN rno_user < {NO_USER} THEN ''
                                            ELSE 'user-'
                                                || floor({N_USERS} * ru ^ {SKEW})
                                       END AS user_id
                                FROM (
                                    SELECT n, 'tr-' || lpad(n::text, 9, '0') trace_id,
                                           %(start)s + (n - 1 + random())
                                               * interval '1 day' / %(rows)s AS at,
                                           (%(buckets)s::int[])[
                                               1 + floor(1000 * random())::int] AS i,
                                           random() AS ru, random() AS rno_user,
                                           random() AS rhome, random() AS rp,
                                           random() AS re, random() AS rno_epic,
                                           random() AS ragent, random() AS ra,
                                           random() AS rm
                                    FROM generate_series(1 + %(part)s, %(rows)s,
                                                         %(parts)s) n
                                ) t
                                JOIN bench_tenant b USING (i)
                            ) t
                        ) t
                    ) t
                ) t
            ) drawn
        ) priced
    ) traces
"""

ADJUSTMENTS_SQL = f"""
    INSERT INTO billing_usageadjustment (
        tenant_id, usage_record_id, trace_timestamp, input_tokens,
        output_tokens, cached_tokens, cost, model_breakdown, observations,
        content_hash, status, skip_reason, report_id, created_at)
    SELECT r.tenant_id, r.id, r.trace_timestamp, e.input, e.output, e.cached,
           e.cost,
           jsonb_build_object(e.model, jsonb_build_object('input', e.input,
               'output', e.output, 'cached', e.cached, 'cost', e.cost::text)),
           jsonb_build_object(r.trace_id || '-late', jsonb_build_array(e.model,
               e.input, e.output, e.cached, e.cost::text, 'price_table')),
           md5(r.trace_id || '-late'), 'reported', '', r.report_id,
           %(created)s + interval '1 day'
    FROM billing_usagerecord r
    CROSS JOIN LATERAL (
        SELECT key AS model, (value->>'input')::bigint / 10 AS input,
               (value->>'output')::bigint / 10 AS output,
               (value->>'cached')::bigint / 10 AS cached,
               round((value->>'cost')::numeric / 10, 10) AS cost
        FROM jsonb_each(r.model_breakdown) LIMIT 1
    ) e
    WHERE mod(r.id, {ADJUSTED_EVERY}) = 0
"""

# Every scope of the day with its usage as it would be without the runaway
# and idle agents (tokens and cost divided by the multiplier): the level the
# history is drawn around.
SCOPES_SQL = f"""
    CREATE UNLOGGED TABLE bench_scope AS
    SELECT tenant_id,
           CASE WHEN GROUPING(agent_id) = 0 THEN 'agent'
                WHEN GROUPING(epic_id) = 0 THEN 'epic'
                WHEN GROUPING(user_id) = 0 THEN 'user' ELSE 'project' END
               AS scope_type,
           CASE WHEN GROUPING(agent_id) = 0 OR GROUPING(epic_id) = 0
                THEN project_id ELSE '' END AS project_id,
           coalesce(agent_id, epic_id, user_id, project_id) AS scope_id,
           count(*) AS traces, sum(input_tokens / mult) AS input,
           sum(output_tokens / mult) AS output,
           sum(cached_tokens / mult) AS cached, sum(cost / mult) AS cost,
           false AS retired
    FROM (
        SELECT r.*, {MULTIPLIER} AS mult
        FROM (
            SELECT r.tenant_id, r.project_id, r.agent_id, r.epic_id, r.user_id,
                   r.input_tokens, r.output_tokens, r.cached_tokens, r.cost, b.i,
                   substr(r.project_id, 6)::int AS p, substr(r.agent_id, 7)::int AS a
            FROM billing_usagerecord r JOIN bench_tenant b USING (tenant_id)
        ) r, LATERAL (SELECT r.i) t
    ) r
    GROUP BY GROUPING SETS ((tenant_id, project_id), (tenant_id, project_id, agent_id),
                            (tenant_id, project_id, epic_id), (tenant_id, user_id))
    HAVING coalesce(agent_id, epic_id, user_id, project_id) <> ''
"""

# Retired scopes: an average agent in every project of every fourth tenant,
# an average user of every tenth, with history but nothing on the day.
RETIRED_SQL = """
    INSERT INTO bench_scope
    SELECT s.tenant_id, s.scope_type, s.project_id,
           s.scope_type || '-retired', avg(traces), avg(input), avg(output),
           avg(cached), avg(cost), true
    FROM bench_scope s JOIN bench_tenant b USING (tenant_id)
    WHERE (s.scope_type = 'agent' AND mod(b.i, 4) = 0)
       OR (s.scope_type = 'user' AND mod(b.i, 10) = 0)
    GROUP BY s.tenant_id, s.scope_type, s.project_id
"""


def _history_breakdown() -> str:
    """The scope's day split over the models by fixed shares, as text."""
    members = ", ', ', ".join(
        f"""'"{model}": {{"cost": "', round(cost * {share}, 10),
            '", "input": ', round(input * {share}), ', "output": ',
            round(output * {share}), ', "cached": ', round(cached * {share}),
            ', "traces": ', ceil(traces * {share}), '}}'"""
        for model, share in zip(MODELS, HISTORY_SHARES, strict=True)
    )
    return f"concat('{{', {members}, '}}')::jsonb"


# Each scope on each of the HISTORY_DAYS days before: its level times noise
# of +-(10% + 1/sqrt(traces)), at most +-60% (retired scopes are steady,
# +-10%), and now and then an 8x spike. Inserted day by day, as daily
# rollups lay the table out.
HISTORY_SQL = f"""
    INSERT INTO billing_costsummary (
        tenant_id, scope_type, project_id, scope_id, period_start, period_end,
        trace_count, input_tokens, output_tokens, cached_tokens, cost,
        model_breakdown, computed_at)
    SELECT tenant_id, scope_type, project_id, scope_id, period_start,
           period_start + interval '1 day', traces, input, output, cached, cost,
           {_history_breakdown()}, period_start + interval '1 day 1 hour'
    FROM (
        SELECT tenant_id, scope_type, project_id, scope_id, period_start,
               round(traces * f)::bigint AS traces,
               round(input * f)::bigint AS input,
               round(output * f)::bigint AS output,
               round(cached * f)::bigint AS cached,
               round((cost * f)::numeric, 10) AS cost
        FROM (
            SELECT s.*, %(start)s - d * interval '1 day' AS period_start,
                   (1 + (2 * random() - 1) * CASE WHEN s.retired THEN 0.1
                       ELSE least(0.6, 0.1 + 1 / sqrt(s.traces)) END)
                   * CASE WHEN random() < {HISTORY_SPIKE_RATE}
                          THEN {HISTORY_SPIKE} ELSE 1 END AS f
            FROM bench_scope s, generate_series(1, {HISTORY_DAYS}) d
            WHERE mod(s.tenant_id, %(parts)s) = %(part)s
            ORDER BY d DESC, s.tenant_id, s.scope_type, s.project_id, s.scope_id
        ) noisy
    ) scaled
"""

TRACE_COST_DAYS = 7
TRACE_COST_HISTORY_SQL = """
    INSERT INTO billing_dailytracecost
        (day, tenant_id, project_id, agent_id, bucket, traces)
    SELECT c.day - d, c.tenant_id, c.project_id, c.agent_id, c.bucket, c.traces
    FROM billing_dailytracecost c, generate_series(1, %(days)s) d
"""

CHECK_SQL = """
    SELECT count(*) FILTER (WHERE r.input_tokens <> s.input OR r.cost <> s.cost)
    FROM (SELECT * FROM billing_usagerecord TABLESAMPLE SYSTEM (1)) r,
         LATERAL (SELECT sum((value->>'input')::bigint) AS input,
                         sum((value->>'cost')::numeric) AS cost
                  FROM jsonb_each(r.model_breakdown)) s
"""

GENERATED_TABLES = (
    "billing_tenant",
    "billing_stripereport",
    "billing_usagerecord",
    "billing_usageadjustment",
    "billing_dailyscopeusage",
    "billing_dailytracecost",
    "billing_costsummary",
)


def in_parallel(postgres_url: str, sql: str, params: dict[str, Any]) -> int:
    """Run an INSERT in PARTS connections at once, each on its share (part
    of PARTS) of the rows; return the rows inserted."""

    def part(n: int) -> int:
        with connect(postgres_url) as connection:
            # Bulk load: no foreign-key triggers (consistent by construction).
            connection.execute("SET session_replication_role = replica")
            connection.execute("SET work_mem = '256MB'")
            connection.execute("SELECT setseed(%s)", [SEED + n / 10])
            return connection.execute(
                sql, {**params, "part": n, "parts": PARTS}
            ).rowcount

    with ThreadPoolExecutor(PARTS) as pool:
        return sum(pool.map(part, range(PARTS)))


def generate(postgres_url: str, rows: int) -> dict[str, Any]:
    """Empty the bench database's data, then generate the day and its history."""
    start = datetime.combine(DAY, datetime.min.time(), tzinfo=UTC)
    params: dict[str, Any] = {
        "rows": rows,
        "tenants": TENANTS,
        "day": DAY,
        "start": start,
        "created": start + timedelta(days=1, hours=2),
        "buckets": _tenant_buckets(),
        **model_prices(MODELS),
    }
    shape: dict[str, Any] = {}
    with connect(postgres_url, autocommit=True) as connection:
        run = connection.execute
        run("DROP TABLE IF EXISTS bench_tenant, bench_scope")
        run("TRUNCATE billing_tenant, billing_dailyscopeusage RESTART IDENTITY CASCADE")
        run("SET session_replication_role = replica")
        run("SET work_mem = '256MB'")
        run(TENANTS_SQL, params)
        run(REPORTS_SQL, params)
        run(BENCH_TENANT_SQL, params)
        with Timer() as timer:
            shape["records"] = in_parallel(postgres_url, RECORDS_SQL, params)
        log(f"{shape['records']:,} usage records in {timer.seconds:.0f} s")
        run("SELECT setseed(%s)", [SEED])
        shape["adjustments"] = run(ADJUSTMENTS_SQL, params).rowcount
        # The ledger's triggers are off in replica mode: add the ledger to the
        # daily scope usage with the SQL they run, set-based.
        with Timer() as timer:
            shape["scope_usage"] = in_parallel(
                postgres_url,
                fill_sql("postgresql", "mod({table}.tenant_id, %(parts)s) = %(part)s"),
                params,
            )
        shape["scope_usage_seconds"] = timer.seconds
        log(f"{shape['scope_usage']:,} daily scope usage rows in {timer.seconds:.0f} s")
        with Timer() as timer:
            shape["trace_costs"] = run(trace_costs.fill_sql("postgresql")).rowcount
            # The week before, for the expensive-trace rule: the same
            # histograms (a week with no runaway traces of its own).
            run(TRACE_COST_HISTORY_SQL, {"days": TRACE_COST_DAYS})
        log(f"{shape['trace_costs']:,} trace cost rows a day in {timer.seconds:.0f} s")
        (mismatched,) = run(CHECK_SQL).fetchone()
        if mismatched:
            raise RuntimeError(f"{mismatched} records whose totals != breakdown")
        run(SCOPES_SQL, params)
        shape["retired"] = run(RETIRED_SQL).rowcount
        with Timer() as timer:
            shape["history"] = in_parallel(postgres_url, HISTORY_SQL, params)
        log(f"{shape['history']:,} history summaries in {timer.seconds:.0f} s")
        run("DROP TABLE bench_tenant, bench_scope")
        for table in GENERATED_TABLES:
            run(f"VACUUM ANALYZE {table}")
        run("CHECKPOINT")
        shape["ledger_mb"] = run(
            """SELECT (pg_total_relation_size('billing_usagerecord')
                       + pg_total_relation_size('billing_usageadjustment')
                       + pg_total_relation_size('billing_dailyscopeusage'))
                      / 1048576"""
        ).fetchone()[0]
    return shape


def server_settings(postgres_url: str) -> dict[str, str]:
    names = (
        "server_version",
        "shared_buffers",
        "work_mem",
        "max_parallel_workers_per_gather",
    )
    with connect(postgres_url) as connection:
        return {
            name: connection.execute(f"SHOW {name}").fetchone()[0] for name in names
        }


# --------------------------------------------------------------------------
# The measured work, in a fresh Django process
# --------------------------------------------------------------------------


def measure_worker(config: dict[str, Any]) -> dict[str, Any]:
    import django

    django.setup()
    from anomalies.detectors import detect_day
    from anomalies.pipeline import detect_days
    from billing.models import CostSummary
    from billing.rollup import rollup_day
    from billing.tenancy import tenant_context

    day = date.fromisoformat(config["day"])
    result: dict[str, Any] = {"rollup": [], "detect": []}
    for _ in range(2):
        with Timer() as timer:
            written = rollup_day(day=day)
        result["rollup"].append({"seconds": timer.seconds, "written": written})
        log(f"rollup_day: {written:,} summaries in {timer.seconds:.1f} s")
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    with tenant_context(all_tenants=True):
        result["scopes"] = CostSummary.objects.filter(period_start=start).count()
    for _ in range(2):
        with Timer() as timer:
            findings = detect_day(day)
        kinds = Counter(finding.anomaly_type for finding in findings)
        result["detect"].append({"seconds": timer.seconds, "kinds": dict(kinds)})
        log(f"detect_day: {len(findings):,} anomalies in {timer.seconds:.1f} s")
    if config["record"]:
        with Timer() as timer:
            run = detect_days([day], job_id="bench")
        result["record"] = {"seconds": timer.seconds, "created": run.anomalies_created}
        log(f"detect_days: {run.anomalies_created:,} recorded in {timer.seconds:.1f} s")
    return result


def measure(postgres_url: str, record: bool) -> dict[str, Any]:
    config = {"day": DAY.isoformat(), "record": record}
    completed = subprocess.run(
        [sys.executable, __file__, "_measure", json.dumps(config)],
        env=django_env(postgres_url, DATABASE),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


ANOMALY_TYPES = ("high_cost", "suspiciously_low", "spike_vs_baseline", "missing_data")


def print_size(rows: int, shape: dict[str, Any], seconds: float, result: dict) -> None:
    ledger = shape["records"] + shape["adjustments"]
    print(
        f"\n{rows:,} rows: {shape['records']:,} usage records + "
        f"{shape['adjustments']:,} adjustments on {DAY} in "
        f"{shape['scope_usage']:,} daily scope usage rows ({shape['ledger_mb']:,} MB "
        f"with indexes), {TENANTS} tenants; "
        f"{shape['history']:,} history "
        f"summaries over {HISTORY_DAYS} days ({shape['retired']} retired scopes); "
        f"generated and vacuumed in {seconds:.0f} s"
    )
    # What the ledger's triggers do as the sync writes, here all at once.
    print(
        f"  {'triggers':<11} {'bulk':<9} {shape['scope_usage_seconds']:7.2f} s  "
        f"{ledger / shape['scope_usage_seconds']:>11,.0f} ledger rows/s  "
        "added to the daily scope usage set-based (the sync adds a page at a time)"
    )
    for n, run in enumerate(result["rollup"], 1):
        label = "rollup_day" if n == 1 else ""
        kind = "first run" if n == 1 else "re-run"
        print(
            f"  {label:<11} {kind:<9} {run['seconds']:7.2f} s  "
            f"{ledger / run['seconds']:>11,.0f} ledger rows/s  "
            f"{run['written']:,} summaries written"
        )
    print(f"  {'scopes':<11} {result['scopes']:,} summaries on {DAY}")
    for n, run in enumerate(result["detect"], 1):
        label = "detect_day" if n == 1 else ""
        kinds = run["kinds"]
        detail = ", ".join(f"{kind} {kinds.get(kind, 0)}" for kind in ANOMALY_TYPES)
        print(
            f"  {label:<11} run {n:<5} {run['seconds']:7.2f} s  "
            f"{sum(kinds.values()):,} anomalies ({detail})"
        )
    if "record" in result:
        record = result["record"]
        print(
            f"  {'detect_days':<11} {'+ record':<9} {record['seconds']:7.2f} s  "
            f"{record['created']:,} anomalies created (rules, CostAnomaly rows, "
            "audit log, top contributors)"
        )


def print_targets(results: list[tuple[int, dict, dict]]) -> bool:
    print(
        f"\nTargets: {TARGET_ROLLUP_ROWS:,} rows rolled up in under "
        f"{TARGET_ROLLUP_SECONDS:.0f} s ({ROLLUP_RATE:,.0f} rows/s); "
        f"detection over {TARGET_DETECT_SCOPES:,} scopes in under "
        f"{TARGET_DETECT_SECONDS:.0f} s. Slower of the two runs; a smaller day "
        "must fit the same time, a larger one the same rate (rows/s, scopes/s)."
    )
    ok = True
    for rows, shape, result in results:
        ledger = shape["records"] + shape["adjustments"]
        rollup = max(run["seconds"] for run in result["rollup"])
        detect = max(run["seconds"] for run in result["detect"])
        rollup_ok = rollup <= max(TARGET_ROLLUP_SECONDS, ledger / ROLLUP_RATE)
        detect_ok = detect <= max(TARGET_DETECT_SECONDS, result["scopes"] / DETECT_RATE)
        ok = ok and rollup_ok and detect_ok
        print(
            f"  {rows:>12,} rows  rollup {rollup:6.2f} s {verdict(rollup_ok)}   "
            f"detection {detect:6.2f} s over {result['scopes']:,} scopes "
            f"{verdict(detect_ok)}"
        )
    return ok


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/rollup.py",
        description="Benchmark the daily cost rollup and anomaly detection.",
    )
    parser.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=[1_000_000, 10_000_000],
        help="ledger rows of the day, per run (default: %(default)s)",
    )
    parser.add_argument(
        "--no-record",
        dest="record",
        action="store_false",
        help="skip the detect_days run that records the anomalies",
    )
    parser.add_argument(
        "--generate-only",
        action="store_true",
        help=f"fill {DATABASE} with the first size and stop (to EXPLAIN by hand)",
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help=f"server to create {DATABASE} on (default: %(default)s)",
    )
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    began = time.monotonic()
    log(f"creating and migrating {DATABASE}")
    recreate_database(args.postgres_url, DATABASE)
    migrate(args.postgres_url, DATABASE)
    settings = server_settings(args.postgres_url)
    results = []
    for rows in args.rows:
        log(f"generating {rows:,} ledger rows")
        with Timer() as timer:
            shape = generate(args.postgres_url, rows)
        if args.generate_only:
            log(f"generated in {timer.seconds:.0f} s: {shape}")
            return 0
        result = measure(args.postgres_url, args.record)
        results.append((rows, shape, result, timer.seconds))

    print(
        f"Rollup and detection benchmark: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"Postgres {settings['server_version']} (shared_buffers "
        f"{settings['shared_buffers']}, work_mem {settings['work_mem']}, "
        f"max_parallel_workers_per_gather "
        f"{settings['max_parallel_workers_per_gather']}), {os.cpu_count()} CPUs"
    )
    for rows, shape, result, seconds in results:
        print_size(rows, shape, seconds, result)
    all_pass = print_targets(
        [(rows, shape, result) for rows, shape, result, _ in results]
    )
    print(f"\nTotal wall time {time.monotonic() - began:.0f} s")
    return 0 if all_pass else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_measure":
        print(json.dumps(measure_worker(json.loads(sys.argv[2]))), flush=True)
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
