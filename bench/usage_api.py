"""
Benchmark of the usage REST endpoint ``GET /api/v1/usage?period=YYYY-MM``:
its latency cached and cold, and its single-flight under a burst.

    .venv/bin/python bench/usage_api.py
    .venv/bin/python bench/usage_api.py --traces-per-day 1000 --cached 300 \\
        --cold 20 --rounds 2        # a quick check

One process, against a throw-away Postgres database ``bench_usage`` (dropped
and recreated, dropped again at the end unless ``--keep``) and Redis db 12
(flushed before and after): the app's settings with ``REDIS_URL`` pointing
there, so the usage cache is Django's Redis cache as in production, and
``CONN_MAX_AGE=0``, the settings' default.

The data: one tenant and one month (``2026-11``) of ledger rows, written
set-based (``INSERT ... SELECT FROM generate_series``, a statement a day)
into ``billing_usagerecord`` so that the ledger's own triggers fill
``billing_dailyscopeusage``, which the endpoint's one aggregate query reads.
10 projects, 50 agents (5 a project), 50 epics, 300 users, 8 models (7 chat
models and an embedding model; a trace uses 1-3 of them); users and agents
picked with skew, 5% of traces without a user, 10% without an epic. Then a
viewer token (``api_token_create``).

The requests run as the application's web role (``bench_usage_web``, made
by ``app_roles_ensure``; every connection is opened by the owner and steps
down with ``SET ROLE``), so the middleware's token lookup and the query run
under row-level security as in production. A ``connection_created``
receiver also installs an ``execute_wrapper`` on every connection, of every
thread, that counts and times the statements naming
``billing_dailyscopeusage``: the aggregate query's real executions.

Measured, each after a warm-up, with every response's status and X-Cache
checked:

- cached (cache warm): in process through ``django.test.Client`` (the whole
  middleware stack, token auth, RLS and view; no socket), with the test
  client's persistent database connection and with a new connection a
  request (as ``CONN_MAX_AGE=0`` does); then over HTTP (one keep-alive
  ``http.client`` connection) to Django's ``ThreadedWSGIServer``, the server
  of ``LiveServerThread``, in a thread of this process (a thread a client
  connection; TCP_NODELAY set), at ``CONN_MAX_AGE=0`` (a new database
  connection a request) and at 60 (one a client connection). The variants
  with a new connection a request run a quarter of ``--cached``;
- the cached path's parts, each timed alone: a Postgres connection,
  ``tenant_context`` alone, the token check remembered (a Redis GET) and
  from the database, and ``usage_summary_cached`` answering a hit;
- cold (the month's cache version bumped with ``usage_cache_invalidate``
  before each request, as a ledger write's commit does), in process and
  over HTTP: this is also the baseline without a cache. Next to it the
  aggregate query's own time (from the execute wrapper),
  ``usage_summary_json`` called directly (query, rows to dicts, JSON) and
  the query's EXPLAIN ANALYZE (timing off) as the web role;
- the burst, ``--rounds`` times: the cache emptied, 100 threads each open
  their own HTTP connection to the threaded server (so each request runs in
  a server thread of its own, with a database connection of its own), wait
  on a barrier and send the same request at once. Per round: executions of
  the aggregate query, statuses (the exceptions behind any 500, from the
  ``django.request`` log), whether the bodies are byte-identical, the
  X-Cache values, p50 and slowest response, and Postgres's connections in
  use beforehand (a burst needs 100 of its ``max_connections``).

Targets, PASS/FAIL, exit status 1 when one fails: cached p50 under 2 ms
(judged for each of the four cached variants), exactly one aggregate query
for each burst of 100 concurrent cold requests, and every burst response a
200 with the same bytes. With ``--profile``, or when a cached target fails,
a cProfile of 500 cached requests through the test client follows.

Progress goes to stderr, figures to stdout. About 2 minutes on two cores.
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import io
import logging
import os
import pstats
import statistics
import sys
import threading
import time
from collections import Counter
from datetime import date
from typing import Any

from support import (
    DEFAULT_POSTGRES_URL,
    MODEL_BREAKDOWN,
    Timer,
    django_env,
    log,
    migrate,
    model_cost,
    model_prices,
    model_tokens,
    recreate_database,
)

DATABASE = "bench_usage"
REDIS_URL = "redis://127.0.0.1:6379/12"
PERIOD = "2026-11"
MONTH_START, MONTH_DAYS = date(2026, 11, 1), 30
# The application's roles under names of this benchmark's own (roles belong
# to the whole server, not to one database).
WEB_ROLE = "bench_usage_web"
WORKER_ROLE = "bench_usage_worker"
# The statements counted: the aggregate query's table.
TABLE = "billing_dailyscopeusage"

TARGET_CACHED_P50_MS = 2.0
TARGET_BURST_QUERIES = 1
BURST = 100
# Cached requests profiled (--profile, or when a cached target fails).
PROFILED = 500

# Shape of the tenant's month.
PROJECTS, AGENTS_PER_PROJECT, EPICS_PER_PROJECT, USERS = 10, 5, 5, 300
AGENTS = PROJECTS * AGENTS_PER_PROJECT
NO_USER, NO_EPIC = 0.05, 0.10
# Seven chat models (an agent's main one first), then an embedding model.
MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "o3-mini",
    "claude-3-5-sonnet-20241022",
    "claude-3-5-haiku-20241022",
    "gemini-1.5-pro-002",
    "gpt-4.1",
    "text-embedding-3-small",
)
CHAT_MODELS = len(MODELS) - 1


# --------------------------------------------------------------------------
# Database and data
# --------------------------------------------------------------------------


# One day of a tenant's traces, pending (billable, not yet reported), built
# inside out: the draws (a subquery with volatile functions in its target
# list is not flattened, so each is drawn once), the scopes and models, the
# tokens, the prices. An agent belongs to one project; a trace's epic is one
# of its project's; agents and users are picked with skew.
RECORDS_SQL = f"""
    INSERT INTO billing_usagerecord (
        tenant_id, trace_id, trace_timestamp, last_activity_at, project_id,
        agent_id, epic_id, user_id, input_tokens, output_tokens, cached_tokens,
        cost, model_breakdown, observations, running, price_source,
        content_hash, status, skip_reason, created_at, updated_at)
    SELECT %(tenant)s, trace_id, at, at + interval '40 seconds',
           'proj-' || p, 'agent-' || a,
           CASE WHEN rno_epic < {NO_EPIC} THEN ''
                ELSE 'EPIC-' || ({EPICS_PER_PROJECT} * p + e) END,
           CASE WHEN rno_user < {NO_USER} THEN '' ELSE 'user-' || u END,
           in1 + in2 + in3, out1 + out2 + out3, ca1 + ca2 + ca3, c1 + c2 + c3,
           {MODEL_BREAKDOWN}, '{{}}', '{{}}', 'price_table', md5(trace_id),
           'pending', '', at + interval '2 minutes', at + interval '2 minutes'
    FROM (
        SELECT *, {model_cost(1)}, {model_cost(2)}, {model_cost(3)}
        FROM (
            SELECT *, {model_tokens(1)}, {model_tokens(2)}, {model_tokens(3)}
            FROM (
                SELECT *, mod(a, {PROJECTS}) AS p,
                       -- Some agents run far larger prompts than others.
                       (0.3 + mod(7 * a, 11) / 4.0) AS mult,
                       1 + (rm < 0.45)::int + (rm < 0.15)::int AS nm,
                       1 + mod(a, {CHAT_MODELS}) AS m1,
                       1 + mod(a + 1 + mod(u, {CHAT_MODELS - 1}), {CHAT_MODELS})
                           AS m2,
                       {len(MODELS)} AS m3
                FROM (
                    SELECT n, %(prefix)s || lpad(n::text, 6, '0') AS trace_id,
                           %(start)s + (n - 1 + random()) * interval '1 day'
                               / %(rows)s AS at,
                           floor({AGENTS} * random() ^ 1.3)::int AS a,
                           floor({USERS} * random() ^ 1.5)::int AS u,
                           floor({EPICS_PER_PROJECT} * random() ^ 1.2)::int AS e,
                           random() AS rno_user, random() AS rno_epic,
                           random() AS rm
                    FROM generate_series(1, %(rows)s) n
                ) drawn
            ) scoped
        ) tokens
    ) priced
