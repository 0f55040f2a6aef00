"""
Benchmark of anomaly recording and of the admin pages operators live in, at
the sizes of a large installation.

    .venv/bin/python bench/admin.py                       # 10M rows, 1M anomalies
    .venv/bin/python bench/admin.py --rows 200000 --anomalies 20000 --cost-days 14

Three measurements, each in a fresh Django process against a throw-away
database ``bench_admin``, running as the application's Postgres roles (not
as a superuser, which row-level security would not apply to):

1. Recording: ``anomalies.pipeline.detect_days([day])`` (the rules, then
   ``anomalies_record``: rows, audit log, top contributors) over one day of
   ``--rows`` ledger rows, as the worker role. Baseline: 313 s for 1130
   anomalies at 10M rows, the last measurement with a ledger query per
   anomaly; target: under 30 s. Also printed: the rules alone, the
   set-based top contributors alone, the per-finding read on a sample
   (extrapolated to the day's findings, and compared with the set-based
   answer), and the re-run, which changes nothing.
2. The anomaly changelist ``/admin/anomalies/costanomaly/`` with
   ``--anomalies`` rows over 365 days and 200 tenants, through Django's test
   ``Client`` in process (force_login, the whole middleware stack, RLS as
   the web role), as a superuser and as a staff operator of one tenant:
   unfiltered, by status, by type, by tenant, a date range, a search for a
   scope id and page 50 (plus the assignee and incident filters). Median
   of ``--runs`` runs after a warm-up; target: under 300 ms each. Per page
   the SQL queries are counted and, when a page misses the target, its
   slowest query is shown with EXPLAIN ANALYZE.
3. "Cost over time" (``admin:billing_costsummary_over_time``), per tenant
   and for all tenants, 30 and 90 days, over ``--cost-days`` days of daily
   scope usage at the ledger day's size; the same runs and target. When the
   page does not exist, it says "cost page: not available".

The ledger day is bench/rollup.py's, made by its generator (imported, not
copied): one UTC day of ``--rows`` usage records over 200 tenants and ~100k
scopes with 28 days of summaries before it. Generating 10M rows takes about
20 minutes on two cores, so a generated day is kept: ``bench_rollup`` (bench/rollup.py's
database) is used when it holds a day of that size, else
``bench_admin_ledger`` (made on the first run of a size, and reused by the
next; ``--regenerate`` makes it again). ``bench_admin`` is a file copy of it
(``CREATE DATABASE ... TEMPLATE``, seconds), migrated, then given the roles,
users, anomalies and scope usage history this benchmark needs. It is left
in place after the run, to EXPLAIN by hand.

Generated for the admin, set-based with generate_series: per tenant a staff
operator (Membership "operator", the view permissions of billing and
anomalies), a superuser, and anomalies on each of the 365 days before the
ledger day: at 1M, 5-22 a tenant and day by tenant size (the ledger's
weights 1-4),
40% high cost, 40% spikes, 10% suspiciously low, 10% missing data, over
agents, users, epics and projects; observed vs expected from cents to
hundreds of dollars; status by age (the last 3 days mostly open, the last
month mostly resolved, older ones 95% resolved), the unresolved ones partly
assigned to their tenant's operator, the resolved ones with reason, resolver
and time; related anomalies share a cause (one incident). For the cost page,
the day's scope usage is copied onto the ``--cost-days`` days up to today,
each row's amounts scaled by 0.7-1.3 (half on weekends).

Progress goes to stderr, figures to stdout. The exit status is 1 when a
target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import rollup
from support import (
    DEFAULT_POSTGRES_URL,
    ROOT,
    Timer,
    django_env,
    log,
    migrate,
)

DATABASE = "bench_admin"
# Where a generated ledger day is kept between runs (bench/rollup.py's own
# database is used instead when it holds the size asked for).
LEDGER_DATABASE = "bench_admin_ledger"
DAY = rollup.DAY
SEED = 0.24

# The application's two roles, under names of this benchmark's own (roles
# belong to the whole server, not to one database).
WEB_ROLE = "bench_admin_web"
WORKER_ROLE = "bench_admin_worker"

ANOMALY_DAYS = 365
# Per tenant and day, anomalies are this times the tenant's weight (1-4),
# scaled to --anomalies.
BASELINE_RECORD_SECONDS, BASELINE_RECORD_ANOMALIES = 313.0, 1130
TARGET_RECORD_SECONDS = 30.0
TARGET_PAGE_MS = 300.0
# A page slower than this gets one timed run after its warm-up; slower than
# TOO_SLOW_MS, its warm-up is its only run.
SLOW_MS, TOO_SLOW_MS = 10 * TARGET_PAGE_MS, 10_000.0


# --------------------------------------------------------------------------
# The ledger day: bench/rollup.py's generator and database
# --------------------------------------------------------------------------


def connect(postgres_url: str, database: str, **kwargs):
    import psycopg

    return psycopg.connect(f"{postgres_url}/{database}", **kwargs)


def ledger_rows(postgres_url: str, database: str) -> int | None:
    """The usage records of the ledger day in ``database``; None if absent."""
    import psycopg

    try:
        with connect(postgres_url, database) as connection:
            start = datetime.combine(DAY, datetime.min.time(), tzinfo=UTC)
            return connection.execute(
                "SELECT count(*) FROM billing_usagerecord "
                "WHERE trace_timestamp >= %s AND trace_timestamp < %s",
                [start, start + timedelta(days=1)],
            ).fetchone()[0]
    except psycopg.OperationalError:
        return None
    except psycopg.errors.UndefinedTable:
        return None


@contextmanager
def rollup_database(database: str):
    """
    Point bench/rollup.py's generator at ``database``: it connects through
    its module's ``connect`` and migrates its module's DATABASE, both read
    when called.
    """
    original_connect, original_database = rollup.connect, rollup.DATABASE

    def connect_there(postgres_url: str, name: str = database, **kwargs):
        return original_connect(postgres_url, name, **kwargs)

    rollup.connect, rollup.DATABASE = connect_there, database
    try:
        yield
    finally:
        rollup.connect, rollup.DATABASE = original_connect, original_database


def generate_ledger(postgres_url: str, rows: int) -> dict[str, Any]:
    """bench/rollup.py's day of ``rows`` records, in LEDGER_DATABASE."""
    with rollup_database(LEDGER_DATABASE):
        recreate(postgres_url, LEDGER_DATABASE)
        migrate(postgres_url, rollup.DATABASE)
        return rollup.generate(postgres_url, rows)


