"""
What the ledger's triggers (daily scope usage, daily trace costs) cost the
sync's ledger writes.

    .venv/bin/python bench/ledger_writes.py [--pages 10] [--page-size 1000]

In a dedicated database ``bench_ledger`` (dropped and recreated, then
migrated), merges seeded pages of traces into the ledger with the sync's own
``billing.ledger.ledger_merge``, one transaction per page as the sync does,
in three passes over the same pages: new traces (INSERT), the same traces
again with one more observation each (their pending records absorb it:
UPDATE), and marking every record reported as the Stripe sender does
(UPDATE that changes nothing billable). Each pass runs once with the
triggers of ``billing.scope_usage`` and ``billing.trace_costs`` and once
with them disabled (the baseline: the ledger alone), and prints traces per
second and the overhead.
After the run with triggers it checks that the scope usage equals the
ledger's sums.

Traces have 1-3 models (60/30/10%) and scopes drawn from 5 projects, 40
agents, 30 epics and 150 users, like one tenant of ``bench/rollup.py``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from datetime import UTC, datetime, timedelta

from support import DEFAULT_POSTGRES_URL, Timer, django_env, log, recreate_database

DATABASE = "bench_ledger"
SEED = 42
START = datetime(2026, 11, 20, tzinfo=UTC)
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet-20241022")
MODELS += ("claude-3-5-haiku-20241022", "text-embedding-3-small")
TRIGGERS = ("billing_usagerecord", "billing_usageadjustment")


def setup(postgres_url: str) -> None:
    """Recreate and migrate the bench database, then set Django up on it."""
    recreate_database(postgres_url, DATABASE)
    os.environ.update(django_env(postgres_url, DATABASE))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def pages(count: int, size: int, round_: int) -> list[dict]:
    """Seeded pages of traces; round 1 adds an observation to each trace."""
    from billing.ledger import TraceUsage

    rng = random.Random(SEED)
    result = []
    for page in range(count):
        traces = {}
        for n in range(size):
            trace_id = f"tr-{page:04d}-{n:05d}"
            at = START + timedelta(seconds=page * size + n)
            project = rng.randrange(5)
            trace = TraceUsage(
                trace_id,
                at,
                at,
                project_id=f"proj-{project}",
                agent_id=f"agent-{project}-{rng.randrange(40)}",
                epic_id=f"EPIC-{rng.randrange(30)}",
                user_id=f"user-{rng.randrange(150)}",
            )
            models = 1 + (rng.random() < 0.4) + (rng.random() < 0.1)
            for k, model in enumerate(rng.sample(MODELS, models)):
                tokens = rng.randrange(200, 6000)
                trace.entries[f"{trace_id}-o{k}"] = [
                    model,
                    tokens,
                    tokens // 10,
                    0,
                    f"{tokens / 1e6:.6f}",
                    "price_table",
                ]
            if round_:
                trace.entries[f"{trace_id}-late"] = [
                    MODELS[0],
                    100,
                    10,
                    0,
                    "0.000200",
                    "price_table",
                ]
            traces[trace_id] = trace
        result.append(traces)
    return result


def set_triggers(enabled: bool) -> None:
    from django.db import connection

    from billing.scope_usage import OPERATIONS

    action = "ENABLE" if enabled else "DISABLE"
    # The daily trace costs' too (billing.trace_costs), on the records.
    names = [(table, f"{table}_scope_usage") for table in TRIGGERS]
    names.append(("billing_usagerecord", "billing_usagerecord_trace_costs"))
    with connection.cursor() as cursor:
        for table, name in names:
            for operation in OPERATIONS:
                cursor.execute(
                    f"ALTER TABLE {table} {action} TRIGGER {name}_{operation}"
                )


def run_passes(tenant, page_count: int, size: int) -> tuple[dict[str, float], bool]:
    """
    Seconds per pass (insert, absorb, report), and whether the scope usage
    then equals the ledger; the ledger is emptied afterwards.
    """
    from django.db import connection, transaction

    from billing.ledger import ledger_merge
    from billing.models import StripeReport, UsageRecord
    from billing.tenancy import tenant_context

    seconds = {}
    for label, round_ in (("insert", 0), ("absorb", 1)):
        batches = pages(page_count, size, round_)
        with Timer() as timer:
            for traces in batches:
                with transaction.atomic(), tenant_context([tenant.pk]):
                    ledger_merge(tenant=tenant, traces=traces)
        seconds[label] = timer.seconds
    report = StripeReport.objects.create(
        tenant=tenant,
        identifier=f"bench-{time.time_ns()}",
        event_name="llm_cost",
        stripe_customer_id="cus_bench",
        unit="cents",
        value=1,
        amount=1,
        day=START.date(),
        timestamp=START,
    )
    ids = list(UsageRecord.objects.values_list("pk", flat=True).order_by("pk"))
    with Timer() as timer:
        for first in range(0, len(ids), size):
            with transaction.atomic(), tenant_context([tenant.pk]):
                UsageRecord.objects.filter(pk__in=ids[first : first + size]).update(
                    status="reported", report=report
                )
    seconds["report"] = timer.seconds
    consistent = matches_ledger()
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE billing_usagerecord, billing_stripereport, "
            "billing_dailyscopeusage CASCADE"
        )
    return seconds, consistent


def matches_ledger() -> bool:
    """Per project and model, the scope usage equals the ledger's breakdowns."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT count(*) FROM (
                SELECT r.project_id, m.key AS model,
                       sum((m.value->>'input')::bigint) AS input,
                       sum((m.value->>'cost')::numeric) AS cost
                FROM billing_usagerecord r, jsonb_each(r.model_breakdown) m
                GROUP BY 1, 2
            ) ledger
            FULL JOIN (
                SELECT scope_id AS project_id, model, sum(input_tokens) AS input,
                       sum(cost) AS cost
                FROM billing_dailyscopeusage WHERE scope_type = 'project'
                GROUP BY 1, 2
            ) usage USING (project_id, model)
            WHERE ledger.input IS DISTINCT FROM usage.input
               OR ledger.cost IS DISTINCT FROM usage.cost
            """
        )
        return cursor.fetchone()[0] == 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/ledger_writes.py")
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    args = parser.parse_args(argv)

    log(f"creating and migrating {DATABASE}")
    setup(args.postgres_url)
    from billing.models import Tenant

    tenant = Tenant.objects.create(name="Bench", slug="bench")
    traces = args.pages * args.page_size
    # Warm up (connections, caches, plans) on a few pages, then measure.
    run_passes(tenant, 2, args.page_size)
    results = {}
    for enabled in (True, False):
        set_triggers(enabled)
        results[enabled], consistent = run_passes(tenant, args.pages, args.page_size)
        if enabled:
            ok = consistent
        log(f"triggers {'on' if enabled else 'off'}: {results[enabled]}")

    print(
        f"Ledger writes: {args.pages} pages of {args.page_size:,} traces "
        f"({traces:,}), one transaction per page, Postgres; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"  {'pass':<8} {'baseline (no triggers)':>24} {'with triggers':>16}"
        f" {'overhead':>9}"
    )
    for label in ("insert", "absorb", "report"):
        off, on = results[False][label], results[True][label]
        print(
            f"  {label:<8} {traces / off:>17,.0f} tr/s {traces / on:>11,.0f} tr/s "
            f"{(on - off) / off:>8.0%}"
        )
    print(f"  scope usage equals the ledger (with triggers): {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