"""


def setup(traces_per_day: int) -> dict[str, Any]:
    """As the tables' owner: the roles, the tenant, its month, its token."""
    from datetime import UTC, datetime, timedelta

    from django.db import connection

    from billing.app_role import app_roles_ensure
    from billing.audit import Actor
    from billing.models import Tenant
    from billing.services import api_token_create
    from billing.tenancy import tenant_context

    app_roles_ensure(web_role=WEB_ROLE, worker_role=WORKER_ROLE)
    tenant = Tenant.objects.create(name="Bench usage tenant", slug="bench-usage")
    with tenant_context([tenant.pk]):
        raw = api_token_create(
            tenant=tenant, name="bench", role="viewer", actor=Actor.system()
        ).raw
    prices = model_prices(MODELS)
    start = datetime.combine(MONTH_START, datetime.min.time(), tzinfo=UTC)
    with Timer() as timer:
        for day in range(MONTH_DAYS):
            with tenant_context([tenant.pk]), connection.cursor() as cursor:
                cursor.execute(
                    RECORDS_SQL,
                    {
                        **prices,
                        "tenant": tenant.pk,
                        "prefix": f"tr-{day:02d}-",
                        "start": start + timedelta(days=day),
                        "rows": traces_per_day,
                    },
                )
    log(
        f"seeded {traces_per_day * MONTH_DAYS:,} ledger rows in {timer.seconds:.1f} s "
        "(the triggers filled the daily scope usage)"
    )
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE billing_usagerecord, {TABLE}")
        cursor.execute(
            f"SELECT count(*), count(DISTINCT (scope_type, project_id, scope_id)), "
            f"count(DISTINCT model) FROM {TABLE}"
        )
        rows, scopes, models = cursor.fetchone()
        cursor.execute(
            f"SELECT scope_type, count(*) FROM {TABLE} GROUP BY 1 ORDER BY 1"
        )
        by_type = dict(cursor.fetchall())
    return {
        "tenant": tenant.pk,
        "token": raw,
        "ledger_rows": traces_per_day * MONTH_DAYS,
        "seed_seconds": timer.seconds,
        "usage_rows": rows,
        "usage_by_type": by_type,
        "scopes": scopes,
        "models": models,
    }