def ledger_source(postgres_url: str, rows: int, regenerate: bool) -> tuple[str, str]:
    """The database holding a ledger day of ``rows`` records, and how it came."""
    if not regenerate:
        for database in (rollup.DATABASE, LEDGER_DATABASE):
            if ledger_rows(postgres_url, database) == rows:
                return database, "reused"
    log(f"generating {rows:,} ledger rows in {LEDGER_DATABASE} (bench/rollup.py's)")
    with Timer() as timer:
        generate_ledger(postgres_url, rows)
    return LEDGER_DATABASE, f"generated in {timer.seconds:.0f} s"


def recreate(postgres_url: str, database: str, template: str | None = None) -> None:
    """Drop and create ``database``, a file copy of ``template`` if given
    (FILE_COPY: a checkpoint and a copy of the files, far faster for a
    database of gigabytes than the default of writing it all to the WAL)."""
    import psycopg
    from psycopg import sql

    with connect(postgres_url, "postgres", autocommit=True) as connection:
        name = sql.Identifier(database)
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name)
        )
        create = sql.SQL("CREATE DATABASE {}").format(name)
        if template:
            create += sql.SQL(" TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(template)
            )
        try:
            connection.execute(create)
        except psycopg.errors.ObjectInUse:
            raise SystemExit(
                f"{template} is in use (bench/rollup.py running?): try again later"
            ) from None


# What bench/rollup.py's own measurement leaves behind: recorded anomalies
# and their audit rows (detection here must create them anew).
LEFTOVERS = ("anomalies_costanomaly", "billing_auditlog", "billing_analyticsrun")


def prepare(postgres_url: str, source: str) -> None:
    recreate(postgres_url, DATABASE, template=source)
    migrate(postgres_url, DATABASE)
    with connect(postgres_url, DATABASE, autocommit=True) as connection:
        connection.execute(f"TRUNCATE {', '.join(LEFTOVERS)} CASCADE")


# --------------------------------------------------------------------------
# Data for the admin, set-based
# --------------------------------------------------------------------------


# The tenants by ordinal i, with their weight (bench/rollup.py's tenant
# sizes) and their operator.
TENANTS_SQL = """
    CREATE TEMPORARY TABLE bench_tenant AS
    SELECT t.id AS tenant_id, t.i, 1 + mod(t.i, 4) AS weight, o.user_id AS operator
    FROM (SELECT id, row_number() OVER (ORDER BY id) AS i FROM billing_tenant) t
    JOIN unnest(%(tenant_ids)s::bigint[], %(operators)s::bigint[]) o(tenant_id, user_id)
      ON o.tenant_id = t.id
"""

