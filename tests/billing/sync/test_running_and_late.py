"""
Runs that have not ended, and data that arrives late (seed 002, issue 10):
a trace is billed whole once its observations end (or pass the tenant's
maximum age), running traces are re-read by id rather than by re-reading
hours of history, and late usage of any age is billed by the reconcile tiers
without manual work.
"""

from datetime import timedelta

import time_machine
from django.utils import timezone

from billing.models import UsageRecord
from billing.sync import RECONCILE_TIERS, reconcile_tenant, sync_tenant
from tests.billing.sync.conftest import iso


def _record(trace_id):
    return UsageRecord.objects.get(trace_id=trace_id)


def _end_root(world, tenant, trace_id, start, end):
    world.langfuse.add_observations(
        tenant.langfuse_public_key,
        [
            {
                "id": f"{trace_id}-root",
                "traceId": trace_id,
                "type": "SPAN",
                "startTime": iso(start),
                "endTime": iso(end),
                "updatedAt": iso(end),
            }
        ],
    )


def test_a_running_trace_is_not_billed_however_old_its_start(world):
    tenant = world.tenant("acme")
    # Langfuse keeps milliseconds.
    start = timezone.now().replace(microsecond=0) - timedelta(minutes=40)
    trace_id = world.trace(tenant, start=start, ended=False, updated=start)

    run = sync_tenant(tenant_id=tenant.pk)

    record = _record(trace_id)
    assert (run.billed, record.status) == (0, "pending")
    assert record.running == {f"{trace_id}-root": start.isoformat()}
    assert record.running_since == start
    assert world.stripe_total(tenant) == 0


def test_a_running_trace_is_re_read_by_id_and_billed_whole_when_it_ends(world):
    tenant = world.tenant("acme")
    now = timezone.now()
    start = now - timedelta(minutes=40)  # far behind the 15-minute overlap
    trace_id = world.trace(tenant, start=start, ended=False, updated=start)
    for n in range(5):
        world.trace(tenant, start=now - timedelta(minutes=30 + n))
    sync_tenant(tenant_id=tenant.pk)

    later = now + timedelta(minutes=5)
    _end_root(world, tenant, trace_id, start, later - timedelta(minutes=2))
    with time_machine.travel(later):
        run = sync_tenant(tenant_id=tenant.pk)

    record = _record(trace_id)
    assert (run.billed, run.adjustments, record.status) == (1, 0, "reported")
    assert record.running == {} and record.running_since is None
    # One call for the window, one for the running trace by id: the 40
    # minutes of history behind the overlap are not read again.
    assert run.langfuse_calls == 2
    assert run.traces_fetched == 1
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)


def test_a_run_that_never_ends_is_billed_after_the_maximum_age(world):
    tenant = world.tenant("acme", max_running_seconds=3600)
    now = timezone.now()
    start = now - timedelta(minutes=50)
    trace_id = world.trace(tenant, start=start, ended=False, updated=start)
    sync_tenant(tenant_id=tenant.pk)
    assert _record(trace_id).status == "pending"

    with time_machine.travel(now + timedelta(minutes=11)):
        run = sync_tenant(tenant_id=tenant.pk)

    assert (run.billed, _record(trace_id).status) == (1, "reported")
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)


def test_the_overlap_is_a_tenant_setting_of_fifteen_minutes_by_default(world):
    tenant = world.tenant("acme")
    world.trace(tenant)
    first = sync_tenant(tenant_id=tenant.pk)
    second = sync_tenant(tenant_id=tenant.pk)
    assert second.window_start == first.window_end - timedelta(minutes=15)

    tenant.overlap_seconds = 120
    tenant.save()
    third = sync_tenant(tenant_id=tenant.pk)
    assert third.window_start == second.window_end - timedelta(minutes=2)


def _late_generation(trace_id, start, n):
    return {
        "id": f"{trace_id}-late-{n}",
        "traceId": trace_id,
        "type": "GENERATION",
        "startTime": iso(start + timedelta(seconds=2)),
        "endTime": iso(start + timedelta(seconds=3)),
        "model": "gpt-4o",
        "usageDetails": {"input": 4000, "output": 1000},
    }


def test_an_observation_an_hour_late_is_billed_by_the_hourly_reconcile(world):
    tenant = world.tenant("acme")
    start = timezone.now() - timedelta(hours=3)
    trace_id = world.trace(tenant, start=start)
    sync_tenant(tenant_id=tenant.pk)

    # Ingested an hour after the trace was billed, with its old start time.
    world.langfuse.add_observations(
        tenant.langfuse_public_key, [_late_generation(trace_id, start, 1)]
    )
    assert sync_tenant(tenant_id=tenant.pk).adjustments == 0
    runs = reconcile_tenant(tenant_id=tenant.pk, lookback=RECONCILE_TIERS["hourly"])

    adjustment = _record(trace_id).adjustments.get()
    assert (sum(r.adjustments for r in runs), adjustment.status) == (1, "reported")
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)


def test_an_observation_a_day_late_on_an_old_trace_is_billed_by_the_daily_tier(
    world,
):
    tenant = world.tenant("acme")
    start = timezone.now() - timedelta(days=3)
    trace_id = world.trace(tenant, start=start)
    sync_tenant(tenant_id=tenant.pk)
    world.langfuse.add_observations(
        tenant.langfuse_public_key, [_late_generation(trace_id, start, 1)]
    )

    adjustments = [
        sum(
            run.adjustments
            for run in reconcile_tenant(
                tenant_id=tenant.pk, lookback=RECONCILE_TIERS[tier]
            )
        )
        for tier in ("hourly", "daily", "weekly")
    ]

    assert adjustments == [0, 1, 0]
    assert _record(trace_id).adjustments.get().status == "reported"
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)


def test_a_scheduled_tier_waits_for_a_minute_sync_instead_of_being_lost(world):
    import threading

    from billing.locks import tenant_sync_lock

    tenant = world.tenant("acme")
    world.trace(tenant, start=timezone.now() - timedelta(hours=3))
    sync_tenant(tenant_id=tenant.pk)
    held, release = threading.Event(), threading.Event()

    def minute_sync_holding_the_lock():
        from django.db import connection

        with tenant_sync_lock(tenant.pk):
            held.set()
            release.wait(5)
        connection.close()

    holder = threading.Thread(target=minute_sync_holding_the_lock)
    holder.start()
    held.wait(5)
    threading.Timer(0.5, release.set).start()
    runs = reconcile_tenant(tenant_id=tenant.pk, lookback=RECONCILE_TIERS["hourly"])
    holder.join()

    assert runs and all(run is not None for run in runs)
    assert all(run.status == "succeeded" for run in runs)