# --------------------------------------------------------------------------
# Counting the aggregate query, and running as the web role
# --------------------------------------------------------------------------


class QueryCounter:
    """Executions (and their times) of statements naming TABLE, from any
    thread's connection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: list[float] = []

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.seconds)

    def reset(self) -> None:
        with self._lock:
            self.seconds = []

    def __call__(self, execute, sql, params, many, context):
        if TABLE not in sql:
            return execute(sql, params, many, context)
        began = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            elapsed = time.perf_counter() - began
            with self._lock:
                self.seconds.append(elapsed)


COUNTER = QueryCounter()


def as_web_role() -> None:
    """Every connection opened from now on, in any thread, steps down to the
    web role and counts the aggregate query."""
    from django.db import connections
    from django.db.backends.signals import connection_created

    def on_connect(sender, connection, **kwargs) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"SET ROLE {WEB_ROLE}")
        # A wrapper reconnects with the same wrapper object: install once.
        if COUNTER not in connection.execute_wrappers:
            connection.execute_wrappers.append(COUNTER)

    connections.close_all()
    connection_created.connect(on_connect, weak=False)


# --------------------------------------------------------------------------
# Requests: in process and over HTTP
# --------------------------------------------------------------------------


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)

    def at(q: float) -> float:
        return ms[min(len(ms) - 1, round(q * (len(ms) - 1)))]

    return {
        "n": len(ms),
        "p50": statistics.median(ms),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": ms[-1],
    }


class InProcess:
    """``django.test.Client``: the whole middleware stack, no socket."""

    def __init__(self, url: str, token: str) -> None:
        from django.test import Client

        self.url, self.client = url, Client()
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self) -> tuple[int, str, bytes]:
        response = self.client.get(self.url, headers=self.headers)
        return response.status_code, response.get("X-Cache", ""), response.content


class OverHttp:
    """One keep-alive HTTP connection to the threaded server."""

    def __init__(self, port: int, url: str, token: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}", "Host": "127.0.0.1"}
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.connection.connect()

    def get(self) -> tuple[int, str, bytes]:
        self.connection.request("GET", self.url, headers=self.headers)
        response = self.connection.getresponse()
        body = response.read()
        return response.status, response.getheader("X-Cache", ""), body

    def close(self) -> None:
        self.connection.close()


def start_server():
    """Django's ThreadedWSGIServer (LiveServerThread's) in a daemon thread:
    a thread per client connection, its database connection closed after
    each request (at CONN_MAX_AGE=0) and when the client connection ends."""
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    class Server(ThreadedWSGIServer):
        # The burst connects 100 clients before any request is sent.
        request_queue_size = 4 * BURST

    class Quiet(WSGIRequestHandler):
        # TCP_NODELAY, as production servers set it: without it the response
        # body waits for the client's delayed ACK of the headers (40 ms).
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            pass

    server = Server(("127.0.0.1", 0), Quiet, allow_reuse_address=False)
    server.set_app(WSGIHandler())
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    return server


def set_conn_max_age(seconds: int) -> None:
    """Every new connection's CONN_MAX_AGE (they share this settings dict)."""
    from django.db import connections

    connections.close_all()
    connections.settings["default"]["CONN_MAX_AGE"] = seconds


