"""
Benchmark of the Langfuse -> ledger -> Stripe sync against the emulators.

    .venv/bin/python bench/sync.py [--traces 10000 100000] [--baseline-sample 100]
                                   [--rate-limit 100]

For each size it generates a seeded scenario of one tenant with that many
traces, serves it from the Langfuse and Stripe emulators (Langfuse limited to
``--rate-limit`` requests per minute per key) and runs the app's
``sync_tenant`` on it, then prints per size: Langfuse and Stripe calls per
1000 traces, 429s, traces billed per second, the peak RSS of the process that
ran the sync, and whether Stripe's total equals the ledger.

The same figures are printed for a seed-style BASELINE implemented here (not
in the app): one ``GET /api/public/v2/observations?traceId=...`` per trace
through the real ``langfuse.api.LangfuseAPI`` client and one Stripe meter
event per trace through the real ``stripe`` client, sequentially, with a
fixed delay before every Langfuse call (600 ms at 100/min). Needing a call per
trace, it runs on a small sample of the first scenario's traces.

Processes, so that the measured RSS is only the sync's:

- the emulators run in a child process (``bench/sync.py _emulators ...``,
  which wraps ``billing.emulators.__main__.start_emulators``), one per run;
  it holds the scenario and answers ``stats`` on its stdin with its request
  counters;
- each sync (and the baseline) runs in a fresh Django child process
  (``_app`` / ``_baseline``) whose peak RSS (``ru_maxrss``) is reported;
- the tenant row is created by a separate short-lived child (``_setup``);
- this parent process creates the databases, the Stripe customer and meter,
  checks the Stripe totals over HTTP, and prints the table.

Each app run gets a clean Postgres database ``bench_billing``, copied from
``bench_billing_template``, which is migrated once per benchmark invocation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal
from functools import partial
from typing import Any

from support import DEFAULT_POSTGRES_URL, ROOT, log, recreate_database
from support import django_env as app_env

from billing.emulators.scenario import generate_scenario
from billing.pricing import price_usage
from billing.progress import Progress

SEED = 42
DAYS = 14  # of history; Stripe accepts meter events up to 35 days old
STRIPE_KEY = "sk_test_bench"
METER_EVENT = "llm_usage"
DATABASE = "bench_billing"
TEMPLATE_DATABASE = "bench_billing_template"

# Targets from the issue.
TARGET_LANGFUSE_PER_1000 = 5
TARGET_STRIPE_PER_1000 = 10
TARGET_PEAK_RSS_MB = 150
# "Not growing with the number of traces": the largest run's peak RSS may
# exceed the smallest run's by at most this fraction (allocator noise).
TARGET_RSS_GROWTH = 0.10

PROGRESS_SECONDS = 10.0
RSS_SAMPLE_SECONDS = 0.2
MB = 1024 * 1024
MICRO = Decimal(1_000_000)


def floor_micro(amount: Decimal) -> int:
    """USD -> whole micro-USD, rounded down, as the meter is billed."""
    return int((amount * MICRO).to_integral_value(rounding=ROUND_FLOOR))


# --------------------------------------------------------------------------
# Memory of the current process
# --------------------------------------------------------------------------


def peak_rss_bytes() -> int:
    """The process's peak RSS so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """Samples the current RSS on a thread, to see it during a run."""

    def __init__(self, interval: float = RSS_SAMPLE_SECONDS) -> None:
        self.interval = interval
        self.peak = current_rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, current_rss_bytes())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class BenchProgress(Progress):
    """The sync's progress as a line on stderr every few seconds, with RSS."""

    def __init__(self, *, tag: str, sampler: RssSampler, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tag = tag
        self.sampler = sampler
        self._last_line = time.monotonic()

    def advance(self, *, traces: int, position: datetime | None) -> None:
        super().advance(traces=traces, position=position)
        if time.monotonic() - self._last_line >= PROGRESS_SECONDS:
            self._last_line = time.monotonic()
            self._print()

    def close(self) -> None:
        self._print()

    def _print(self) -> None:
        log(
            f"{self.tag}: {self.percent:3.0f}% of the window read, "
            f"{self.traces} traces, {self.rate:.0f} traces/s, "
            f"RSS {current_rss_bytes() / MB:.0f} MB"
        )


# --------------------------------------------------------------------------
# Child process: the emulators
# --------------------------------------------------------------------------


def emulator_stats(langfuse_server, stripe_server) -> dict[str, Any]:
    """Request counters of both emulators, JSON-ready."""
    langfuse = langfuse_server.emulator.stats.snapshot()
    stripe = stripe_server.emulator.stats()
    return {
        "langfuse_requests": langfuse["requests"],
        "langfuse_429": langfuse["rate_limited"],
        "stripe_requests": stripe.requests,
        "stripe_429": stripe.rate_limited,
        "stripe_meter_events": stripe.count("POST /v1/billing/meter_events"),
        "peak_rss_bytes": peak_rss_bytes(),
    }


def serve_emulators(argv: list[str]) -> int:
    """
    Child: start the emulators with ``python -m billing.emulators`` options,
    print one JSON line saying where they are, then answer each ``stats``
    line on stdin with a JSON line of counters; stop at end of stdin.
    """
    from billing.emulators.__main__ import build_parser, describe, start_emulators

    args = build_parser().parse_args(argv)
    langfuse_server, stripe_server, scenario = start_emulators(args)
    print(describe(langfuse_server, stripe_server, scenario, args), file=sys.stderr)
    ready = {
        "langfuse_url": langfuse_server.url,
        "stripe_url": stripe_server.url,
        "now": scenario.now.isoformat(),
        "window_start": scenario.window_start.isoformat(),
        "tenants": [
            {"slug": t.slug, "public_key": t.public_key, "secret_key": t.secret_key}
            for t in scenario.tenants
        ],
    }
    print(json.dumps(ready), flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "stats":
                stats = emulator_stats(langfuse_server, stripe_server)
                print(json.dumps(stats), flush=True)
    finally:
        stripe_server.stop()
        langfuse_server.stop()
    return 0


class EmulatorProcess:
    """The parent's handle on one emulator child process."""

    def __init__(self, *, traces: int, rate_limit: int, seed: int, days: int):
        self.argv = [
            "--langfuse-port=0",
            "--stripe-port=0",
            f"--stripe-key={STRIPE_KEY}",
            f"--seed={seed}",
            "--tenants=1",
            f"--traces={traces}",
            f"--days={days}",
            f"--langfuse-rate-limit={rate_limit}",
        ]
        self.process: subprocess.Popen | None = None
        self.info: dict[str, Any] = {}

    def __enter__(self) -> EmulatorProcess:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "_emulators", *self.argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.info = self._read_line()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _read_line(self) -> dict[str, Any]:
        assert self.process is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the emulator process exited; see its stderr above")
        return json.loads(line)

    @property
    def tenant(self) -> dict[str, str]:
        return self.info["tenants"][0]

    def stats(self) -> dict[str, Any]:
        assert self.process is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        return self._read_line()


def stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """What the emulators served between two snapshots."""
    return {
        name: after[name] - before[name] for name in after if name != "peak_rss_bytes"
    }


# --------------------------------------------------------------------------
# Parent: Postgres, Stripe set-up and checks, Django children
# --------------------------------------------------------------------------


def django_env(postgres_url: str, database: str, stripe_url: str = "") -> dict:
    """The environment of every Django child process."""
    return {
        **app_env(postgres_url, database),
        "STRIPE_API_KEY": STRIPE_KEY,
        "STRIPE_API_BASE": stripe_url or "http://127.0.0.1:9",
    }


def migrate_template(postgres_url: str) -> None:
    """Create and migrate the template every app run's database is copied from."""
    log(f"creating and migrating {TEMPLATE_DATABASE}")
    recreate_database(postgres_url, TEMPLATE_DATABASE, template=None)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        env=django_env(postgres_url, TEMPLATE_DATABASE),
        cwd=ROOT,
        check=True,
    )


def run_child(role: str, config: dict[str, Any], env: dict[str, str]) -> dict:
    """Run ``bench/sync.py <role>`` in a fresh process; return its JSON result."""
    result = subprocess.run(
        [sys.executable, __file__, role, json.dumps(config)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    if result.returncode:
        raise RuntimeError(f"the {role} process failed (exit {result.returncode})")
    return json.loads(result.stdout.strip().splitlines()[-1])


def stripe_client(url: str):
    import stripe

    return stripe.StripeClient(
        STRIPE_KEY, base_addresses={"api": url}, max_network_retries=0
    )


def stripe_prepare(url: str, name: str) -> tuple[str, str]:
    """Create the meter and a customer on the Stripe emulator; return their ids."""
    client = stripe_client(url)
    meter = client.v1.billing.meters.create(
        params={
            "display_name": "LLM usage",
            "event_name": METER_EVENT,
            "default_aggregation": {"formula": "sum"},
        }
    )
    customer = client.v1.customers.create(params={"name": name})
    return meter.id, customer.id


def stripe_total(url: str, meter_id: str, customer_id: str, since: datetime) -> int:
    """
    The customer's meter total as Stripe reports it (event summaries over
    HTTP), from a day before ``since`` to an hour from now, minute-aligned.
    """
    start = (int(since.timestamp()) - 86_400) // 60 * 60
    end = math.ceil((time.time() + 3600) / 60) * 60
    summaries = stripe_client(url).v1.billing.meters.event_summaries.list(
        meter_id, params={"customer": customer_id, "start_time": start, "end_time": end}
    )
    return round(sum(summary.aggregated_value for summary in summaries.data))


@dataclass
class Result:
    """One row of the table."""

    label: str
    traces: int  # traces the run is measured against
    billed: int
    langfuse_calls: int
    stripe_calls: int
    rate_limited: int
    seconds: float
    peak_rss_bytes: int
    check_ok: bool
    check_text: str
    notes: list[str] = field(default_factory=list)

    def per_1000(self, calls: int) -> float:
        return calls * 1000 / self.traces

    @property
    def billed_per_second(self) -> float:
        return self.billed / self.seconds if self.seconds else 0.0

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_bytes / MB


def run_app(
    traces: int, *, rate_limit: int, postgres_url: str, seed: int, days: int
) -> Result:
    """Serve a scenario of ``traces`` traces and sync it with the app."""
    label = f"app {traces // 1000}k" if traces % 1000 == 0 else f"app {traces}"
    log(f"{label}: generating {traces} traces in the emulator process")
    emulators = EmulatorProcess(
        traces=traces, rate_limit=rate_limit, seed=seed, days=days
    )
    with emulators:
        info = emulators.info
        recreate_database(postgres_url, DATABASE, template=TEMPLATE_DATABASE)
        meter_id, customer_id = stripe_prepare(info["stripe_url"], "Bench tenant")
        env = django_env(postgres_url, DATABASE, info["stripe_url"])
        tenant = emulators.tenant
        setup = run_child(
            "_setup",
            {
                "slug": tenant["slug"],
                "langfuse_host": info["langfuse_url"],
                "public_key": tenant["public_key"],
                "secret_key": tenant["secret_key"],
                "customer_id": customer_id,
            },
            env,
        )
        log(f"{label}: syncing (progress every {PROGRESS_SECONDS:.0f} s)")
        before = emulators.stats()
        sync = run_child("_app", {"tenant_id": setup["tenant_id"], "tag": label}, env)
        after = emulators.stats()
        served = stats_delta(before, after)
        since = datetime.fromisoformat(info["window_start"])
        in_stripe = stripe_total(info["stripe_url"], meter_id, customer_id, since)

    ok = (
        sync["status"] == "succeeded"
        and sync["sent_units"] == sync["ledger_micro_usd"] == in_stripe
    )
    check = (
        f"sent {sync['sent_units']} == ledger {sync['ledger_micro_usd']} "
        f"== Stripe {in_stripe}"
    )
    return Result(
        label=label,
        traces=traces,
        billed=sync["billed"],
        langfuse_calls=sync["langfuse_calls"],
        stripe_calls=sync["stripe_calls"],
        rate_limited=sync["rate_limited"],
        seconds=sync["seconds"],
        peak_rss_bytes=sync["peak_rss_bytes"],
        check_ok=ok,
        check_text=check,
        notes=[
            f"run {sync['status']}{': ' + sync['error'] if sync['error'] else ''}; "
            f"{sync['observations_fetched']} observations, "
            f"{sync['billed']} traces billed, {sync['skipped']} skipped "
            f"({sync['skip_reasons']}), {sync['pending']} left pending "
            f"(unsettled), {sync['reports_sent']} meter events",
            f"emulators served: Langfuse {served['langfuse_requests']} requests "
            f"({served['langfuse_429']} answered 429), Stripe "
            f"{served['stripe_requests']} ({served['stripe_meter_events']} meter "
            f"events); app's SyncRun: Langfuse {sync['langfuse_calls']}, Stripe "
            f"{sync['stripe_calls']}, rate limited {sync['rate_limited']}",
            f"RSS after start-up {sync['rss_before_sync_bytes'] / MB:.0f} MB, "
            f"peak sampled during the sync {sync['sampled_peak_bytes'] / MB:.0f} "
            f"MB, ru_maxrss at exit {sync['peak_rss_bytes'] / MB:.0f} MB; "
            f"emulator process peak {after['peak_rss_bytes'] / MB:.0f} MB",
        ],
    )


# --------------------------------------------------------------------------
# The seed-style baseline
# --------------------------------------------------------------------------


def observation_cost(observation: dict[str, Any]) -> Decimal | None:
    """
    What the app bills for one scenario observation (price table first, then
    Langfuse's cost), computed from the scenario, not from what was served;
    None when it cannot be priced.
    """
    usage = observation.get("usageDetails") or {}
    total_cost = observation.get("totalCost")
    details = observation.get("costDetails") or {}
    return price_usage(
        model=observation.get("model"),
        usage={key: count for key, count in usage.items() if key != "total"},
        langfuse_cost=None if total_cost is None else Decimal(str(total_cost)),
        langfuse_cost_details={k: Decimal(str(v)) for k, v in details.items()},
    ).cost


def baseline_sample(traces: int, sample: int, seed: int, days: int, now: datetime):
    """
    Pick ``sample`` traces spread evenly over the scenario the emulator
    serves and compute what billing them should cost. Same seed, size and
    ``now`` as the emulator's: the traces planned depend on the time of day.

    Returns (trace ids, expected micro-USD, billable count). A trace that is
    still running or has an unpriceable observation is not billable, as in
    the app. Late observations are left out: the emulator hides them for five
    minutes after loading, and a sample that takes less (under ~450 traces
    at 100/min) is done by then.
    """
    scenario = generate_scenario(
        seed=seed, tenants=1, traces_per_tenant=traces, days=days, now=now
    )
    step = traces / sample
    wanted = {int(i * step) for i in range(sample)}
    trace_ids, total, billable = [], Decimal(0), 0
    for index, trace in enumerate(scenario.iter_traces(scenario.tenants[0])):
        if index not in wanted:
            continue
        trace_ids.append(trace.trace_id)
        costs = [observation_cost(o) for o in trace.observations]
        if trace.in_progress or None in costs:
            continue
        billable += 1
        total += sum(costs, Decimal(0))
    return trace_ids, floor_micro(total), billable


def run_baseline(
    *,
    traces: int,
    sample: int,
    rate_limit: int,
    delay: float,
    postgres_url: str,
    seed: int,
    days: int,
) -> Result:
    """The seed-style sync of a sample of a ``traces``-trace scenario."""
    label = f"baseline ({sample})"
    emulators = EmulatorProcess(
        traces=traces, rate_limit=rate_limit, seed=seed, days=days
    )
    with emulators:
        info = emulators.info
        trace_ids, expected_micro, billable = baseline_sample(
            traces, sample, seed, days, now=datetime.fromisoformat(info["now"])
        )
        log(
            f"{label}: {sample} of {traces} traces, one Langfuse call each with "
            f"{delay * 1000:.0f} ms before it (~{sample * delay:.0f} s)"
        )
        meter_id, customer_id = stripe_prepare(info["stripe_url"], "Baseline tenant")
        tenant = emulators.tenant
        before = emulators.stats()
        outcome = run_child(
            "_baseline",
            {
                "langfuse_url": info["langfuse_url"],
                "public_key": tenant["public_key"],
                "secret_key": tenant["secret_key"],
                "stripe_url": info["stripe_url"],
                "customer_id": customer_id,
                "trace_ids": trace_ids,
                "delay": delay,
            },
            django_env(postgres_url, DATABASE, info["stripe_url"]),
        )
        served = stats_delta(before, emulators.stats())
        since = datetime.fromisoformat(info["window_start"])
        in_stripe = stripe_total(info["stripe_url"], meter_id, customer_id, since)

    ok = (
        outcome["billed"] == billable
        and outcome["sent_units"] == expected_micro == in_stripe
    )
    return Result(
        label=label,
        traces=sample,
        billed=outcome["billed"],
        langfuse_calls=outcome["langfuse_calls"],
        stripe_calls=outcome["stripe_calls"],
        rate_limited=outcome["rate_limited"],
        seconds=outcome["seconds"],
        peak_rss_bytes=outcome["peak_rss_bytes"],
        check_ok=ok,
        check_text=(
            f"sent {outcome['sent_units']} == sample cost {expected_micro} "
            f"== Stripe {in_stripe}"
        ),
        notes=[
            f"{outcome['billed']} of {sample} sampled traces billed "
            f"({billable} billable in the scenario), {outcome['skipped']} skipped",
            f"emulators served: Langfuse {served['langfuse_requests']} requests "
            f"({served['langfuse_429']} answered 429), Stripe "
            f"{served['stripe_requests']} ({served['stripe_meter_events']} meter "
            "events)",
            f"fixed delay {delay * 1000:.0f} ms before every Langfuse call; "
            "listing the traces (the seed paged /api/public/traces) is not "
            "counted, so these call counts are a lower bound",
        ],
    )


def baseline_worker(config: dict[str, Any]) -> dict[str, Any]:
    """
    Child: the seed's design. Per trace: wait the fixed delay, fetch its
    observations, price them with the app's rules, send one meter event.

    Rounding is carried from event to event (each value is floor(billed so
    far) - units sent so far), so the total is exact like the app's and the
    comparison is about calls and speed, not about lost micro-dollars.
    """
    import django

    django.setup()
    import stripe
    from langfuse.api import LangfuseAPI
    from langfuse.api.core.api_error import ApiError

    from billing.langfuse_source import (
        FIELD_GROUPS,
        MalformedObservation,
        parse_observation,
    )
    from billing.ledger import Unpriceable, price_entry

    langfuse = LangfuseAPI(
        base_url=config["langfuse_url"],
        username=config["public_key"],
        password=config["secret_key"],
        timeout=30,
    )
    client = stripe_client(config["stripe_url"])
    delay = config["delay"]
    counts = dict.fromkeys(
        ("langfuse_calls", "stripe_calls", "rate_limited", "billed", "skipped"), 0
    )
    billed_amount, sent_units = Decimal(0), 0

    def fetch(trace_id: str):
        while True:
            time.sleep(delay)
            counts["langfuse_calls"] += 1
            try:
                return langfuse.observations.get_many(
                    trace_id=trace_id,
                    fields=FIELD_GROUPS,
                    limit=100,
                    request_options={"max_retries": 0},
                )
            except ApiError as exc:
                if exc.status_code != 429:
                    raise
                counts["rate_limited"] += 1
                headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
                time.sleep(float(headers.get("retry-after", 1)))

    def send(trace_id: str, timestamp: datetime, value: int) -> None:
        while True:
            counts["stripe_calls"] += 1
            try:
                client.v1.billing.meter_events.create(
                    params={
                        "event_name": METER_EVENT,
                        "identifier": f"baseline-{trace_id}",
                        "timestamp": int(timestamp.timestamp()),
                        "payload": {
                            "stripe_customer_id": config["customer_id"],
                            "value": str(value),
                        },
                    }
                )
                return
            except stripe.RateLimitError:
                counts["rate_limited"] += 1
                time.sleep(1)

    rss_before = current_rss_bytes()
    started = time.monotonic()
    for number, trace_id in enumerate(config["trace_ids"], 1):
        response = fetch(trace_id)
        if not response.data or any(raw.end_time is None for raw in response.data):
            counts["skipped"] += 1  # still running: billed once it has ended
            continue
        try:
            observations = [parse_observation(raw) for raw in response.data]
            entries = [price_entry(o) for o in observations if o.has_usage]
        except (MalformedObservation, Unpriceable):
            counts["skipped"] += 1
            continue
        billed_amount += sum((Decimal(entry[4]) for entry in entries), Decimal(0))
        value = floor_micro(billed_amount) - sent_units
        send(trace_id, min(o.start_time for o in observations), value)
        sent_units += value
        counts["billed"] += 1
        if number % 25 == 0:
            log(f"baseline: {number} traces, RSS {current_rss_bytes() / MB:.0f} MB")
    seconds = time.monotonic() - started
    return {
        **counts,
        "sent_units": sent_units,
        "seconds": seconds,
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": peak_rss_bytes(),
    }


# --------------------------------------------------------------------------
# Django children: tenant set-up and the app's sync
# --------------------------------------------------------------------------


def setup_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Child: create the tenant row wired to the emulators."""
    import django

    django.setup()
    from billing.audit import Actor
    from billing.services import tenant_create

    tenant = tenant_create(
        actor=Actor.system(),
        name="Bench tenant",
        slug=config["slug"],
        langfuse_host=config["langfuse_host"],
        langfuse_public_key=config["public_key"],
        langfuse_secret_key=config["secret_key"],
        stripe_customer_id=config["customer_id"],
        stripe_meter_event_name=METER_EVENT,
    )
    return {"tenant_id": tenant.pk}


def app_worker(config: dict[str, Any]) -> dict[str, Any]:
    """
    Child: run the app's ``sync_tenant`` once and report its SyncRun, time,
    peak RSS and the ledger totals the Stripe total is checked against.
    """
    import django

    django.setup()
    from django.db.models import Sum

    from billing.models import StripeReport, UsageAdjustment, UsageRecord
    from billing.models.ledger import BillingStatus
    from billing.sync import sync_tenant
    from billing.tenancy import tenant_context

    tenant_id = config["tenant_id"]
    sampler = RssSampler().start()
    rss_before = current_rss_bytes()
    started = time.monotonic()
    run = sync_tenant(
        tenant_id=tenant_id,
        progress=partial(BenchProgress, tag=config["tag"], sampler=sampler),
    )
    seconds = time.monotonic() - started
    sampler.stop()
    if run is None:
        raise RuntimeError("another process holds the tenant's sync lock")

    with tenant_context([tenant_id]):
        sent_units = (
            StripeReport.objects.filter(
                tenant_id=tenant_id, status=StripeReport.Status.SENT
            ).aggregate(total=Sum("value"))["total"]
            or 0
        )
        reported_cost = Decimal(0)
        for model in (UsageRecord, UsageAdjustment):
            reported_cost += (
                model.objects.filter(
                    tenant_id=tenant_id, status=BillingStatus.REPORTED
                ).aggregate(total=Sum("cost"))["total"]
                or 0
            )
        pending = UsageRecord.objects.filter(
            tenant_id=tenant_id, status=BillingStatus.PENDING
        ).count()

    return {
        "status": run.status,
        "error": run.error,
        "seconds": seconds,
        "observations_fetched": run.observations_fetched,
        "traces_fetched": run.traces_fetched,
        "billed": run.billed,
        "skipped": run.skipped,
        "skip_reasons": run.skip_reasons,
        "pending": pending,
        "reports_sent": run.reports_sent,
        "langfuse_calls": run.langfuse_calls,
        "stripe_calls": run.stripe_calls,
        "rate_limited": run.rate_limited,
        "sent_units": sent_units,
        "ledger_micro_usd": floor_micro(reported_cost),
        "rss_before_sync_bytes": rss_before,
        "sampled_peak_bytes": sampler.peak,
        "peak_rss_bytes": peak_rss_bytes(),
    }


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_table(results: list[Result]) -> None:
    header = (
        f"{'run':<16} {'traces':>7} {'billed':>7} {'LF/1k':>7} {'Stripe/1k':>9} "
        f"{'429s':>5} {'sync s':>7} {'billed/s':>9} {'RSS MB':>7}  ledger == Stripe"
    )
    print()
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.label:<16} {r.traces:>7} {r.billed:>7} "
            f"{r.per_1000(r.langfuse_calls):>7.1f} "
            f"{r.per_1000(r.stripe_calls):>9.1f} {r.rate_limited:>5} "
            f"{r.seconds:>7.1f} {r.billed_per_second:>9.1f} {r.peak_rss_mb:>7.1f}  "
            f"{verdict(r.check_ok)} ({r.check_text})"
        )
    print()
    print(
        "LF/1k, Stripe/1k: calls per 1000 traces (every attempt, 429s included); "
        "429s: answers\nthat were rate limits; sync s: wall time of the sync; "
        "billed/s: traces billed per\nsecond of it; RSS MB: peak RSS (MiB, "
        "ru_maxrss) of the process that ran it."
    )
    print()
    for r in results:
        print(f"{r.label}:")
        for note in r.notes:
            print(f"  {note}")


def print_targets(apps: list[Result]) -> bool:
    """Print each target with PASS/FAIL per app run; True when all pass."""
    rows: list[tuple[str, str, bool]] = []
    for r in apps:
        rows.append(
            (
                f"Langfuse calls <= {TARGET_LANGFUSE_PER_1000} per 1000 traces",
                f"{r.label}: {r.per_1000(r.langfuse_calls):.1f}",
                r.per_1000(r.langfuse_calls) <= TARGET_LANGFUSE_PER_1000,
            )
        )
    for r in apps:
        rows.append(
            (
                f"Stripe calls <= {TARGET_STRIPE_PER_1000} per 1000 traces",
                f"{r.label}: {r.per_1000(r.stripe_calls):.1f}",
                r.per_1000(r.stripe_calls) <= TARGET_STRIPE_PER_1000,
            )
        )
    largest = max(apps, key=lambda r: r.traces)
    rows.append(
        (
            f"peak RSS < {TARGET_PEAK_RSS_MB} MB at the largest size",
            f"{largest.label}: {largest.peak_rss_mb:.1f} MB",
            largest.peak_rss_mb < TARGET_PEAK_RSS_MB,
        )
    )
    smallest = min(apps, key=lambda r: r.traces)
    if smallest is not largest:
        growth = largest.peak_rss_bytes / smallest.peak_rss_bytes - 1
        rows.append(
            (
                f"peak RSS not growing with traces (<= +{TARGET_RSS_GROWTH:.0%})",
                f"{smallest.label} -> {largest.label}: {growth:+.1%}",
                growth <= TARGET_RSS_GROWTH,
            )
        )
    for r in apps:
        rows.append(("Stripe total == ledger", r.label, r.check_ok))

    print()
    print("Targets")
    width = max(len(target) for target, _, _ in rows)
    for target, figure, ok in rows:
        print(f"  {target:<{width}}  {figure:<28} {verdict(ok)}")
    return all(ok for _, _, ok in rows)


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/sync.py",
        description="Benchmark the Langfuse -> Stripe sync against the emulators.",
    )
    parser.add_argument(
        "--traces",
        type=int,
        nargs="+",
        default=[10_000, 100_000],
        help="scenario sizes to sync, in traces (default: %(default)s)",
    )
    parser.add_argument(
        "--baseline-sample",
        type=int,
        default=100,
        help="traces the seed-style baseline bills, 0 to skip (default: %(default)s)",
    )
    parser.add_argument(
        "--rate-limit",
        type=int,
        default=100,
        help="Langfuse requests per minute per key (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--days", type=int, default=DAYS)
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="server to create the bench databases on (default: %(default)s)",
    )
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    began = time.monotonic()
    migrate_template(args.postgres_url)
    results = []
    if args.baseline_sample:
        # 600 ms at 100/min: the fixed delay plus the call's own time keeps
        # the baseline under the limit in every one-minute window.
        delay = 60 / args.rate_limit
        results.append(
            run_baseline(
                traces=min(args.traces),
                sample=args.baseline_sample,
                rate_limit=args.rate_limit,
                delay=delay,
                postgres_url=args.postgres_url,
                seed=args.seed,
                days=args.days,
            )
        )
    apps = []
    for traces in args.traces:
        apps.append(
            run_app(
                traces,
                rate_limit=args.rate_limit,
                postgres_url=args.postgres_url,
                seed=args.seed,
                days=args.days,
            )
        )
    results += apps

    print(
        f"Sync benchmark: seed {args.seed}, {args.days} days, Langfuse rate limit "
        f"{args.rate_limit}/min per key, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print_table(results)
    all_pass = print_targets(apps)
    print()
    print(f"Total wall time {time.monotonic() - began:.0f} s")
    return 0 if all_pass else 1


CHILDREN = {
    "_setup": setup_worker,
    "_app": app_worker,
    "_baseline": baseline_worker,
}

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_emulators":
        sys.exit(serve_emulators(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] in CHILDREN:
        outcome = CHILDREN[sys.argv[1]](json.loads(sys.argv[2]))
        print(json.dumps(outcome), flush=True)
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