# Row k (0, 1, ...) of a tenant's day d (1..365 days before the ledger day)
# picks its rule from k and d (a small tenant's one row a day is not always
# the same rule), its scope type and number from k and the tenant
# (distinct numbers for distinct k, so the unique key holds), its money from
# a log-uniform expected value, and its status from its age.
# The five top traces of row k: [["tr-<i>-<d>-<k>-1", "cost"], ...].
TRACES = ", ".join(
    f"""concat('["tr-', i, '-', d, '-', k, '-{n}", "', round(expected / {n}, 10),
               '"]')"""
    for n in range(1, 6)
)
ANOMALIES_SQL = """
    INSERT INTO anomalies_costanomaly (
        tenant_id, summary_id, scope_type, project_id, scope_id, period_start,
        period_end, anomaly_type, observed, expected, ratio, top_contributors,
        cause, status, resolution_reason, resolution_note, assignee_id,
        resolved_by_id, resolved_at, resolved_severity, first_detected_at,
        last_detected_at)
    SELECT tenant_id, NULL, scope_type,
           CASE WHEN scope_type IN ('agent', 'epic') THEN 'proj-' || mod(num, 5)
                ELSE '' END,
           CASE scope_type WHEN 'agent' THEN 'agent-' || num
                WHEN 'epic' THEN 'EPIC-' || num WHEN 'user' THEN 'user-' || num
                ELSE 'proj-' || mod(num, 5) END,
           period_start, period_start + interval '1 day', anomaly_type,
           observed, expected,
           CASE WHEN expected > 0 THEN round(observed / expected, 6) END,
           concat('{"models": [["gpt-4o", "', round(observed * 0.6, 10),
                  '"], ["gpt-4o-mini", "', round(observed * 0.3, 10),
                  '"], ["text-embedding-3-small", "', round(observed * 0.1, 10),
                  '"]], "traces": [', trace_list, ']}')::jsonb,
           CASE WHEN anomaly_type = 'missing_data' THEN 'missing_data'
                ELSE 'trace:tr-' || i || '-' || d || '-' || k / 3 END,
           status,
           CASE WHEN status = 'resolved' THEN (ARRAY['expected', 'fixed',
               'billing_adjusted', 'false_positive', 'duplicate'])[1 + mod(k + d, 5)]
               ELSE '' END,
           '',
           CASE WHEN status = 'acknowledged' OR r_assign < 0.3 THEN operator END,
           CASE WHEN status = 'resolved' THEN operator END,
           CASE WHEN status = 'resolved'
                THEN period_start + interval '1 day' + r_assign * interval '3 days'
           END,
           CASE WHEN status = 'resolved' THEN
               CASE WHEN observed = 0 THEN expected
                    ELSE round(greatest(observed / expected, expected / observed), 6)
               END END,
           period_start + interval '26 hours', period_start + interval '26 hours'
    FROM (
        SELECT *,
               round(expected * CASE anomaly_type
                   WHEN 'high_cost' THEN (3 + 20 * r_size ^ 2)::numeric
                   WHEN 'spike_vs_baseline' THEN (2 + 10 * r_size)::numeric
                   WHEN 'suspiciously_low' THEN (0.1 * r_size)::numeric
                   ELSE 0 END, 10) AS observed,
               CASE WHEN d <= 3 THEN (CASE WHEN r_status < 0.7 THEN 'open'
                        WHEN r_status < 0.9 THEN 'acknowledged' ELSE 'resolved' END)
                    WHEN d <= 30 THEN (CASE WHEN r_status < 0.2 THEN 'open'
                        WHEN r_status < 0.35 THEN 'acknowledged' ELSE 'resolved' END)
                    ELSE (CASE WHEN r_status < 0.03 THEN 'open'
                        WHEN r_status < 0.05 THEN 'acknowledged' ELSE 'resolved' END)
               END AS status,
               concat_ws(', ', {traces}) AS trace_list
        FROM (
            SELECT b.tenant_id, b.i, b.operator, d, k,
                   %(start)s - d * interval '1 day' AS period_start,
                   (ARRAY['high_cost', 'high_cost', 'high_cost', 'suspiciously_low',
                          'spike_vs_baseline', 'spike_vs_baseline',
                          'spike_vs_baseline', 'missing_data', 'high_cost',
                          'spike_vs_baseline'])[1 + mod(k + d, 10)] AS anomaly_type,
                   (ARRAY['agent', 'agent', 'user', 'epic', 'user', 'agent',
                          'project'])[1 + mod(k + b.i, 7)] AS scope_type,
                   mod(7 * k + 13 * b.i + 3 * d, 200) AS num,
                   round((10 ^ (4 * random() - 2))::numeric, 10) AS expected,
                   random() AS r_size, random() AS r_status, random() AS r_assign
            FROM bench_tenant b
            CROSS JOIN generate_series(1, %(days)s) d
            -- d in the count: a draw per tenant and day, not one per tenant.
            CROSS JOIN LATERAL generate_series(
                0, floor(%(per_weight)s * b.weight + random() + 0 * d)::int - 1) k
            WHERE mod(b.tenant_id, %(parts)s) = %(part)s
        ) drawn
    ) priced
    ORDER BY period_start, tenant_id
    ON CONFLICT DO NOTHING
""".replace("{traces}", TRACES)