def bump_version(tenant_id: int) -> None:
    """What a ledger write's commit does: the month's cached summary is out
    of date."""
    from billing.usage_cache import usage_cache_invalidate

    usage_cache_invalidate(tenant_id=tenant_id, days=[MONTH_START])


def measure(
    get, runs: int, *, expect: str, before=None, between=None
) -> dict[str, Any]:
    """``runs`` timed requests after a warm-up; ``before`` runs untimed
    before each (the cache invalidated), ``between`` untimed after each."""
    for _ in range(max(3, runs // 20)):
        if before:
            before()
        get()
        if between:
            between()
    seconds, statuses, cache = [], Counter(), Counter()
    COUNTER.reset()
    for _ in range(runs):
        if before:
            before()
        began = time.perf_counter()
        status, x_cache, _body = get()
        seconds.append(time.perf_counter() - began)
        statuses[status] += 1
        cache[x_cache] += 1
        if between:
            between()
    result = percentiles(seconds)
    result.update(
        statuses=dict(statuses),
        x_cache=dict(cache),
        queries=COUNTER.count,
        query_seconds=list(COUNTER.seconds),
        ok=statuses == Counter({200: runs}) and cache == Counter({expect: runs}),
    )
    return result


def warm(get) -> None:
    """A fresh entry (the cache serves one as a hit for FRESH_FOR seconds)."""
    from django.core.cache import cache

    cache.clear()
    status, x_cache, _ = get()
    assert status == 200 and x_cache == "miss", (status, x_cache)


class ServerErrors(logging.Handler):
    """The exceptions behind the server's 500s (``django.request``), kept
    instead of printed."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            message = str(record.exc_info[1]).strip().splitlines()[-1]
        else:
            message = record.getMessage()
        self.seen.append(message[-120:])


def connection_headroom(postgres_url: str) -> tuple[int, int]:
    """Postgres's max_connections, and the client connections open now."""
    import psycopg

    with psycopg.connect(f"{postgres_url}/postgres") as connection:
        maximum = int(connection.execute("SHOW max_connections").fetchone()[0])
        used = connection.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend'"
        ).fetchone()[0]
    return maximum, used - 1  # not this one


def burst(port: int, url: str, token: str, postgres_url: str) -> dict[str, Any]:
    """BURST threads, each its own HTTP connection (so its own server thread
    and database connection), send the same request at once into an empty
    cache."""
    from django.core.cache import cache
    from django.db import connections

    connections.close_all()  # leave Postgres's connection slots to the server
    cache.clear()
    maximum, used = connection_headroom(postgres_url)
    COUNTER.reset()
    barrier = threading.Barrier(BURST)
    results: list[Any] = [None] * BURST

    def client(i: int) -> None:
        try:
            connection = OverHttp(port, url, token)
        except OSError as exc:
            barrier.wait()
            results[i] = ("connect", repr(exc), b"", 0.0)
            return
        barrier.wait()
        began = time.perf_counter()
        try:
            status, x_cache, body = connection.get()
        except (OSError, http.client.HTTPException) as exc:
            status, x_cache, body = "error", repr(exc), b""
        results[i] = (status, x_cache, body, time.perf_counter() - began)
        connection.close()

    errors = ServerErrors()
    logger = logging.getLogger("django.request")
    logger.addHandler(errors)
    logger.propagate = False
    threads = [threading.Thread(target=client, args=(i,)) for i in range(BURST)]
    try:
        with Timer() as timer:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        logger.removeHandler(errors)
        logger.propagate = True
    statuses = Counter(r[0] for r in results)
    bodies = Counter(r[2] for r in results if r[0] == 200)
    return {
        "queries": COUNTER.count,
        "statuses": dict(statuses),
        "x_cache": dict(Counter(r[1] for r in results if r[0] == 200)),
        "distinct_bodies": len(bodies),
        "body_bytes": len(next(iter(bodies))) if bodies else 0,
        "slowest_ms": max(r[3] for r in results) * 1000,
        "p50_ms": statistics.median(r[3] for r in results) * 1000,
        "seconds": timer.seconds,
        "errors": dict(Counter(errors.seen)),
        "pg_max_connections": maximum,
        "pg_connections_before": used,
        "queries_ok": COUNTER.count == TARGET_BURST_QUERIES,
        "responses_ok": statuses == Counter({200: BURST}) and len(bodies) == 1,
    }


def parts(tenant_id: int, token: str, runs: int) -> dict[str, dict[str, float]]:
    """The cached path's parts, each timed on its own in this thread (as the
    web role, the connection open unless said): where a hit's time goes."""
    from django.db import connection, connections

    from billing.api_tokens import _lookup, api_token_authenticate, token_digest
    from billing.tenancy import tenant_context
    from billing.usage_cache import usage_summary_cached
    from billing.usage_summary import usage_period

    period = usage_period(period=PERIOD, start=None, end=None)

    def reconnect() -> None:
        connections.close_all()
        connection.ensure_connection()

    def scope() -> None:
        with tenant_context([tenant_id]):
            pass

    def token_remembered() -> None:
        assert api_token_authenticate(raw=token) is not None

    def token_from_database() -> None:
        with tenant_context([tenant_id]):
            assert _lookup(token_digest(token)) is not None

    def hit() -> None:
        assert usage_summary_cached(tenant_id=tenant_id, period=period).status == "hit"

    timed = {
        "Postgres connect (+ the bench's SET ROLE)": (reconnect, max(20, runs // 10)),
        "tenant_context alone (BEGIN, set_config, COMMIT)": (scope, runs),
        "the token, remembered (a Redis GET)": (token_remembered, runs),
        "the token from the database (tenant_context + lookup)": (
            token_from_database,
            runs,
        ),
        "usage_summary_cached, a hit (Redis MGET, unpickle)": (hit, runs),
    }
    result = {}
    for label, (call, n) in timed.items():
        for _ in range(10):
            call()
        seconds = []
        for _ in range(n):
            began = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - began)
        result[label] = percentiles(seconds)
    return result


def profile(get, runs: int) -> str:
    """cProfile of ``runs`` cached requests, the top functions by internal
    time and by cumulative time."""
    for _ in range(50):
        get()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        get()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    return out.getvalue()


def direct_summary(tenant_id: int, runs: int) -> dict[str, Any]:
    """``usage_summary_json`` called directly, under the tenant's RLS scope:
    the whole uncached computation without the request around it."""
    from billing.tenancy import tenant_context
    from billing.usage_summary import usage_period, usage_summary_json

    period = usage_period(period=PERIOD, start=None, end=None)
    seconds = []
    for i in range(runs + 2):
        with tenant_context([tenant_id]):
            began = time.perf_counter()
            body = usage_summary_json(tenant_id=tenant_id, period=period)
            if i >= 2:
                seconds.append(time.perf_counter() - began)
    return {**percentiles(seconds), "body_bytes": len(body)}


def explain(tenant_id: int) -> str:
    """EXPLAIN ANALYZE (timing off) of the aggregate query, as the web role
    under RLS."""
    from django.db import connection

    from billing.tenancy import tenant_context
    from billing.usage_summary import SUMMARY_SQL

    with tenant_context([tenant_id]), connection.cursor() as cursor:
        cursor.execute(
            f"EXPLAIN (ANALYZE, TIMING OFF) {SUMMARY_SQL}",
            {
                "tenant": tenant_id,
                "start": MONTH_START,
                "end": date(2026, 11, MONTH_DAYS),
            },
        )
        return "\n".join(row[0] for row in cursor.fetchall())


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def row(label: str, figures: dict[str, Any]) -> str:
    line = (
        f"  {label:<50} p50 {figures['p50']:7.2f} ms  p90 {figures['p90']:7.2f}  "
        f"p99 {figures['p99']:7.2f}  max {figures['max']:7.2f}  n={figures['n']}"
    )
    if "x_cache" in figures:
        line += f"  {figures['x_cache']}"
        if figures["statuses"] != {200: figures["n"]}:
            line += f"  statuses {figures['statuses']}"
    return line


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Set up, measure; everything the report prints."""
    from django.db import connections

    data = setup(args.traces_per_day)
    as_web_role()
    tenant, token = data["tenant"], data["token"]
    url = f"/api/v1/usage?period={PERIOD}"
    out: dict[str, Any] = {"data": data, "url": url}

    log("the aggregate query alone, and usage_summary_json")
    out["direct"] = direct_summary(tenant, max(10, args.cold // 5))
    out["plan"] = explain(tenant)

    server = start_server()
    port = server.server_address[1]
    local = InProcess(url, token)
    few = max(50, args.cached // 4)
    results: dict[str, dict[str, Any]] = {}

    def reconnect() -> None:
        connections.close_all()

    log("cached, in process")
    set_conn_max_age(0)
    warm(local.get)
    results["inproc"] = measure(local.get, args.cached, expect="hit")
    warm(local.get)
    results["inproc_new"] = measure(local.get, few, expect="hit", between=reconnect)
    log("cached, over HTTP")
    for max_age, runs in ((0, few), (60, args.cached)):
        set_conn_max_age(max_age)
        remote = OverHttp(port, url, token)
        warm(remote.get)
        results[f"http_{max_age}"] = measure(remote.get, runs, expect="hit")
        remote.close()
    set_conn_max_age(0)
    log("the cached path's parts")
    warm(local.get)
    out["parts"] = parts(tenant, token, args.cached)

    log("cold, in process and over HTTP")

    def invalidate() -> None:
        bump_version(tenant)

    results["cold_inproc"] = measure(
        local.get, args.cold, expect="miss", before=invalidate
    )
    remote = OverHttp(port, url, token)
    results["cold_http"] = measure(
        remote.get, args.cold, expect="miss", before=invalidate
    )
    remote.close()
    out["results"] = results

    log(f"{args.rounds} bursts of {BURST} concurrent cold requests")
    out["bursts"] = [
        burst(port, url, token, args.postgres_url) for _ in range(args.rounds)
    ]
    server.shutdown()
    server.server_close()

    out["cached"] = {
        "in process, persistent DB connection": results["inproc"],
        "in process, new DB connection a request": results["inproc_new"],
        "HTTP, CONN_MAX_AGE=0 (the default)": results["http_0"],
        "HTTP, CONN_MAX_AGE=60": results["http_60"],
    }
    out["cached_ok"] = {
        label: figures["p50"] < TARGET_CACHED_P50_MS and figures["ok"]
        for label, figures in out["cached"].items()
    }
    out["profile"] = None
    if args.profile or not all(out["cached_ok"].values()):
        log("profiling the cached path through the test client")
        set_conn_max_age(0)
        warm(local.get)
        out["profile"] = profile(local.get, PROFILED)
    return out


def report(args: argparse.Namespace, out: dict[str, Any]) -> bool:
    data, results, direct = out["data"], out["results"], out["direct"]
    print(f"Usage API benchmark: GET {out['url']}, one tenant, one month")
    print()
    print("Data")
    print(
        f"  ledger rows {data['ledger_rows']:,} ({args.traces_per_day:,} traces a "
        f"day for {MONTH_DAYS} days), seeded in {data['seed_seconds']:.1f} s "
        "through the ledger's triggers"
    )
    by_type = ", ".join(f"{k} {v:,}" for k, v in data["usage_by_type"].items())
    print(f"  billing_dailyscopeusage rows {data['usage_rows']:,} ({by_type})")
    print(
        f"  scopes {data['scopes']:,}, models {data['models']}, "
        f"response body {direct['body_bytes']:,} bytes"
    )
    print()
    print("Baseline: no cache (the cold path, the month's version bumped first)")
    cold = (
        results["cold_inproc"]["query_seconds"] + results["cold_http"]["query_seconds"]
    )
    print(row("aggregate query alone (execute wrapper)", percentiles(cold)))
    print(row("usage_summary_json() direct (query+dicts+JSON)", direct))
    print(row("cold request, in process (test Client)", results["cold_inproc"]))
    print(row("cold request, HTTP (threaded server)", results["cold_http"]))
    per_request = [
        results[k]["queries"] / results[k]["n"] for k in ("cold_inproc", "cold_http")
    ]
    print(
        "  aggregate queries a cold request (in process, HTTP): "
        + ", ".join(f"{q:g}" for q in per_request)
    )
    execution = [line.strip() for line in out["plan"].splitlines() if "Time:" in line]
    print(f"  EXPLAIN ANALYZE as the web role under RLS: {'; '.join(execution)}")
    print()
    print("Cached (cache warm, X-Cache: hit)")
    for label, figures in out["cached"].items():
        print(row(label, figures))
    queries = sum(results[k]["queries"] for k in ("inproc", "inproc_new", "http_0"))
    queries += results["http_60"]["queries"]
    print(f"  aggregate queries during the cached runs: {queries}")
    cold_p50, hit_p50 = results["cold_http"]["p50"], results["http_0"]["p50"]
    print(
        f"  HTTP at the default settings: cold {cold_p50:.1f} ms -> cached "
        f"{hit_p50:.2f} ms at p50 ({cold_p50 / hit_p50:.0f}x)"
    )
    print()
    print("Cached path by part (each timed alone, in process, p50)")
    for label, figures in out["parts"].items():
        print(row(label, figures))
    print()
    print(f"Bursts of {BURST} concurrent cold requests (HTTP, empty cache)")
    for i, b in enumerate(out["bursts"], 1):
        print(
            f"  round {i}: aggregate queries {b['queries']}, statuses "
            f"{b['statuses']}, distinct bodies {b['distinct_bodies']} "
            f"({b['body_bytes']:,} bytes), X-Cache of the 200s {b['x_cache']}, "
            f"p50 {b['p50_ms']:.0f} ms, slowest {b['slowest_ms']:.0f} ms; "
            f"Postgres: {b['pg_connections_before']} of "
            f"{b['pg_max_connections']} connections in use before"
        )
        for error, count in b["errors"].items():
            print(f"    {count} x 500: {error}")
    print()
    print("Targets")
    for label, ok in out["cached_ok"].items():
        p50 = out["cached"][label]["p50"]
        print(
            f"  cached p50 < {TARGET_CACHED_P50_MS:g} ms, {label}: "
            f"{p50:.2f} ms  {verdict(ok)}"
        )
    for i, b in enumerate(out["bursts"], 1):
        print(
            f"  burst {i}: exactly {TARGET_BURST_QUERIES} aggregate query for "
            f"{BURST} concurrent cold requests: {b['queries']}  "
            f"{verdict(b['queries_ok'])}"
        )
        print(
            f"  burst {i}: all {BURST} answered 200 with identical bodies: "
            f"{b['statuses'].get(200, 0)} x 200, {b['distinct_bodies']} distinct "
            f"bodies  {verdict(b['responses_ok'])}"
        )
    if out["profile"]:
        print()
        print(
            f"Profile: {PROFILED} cached requests through the test client "
            "(persistent connection; cProfile roughly triples the time)"
        )
        print(out["profile"])
    return all(out["cached_ok"].values()) and all(
        b["queries_ok"] and b["responses_ok"] for b in out["bursts"]
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--traces-per-day", type=int, default=3000)
    parser.add_argument(
        "--cached",
        type=int,
        default=1000,
        help="timed cached requests (a quarter with a new connection each)",
    )
    parser.add_argument("--cold", type=int, default=100, help="timed cold requests")
    parser.add_argument("--rounds", type=int, default=5, help="bursts of 100")
    parser.add_argument("--profile", action="store_true", help="always profile")
    parser.add_argument("--keep", action="store_true", help="keep bench_usage")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    args = parser.parse_args(argv)

    import psycopg
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    log(f"creating and migrating {DATABASE}")
    recreate_database(args.postgres_url, DATABASE)
    migrate(args.postgres_url, DATABASE)
    os.environ.update(django_env(args.postgres_url, DATABASE))
    os.environ.update(
        REDIS_URL=REDIS_URL,
        CONN_MAX_AGE="0",
        ALLOWED_HOSTS="127.0.0.1,localhost,testserver",
    )
    import django

    django.setup()
    from django.db import connections

    try:
        out = run(args)
    finally:
        connections.close_all()
        redis.Redis.from_url(REDIS_URL).flushdb()
        if not args.keep:
            with psycopg.connect(
                f"{args.postgres_url}/postgres", autocommit=True
            ) as connection:
                connection.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    return 0 if report(args, out) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