# The ledger day's scope usage on each of the cost page's days, each row
# scaled by 0.7-1.3 (half that on weekends), day by day.
SCOPE_HISTORY_SQL = """
    INSERT INTO billing_dailyscopeusage (
        day, tenant_id, scope_type, project_id, scope_id, model, trace_count,
        model_trace_count, input_tokens, output_tokens, cached_tokens, cost)
    SELECT day, tenant_id, scope_type, project_id, scope_id, model,
           round(trace_count * f), round(model_trace_count * f),
           round(input_tokens * f), round(output_tokens * f),
           round(cached_tokens * f), round(cost * f, 10)
    FROM (
        SELECT d.day::date AS day, u.tenant_id, u.scope_type, u.project_id,
               u.scope_id, u.model, u.trace_count, u.model_trace_count,
               u.input_tokens, u.output_tokens, u.cached_tokens, u.cost,
               ((0.7 + 0.6 * random())
                * CASE WHEN extract(isodow FROM d.day) >= 6 THEN 0.5 ELSE 1 END
               )::numeric AS f
        FROM generate_series(%(first)s::date, %(last)s::date, interval '1 day') d(day)
        CROSS JOIN billing_dailyscopeusage u
        WHERE u.day = %(source)s AND d.day::date <> %(source)s
          AND mod(u.tenant_id, %(parts)s) = %(part)s
        ORDER BY d.day, u.tenant_id, u.scope_type, u.project_id, u.scope_id, u.model
    ) scaled
    ON CONFLICT DO NOTHING
"""


def generate_anomalies(
    postgres_url: str, count: int, operators: dict[int, int]
) -> dict[str, Any]:
    """About ``count`` anomalies over ANOMALY_DAYS days before the ledger day."""
    tenants = sorted(operators)
    weights = sum(1 + i % 4 for i in range(1, len(tenants) + 1))
    params = {
        "start": datetime.combine(DAY, datetime.min.time(), tzinfo=UTC),
        "days": ANOMALY_DAYS,
        "per_weight": count / (ANOMALY_DAYS * weights),
        "tenant_ids": tenants,
        "operators": [operators[t] for t in tenants],
    }
    with Timer() as timer:
        inserted = _parallel_with_tenants(postgres_url, ANOMALIES_SQL, params)
    with connect(postgres_url, DATABASE, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE anomalies_costanomaly")
        by_status = dict(
            connection.execute(
                "SELECT status, count(*) FROM anomalies_costanomaly GROUP BY status"
            ).fetchall()
        )
        by_type = dict(
            connection.execute(
                "SELECT anomaly_type, count(*) FROM anomalies_costanomaly "
                "GROUP BY anomaly_type"
            ).fetchall()
        )
        (assigned,) = connection.execute(
            "SELECT count(*) FROM anomalies_costanomaly WHERE assignee_id IS NOT NULL"
        ).fetchone()
    return {
        "inserted": inserted,
        "seconds": timer.seconds,
        "by_status": by_status,
        "by_type": by_type,
        "assigned": assigned,
    }


def _parallel_with_tenants(postgres_url: str, sql: str, params: dict) -> int:
    from concurrent.futures import ThreadPoolExecutor

    def part(n: int) -> int:
        with connect(postgres_url, DATABASE) as connection:
            connection.execute("SET session_replication_role = replica")
            connection.execute("SET work_mem = '256MB'")
            connection.execute("SELECT setseed(%s)", [SEED + n / 10])
            # A temporary table is one session's: each part builds its own.
            connection.execute(TENANTS_SQL, params)
            return connection.execute(
                sql, {**params, "part": n, "parts": rollup.PARTS}
            ).rowcount

    with ThreadPoolExecutor(rollup.PARTS) as pool:
        return sum(pool.map(part, range(rollup.PARTS)))


def generate_scope_history(postgres_url: str, days: int) -> dict[str, Any]:
    """The ledger day's scope usage on each of ``days`` days up to today."""
    last = datetime.now(UTC).date()
    params = {"first": last - timedelta(days=days - 1), "last": last, "source": DAY}
    with Timer() as timer, rollup_database(DATABASE):
        inserted = rollup.in_parallel(postgres_url, SCOPE_HISTORY_SQL, params)
    with connect(postgres_url, DATABASE, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE billing_dailyscopeusage")
    return {
        "inserted": inserted,
        "seconds": timer.seconds,
        "first": str(params["first"]),
    }


# --------------------------------------------------------------------------
# The measured work, in fresh Django processes
# --------------------------------------------------------------------------


def child(postgres_url: str, step: str, config: dict[str, Any]) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, __file__, step, json.dumps(config)],
        env=django_env(postgres_url, DATABASE),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _as_role(role: str, statement_timeout_s: int = 0) -> None:
    """Every connection of this process runs as ``role`` (the tables' owner
    connects and steps down, so row-level security applies as in production),
    with a statement timeout if given."""
    from django.db.backends.signals import connection_created

    def step_down(sender, connection, **kwargs) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"SET ROLE {role}")
            if statement_timeout_s:
                cursor.execute(f"SET statement_timeout = '{statement_timeout_s}s'")

    connection_created.connect(step_down, weak=False)


def setup_worker(config: dict[str, Any]) -> dict[str, Any]:
    """As the owner: the roles, the users, their memberships and permissions."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission
    from django.urls import NoReverseMatch, reverse

    from billing.app_role import app_roles_ensure
    from billing.models import Membership, Tenant
    from billing.rollup import rollup_day
    from billing.tenancy import tenant_context

    app_roles_ensure(web_role=WEB_ROLE, worker_role=WORKER_ROLE)
    User = get_user_model()
    view = list(
        Permission.objects.filter(
            content_type__app_label__in=["billing", "anomalies"],
            codename__startswith="view_",
        )
    )
    operators = {}
    with tenant_context(all_tenants=True):
        tenants = list(Tenant.objects.order_by("pk"))
        users = User.objects.bulk_create(
            [
                User(username=f"bench-operator-{t.pk}", is_staff=True, password="!")
                for t in tenants
            ]
        )
        Membership.objects.bulk_create(
            [
                Membership(user=u, tenant=t, role=Membership.Role.OPERATOR)
                for u, t in zip(users, tenants, strict=True)
            ]
        )
        User.user_permissions.through.objects.bulk_create(
            [
                User.user_permissions.through(user_id=u.pk, permission_id=p.pk)
                for u in users
                for p in view
            ]
        )
        operators = {t.pk: u.pk for t, u in zip(tenants, users, strict=True)}
    superuser = User.objects.create(
        username="bench-admin", is_staff=True, is_superuser=True, password="!"
    )
    try:
        cost_page = reverse("admin:billing_costsummary_over_time")
    except NoReverseMatch:
        cost_page = None
    # The day's summaries, as the owner: rollup_day's ANALYZE (which the
    # detection's plans depend on) is skipped, with a warning, for a role
    # that does not own the table, such as the worker.
    day = date.fromisoformat(config["day"])
    with Timer() as timer:
        written = rollup_day(day=day)
    log(f"rollup_day: {written:,} summaries in {timer.seconds:.1f} s")
    return {
        "operators": operators,
        "superuser": superuser.pk,
        "cost_page": cost_page,
        "rollup": {"seconds": timer.seconds, "written": written},
    }


def record_worker(config: dict[str, Any]) -> dict[str, Any]:
    """As the worker role: detection with recording, then its parts."""
    _as_role(WORKER_ROLE)
    import django

    django.setup()
    from anomalies.detectors import detect_day
    from anomalies.pipeline import detect_days
    from anomalies.selectors import top_contributors, top_contributors_for
    from billing.tenancy import tenant_context

    day = date.fromisoformat(config["day"])
    result: dict[str, Any] = {}
    with Timer() as timer:
        run = detect_days([day], job_id="bench-admin")
    result["record"] = {
        "seconds": timer.seconds,
        "created": run.anomalies_created,
        "status": run.status,
    }
    log(f"detect_days: {run.anomalies_created:,} created in {timer.seconds:.1f} s")

    # The parts, for the report: the rules, and the contributors alone.
    with Timer() as timer:
        findings = detect_day(day)
    result["rules"] = {"seconds": timer.seconds, "findings": len(findings)}
    with tenant_context(all_tenants=True), Timer() as timer:
        contributors = top_contributors_for(findings, day)
    result["contributors"] = {"seconds": timer.seconds}
    log(f"top_contributors_for: {len(findings):,} findings in {timer.seconds:.1f} s")

    # The per-finding read on an even sample, extrapolated to the day.
    sample = findings[:: max(1, len(findings) // config["baseline_sample"])]
    sample = sample[: config["baseline_sample"]]
    same = True
    with tenant_context(all_tenants=True), Timer() as timer:
        for finding in sample:
            same = same and top_contributors(finding, day) == contributors[finding]
    result["per_finding"] = {
        "sample": len(sample),
        "seconds": timer.seconds,
        "same": same,
    }
    log(f"per-finding reads: {len(sample)} in {timer.seconds:.1f} s")

    with Timer() as timer:
        rerun = detect_days([day], job_id="bench-admin-rerun")
    result["rerun"] = {
        "seconds": timer.seconds,
        "created": rerun.anomalies_created,
        "updated": rerun.anomalies_updated,
    }
    return result


def _date_range_query(model_admin, request, first: date, last: date) -> str:
    """The changelist's own date range filter on period_start (whatever its
    parameters are called), else the plain lookups the admin allows."""
    changelist = model_admin.get_changelist_instance(request)
    for spec in changelist.filter_specs:
        if getattr(spec, "field_path", None) != "period_start":
            continue
        names = spec.expected_parameters()
        gte = next((n for n in names if n.endswith("gte")), None)
        lte = next((n for n in names if n.endswith(("lte", "lt"))), None)
        if gte and lte:
            until = last if lte.endswith("lte") else last + timedelta(days=1)
            return f"{gte}={first.isoformat()}&{lte}={until.isoformat()}"
    return (
        f"period_start__gte={first.isoformat()}"
        f"&period_start__lt={(last + timedelta(days=1)).isoformat()}"
    )


def _get(client, url: str) -> tuple[Any, float, list[dict]]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        began = time.perf_counter()
        response = client.get(url)
        elapsed = (time.perf_counter() - began) * 1000
    return response, elapsed, captured.captured_queries


def _measure_page(client, url: str, runs: int) -> dict[str, Any]:
    """
    The median of ``runs`` timed requests after a warm-up, with the last
    one's queries. A page far over the target gets fewer runs: one after a
    warm-up over SLOW_MS, none (the warm-up is the figure) over TOO_SLOW_MS,
    so that a pathological page costs a minute, not ten.
    """
    response, first, queries = _get(client, url)
    if first > TOO_SLOW_MS:
        runs, timings = 0, [first]
    else:
        runs = 1 if first > SLOW_MS else runs
        timings = []
    for _ in range(runs):
        response, elapsed, queries = _get(client, url)
        timings.append(elapsed)
    # The tenant context's own set_config calls are not the page's queries.
    selects = [
        q
        for q in queries
        if q["sql"].startswith("SELECT") and "set_config(" not in q["sql"][:40]
    ]
    slowest = max(selects, key=lambda q: float(q["time"]), default=None)
    return {
        "status": response.status_code,
        "median_ms": statistics.median(timings),
        "min_ms": min(timings),
        "max_ms": max(timings),
        "runs": len(timings) if runs else 0,
        "queries": len(queries),
        "slowest": slowest,
    }


def _explain(sql: str, scope: list[int]) -> str:
    """EXPLAIN ANALYZE in the page's tenant context; a plain EXPLAIN when
    running it takes longer than the statement timeout."""
    from django.db import OperationalError, connection

    from billing.tenancy import tenant_context

    for options in ("ANALYZE, BUFFERS", ""):
        try:
            with tenant_context(scope), connection.cursor() as cursor:
                cursor.execute(f"EXPLAIN ({options or 'COSTS'}) {sql}")
                plan = "\n".join(row[0] for row in cursor.fetchall())
            return plan if options else f"(EXPLAIN ANALYZE timed out)\n{plan}"
        except OperationalError:
            continue
    return "(EXPLAIN failed)"


def admin_worker(config: dict[str, Any]) -> dict[str, Any]:
    """As the web role: the pages, through the whole request stack."""
    _as_role(WEB_ROLE, config["statement_timeout"])
    import django

    django.setup()
    from django.conf import settings
    from django.contrib import admin
    from django.contrib.auth import get_user_model
    from django.test import Client, RequestFactory
    from django.urls import reverse

    from anomalies.models import CostAnomaly
    from billing.models import Tenant
    from billing.selectors import tenant_ids_for_user
    from billing.tenancy import tenant_context

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    User = get_user_model()
    tenant_id = config["tenant"]
    operator = User.objects.get(pk=config["operators"][str(tenant_id)])
    superuser = User.objects.get(pk=config["superuser"])
    with tenant_context([tenant_id]):
        scope_id = (
            CostAnomaly.objects.filter(tenant_id=tenant_id, scope_type="agent")
            .values_list("scope_id", flat=True)
            .first()
        )
    # What the middleware names for a superuser (the tenant table has no RLS).
    all_ids = list(Tenant.objects.values_list("pk", flat=True))

    changelist = reverse("admin:anomalies_costanomaly_changelist")
    request = RequestFactory().get(changelist)
    request.user, request.tenant_ids = superuser, None
    with tenant_context(all_ids):
        date_range = _date_range_query(
            admin.site._registry[CostAnomaly],
            request,
            DAY - timedelta(days=7),
            DAY - timedelta(days=1),
        )
    cases = [
        ("anomalies", "unfiltered", ""),
        ("anomalies", "status open", "status__exact=open"),
        ("anomalies", "type high_cost", "anomaly_type__exact=high_cost"),
        ("anomalies", "one tenant", f"tenant={tenant_id}"),
        ("anomalies", "a week", date_range),
        ("anomalies", f"search {scope_id}", f"q={scope_id}"),
        ("anomalies", "page 50", "p=50"),
        ("anomalies", "(assigned to me)", "assignee=mine"),
        ("anomalies", "(one per incident)", "group=incident"),
    ]
    cases = [(page, label, f"{changelist}?{query}") for page, label, query in cases]
    if config["cost_page"]:
        cost_page = config["cost_page"]
        for days in (30, 90):
            cases += [
                ("cost", f"all tenants, {days} days", f"{cost_page}?days={days}"),
                (
                    "cost",
                    f"one tenant, {days} days",
                    f"{cost_page}?tenant={tenant_id}&days={days}",
                ),
            ]

    results = []
    for who, user in (("superuser", superuser), ("operator", operator)):
        # A page that fails is reported with its status, not raised.
        client = Client(raise_request_exception=False)
        client.force_login(user)
        ids = tenant_ids_for_user(user=user)
        scope = all_ids if ids is None else ids
        for page, label, url in cases:
            figures = _measure_page(client, url, config["runs"])
            slowest = figures.pop("slowest")
            figures.update(page=page, who=who, label=label, url=url)
            if slowest:
                figures["slowest_ms"] = float(slowest["time"]) * 1000
                if figures["median_ms"] > TARGET_PAGE_MS:
                    figures["explain"] = _explain(slowest["sql"], scope)
                    figures["slowest_sql"] = slowest["sql"]
            log(
                f"{who} {page} {label}: {figures['median_ms']:.0f} ms, "
                f"{figures['queries']} queries, HTTP {figures['status']}"
            )
            results.append(figures)
    return {"pages": results}


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_record(rows: int, result: dict[str, Any]) -> bool:
    record, rules = result["record"], result["rules"]
    contributors, sample = result["contributors"], result["per_finding"]
    findings = rules["findings"]
    per_finding = sample["seconds"] / sample["sample"] if sample["sample"] else 0
    ok = record["seconds"] < TARGET_RECORD_SECONDS and record["status"] == "succeeded"
    print(
        f"\nRecording: detect_days([{DAY}]) over {rows:,} ledger rows "
        f"as the worker role (rollup_day before it, as the owner: "
        f"{result['rollup']['seconds']:.1f} s, {result['rollup']['written']:,} "
        "summaries written)"
    )
    print(
        f"  detect_days        {record['seconds']:8.2f} s  {record['created']:,} "
        f"anomalies created   target < {TARGET_RECORD_SECONDS:.0f} s "
        f"{verdict(ok)}"
    )
    print(
        f"  baseline           {BASELINE_RECORD_SECONDS:8.2f} s  "
        f"{BASELINE_RECORD_ANOMALIES:,} anomalies at 10M rows (last measurement, "
        "a ledger query per anomaly)"
    )
    print(f"  of which: rules    {rules['seconds']:8.2f} s  {findings:,} findings")
    print(
        f"  top_contributors_for {contributors['seconds']:6.2f} s  "
        f"for all {findings:,} findings (one pass over the day)"
    )
    print(
        f"  per-finding read   {per_finding:8.3f} s  a finding, on a sample of "
        f"{sample['sample']}: about {per_finding * findings:,.0f} s for the day; "
        f"same answer as the set-based read: {'yes' if sample['same'] else 'NO'}"
    )
    rerun = result["rerun"]
    print(
        f"  re-run             {rerun['seconds']:8.2f} s  {rerun['created']} created, "
        f"{rerun['updated']} updated (nothing changed: no ledger read)"
    )
    return ok and sample["same"]


def print_pages(
    pages: list[dict[str, Any]], anomalies: dict, cost: dict | None
) -> bool:
    ok = True
    print(
        f"\nAdmin pages: median of the runs after a warm-up, in process (test "
        f"Client, web role under RLS); target < {TARGET_PAGE_MS:.0f} ms each"
    )
    status = ", ".join(f"{k} {v:,}" for k, v in sorted(anomalies["by_status"].items()))
    kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(anomalies["by_type"].items()))
    print(
        f"  {anomalies['inserted']:,} anomalies over {ANOMALY_DAYS} days "
        f"({status}; {kinds}; {anomalies['assigned']:,} assigned), generated in "
        f"{anomalies['seconds']:.0f} s"
    )
    if cost:
        print(
            f"  {cost['inserted']:,} daily scope usage rows from {cost['first']} "
            f"to today for the cost page, generated in {cost['seconds']:.0f} s"
        )
    else:
        print("  cost page: not available")
    print(
        f"  {'who':<10} {'page':<9} {'case':<26} {'median':>8} {'min':>7} "
        f"{'max':>7} {'runs':>4} {'queries':>7} {'slowest':>8}"
    )
    for page in pages:
        extra = page["label"].startswith("(")
        passed = page["status"] == 200 and page["median_ms"] < TARGET_PAGE_MS
        if not extra:
            ok = ok and passed
        mark = verdict(passed) + (" (extra)" if extra else "")
        if page["status"] != 200:
            mark += f" HTTP {page['status']}"
        print(
            f"  {page['who']:<10} {page['page']:<9} {page['label'][:26]:<26} "
            f"{page['median_ms']:6.0f} ms {page['min_ms']:5.0f} ms "
            f"{page['max_ms']:5.0f} ms {page['runs']:>4} {page['queries']:>7} "
            f"{page.get('slowest_ms', 0):6.0f} ms  {mark}"
        )
    for page in pages:
        if "explain" in page:
            print(
                f"\n  {page['who']} {page['page']} {page['label']} "
                f"({page['median_ms']:.0f} ms): slowest query "
                f"({page['slowest_ms']:.0f} ms)\n    {page['slowest_sql']}\n"
            )
            print("\n".join(f"    {line}" for line in page["explain"].splitlines()))
    return ok


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/admin.py",
        description="Benchmark anomaly recording and the admin's pages.",
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=10_000_000,
        help="ledger rows of the day (default: %(default)s)",
    )
    parser.add_argument(
        "--anomalies",
        type=int,
        default=1_000_000,
        help="cost anomalies over 365 days (default: %(default)s)",
    )
    parser.add_argument(
        "--runs", type=int, default=5, help="timed runs a page (default: %(default)s)"
    )
    parser.add_argument(
        "--baseline-sample",
        type=int,
        default=20,
        help="findings read one at a time, the old way (default: %(default)s)",
    )
    parser.add_argument(
        "--cost-days",
        type=int,
        default=90,
        help="days of scope usage for the cost page (default: %(default)s)",
    )
    parser.add_argument(
        "--statement-timeout",
        type=int,
        default=60,
        help="seconds a page's query may take; 0: none (default: %(default)s)",
    )
    parser.add_argument(
        "--regenerate",
        action="store_true",
        help=f"generate the ledger day anew in {LEDGER_DATABASE} even if one exists",
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help=f"server to create {DATABASE} on (default: %(default)s)",
    )
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    url = args.postgres_url
    began = time.monotonic()
    source, how = ledger_source(url, args.rows, args.regenerate)
    log(f"ledger day of {args.rows:,} rows: {source}, {how}")
    with Timer() as copy:
        prepare(url, source)
    log(f"{DATABASE}: copied from {source} and migrated in {copy.seconds:.0f} s")
    setup = child(url, "_setup", {"day": DAY.isoformat()})
    log("recording the day's anomalies")
    record = child(
        url,
        "_record",
        {"day": DAY.isoformat(), "baseline_sample": args.baseline_sample},
    )
    log(f"generating ~{args.anomalies:,} anomalies")
    operators = {int(t): u for t, u in setup["operators"].items()}
    anomalies = generate_anomalies(url, args.anomalies, operators)
    cost = None
    if setup["cost_page"]:
        log(f"generating {args.cost_days} days of scope usage for the cost page")
        cost = generate_scope_history(url, args.cost_days)
    # The operator's tenant: one of the largest (weight 4: i = 3, 7, ...).
    tenant = sorted(operators)[2]
    pages = child(
        url,
        "_admin",
        {
            "operators": setup["operators"],
            "superuser": setup["superuser"],
            "tenant": tenant,
            "cost_page": setup["cost_page"],
            "runs": args.runs,
            "statement_timeout": args.statement_timeout,
        },
    )["pages"]

    with rollup_database(DATABASE):
        server = rollup.server_settings(url)
    print(
        f"Admin benchmark: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Postgres "
        f"{server['server_version']} (shared_buffers {server['shared_buffers']}, "
        f"work_mem {server['work_mem']}, max_parallel_workers_per_gather "
        f"{server['max_parallel_workers_per_gather']}), {os.cpu_count()} CPUs"
    )
    print(
        f"Ledger day {DAY} of {args.rows:,} rows from {source} ({how}), "
        f"copied to {DATABASE} in {copy.seconds:.0f} s"
    )
    ok = print_record(args.rows, {**record, "rollup": setup["rollup"]})
    ok = print_pages(pages, anomalies, cost) and ok
    print(f"\nTotal wall time {time.monotonic() - began:.0f} s")
    return 0 if ok else 1


WORKERS = {"_setup": setup_worker, "_record": record_worker, "_admin": admin_worker}

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in WORKERS:
        result = WORKERS[sys.argv[1]](json.loads(sys.argv[2]))
        print(json.dumps(result, default=str), flush=True)
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
