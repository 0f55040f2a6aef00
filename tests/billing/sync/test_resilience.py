import os
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import time_machine
from django.db import connection, connections
from django.utils import timezone

from billing import limiter
from billing.emulators.base import RESET, EmulatorServer, Faults
from billing.models import AuditLog, StripeReport, SyncRun, Tenant, UsageRecord
from billing.sync import sync_tenant, sync_tenants
from tests.billing.sync.conftest import noon

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def fast_limiter(monkeypatch):
    # The seed's rules, scaled down 100x so a storm takes seconds, not minutes.
    monkeypatch.setattr(limiter, "FIRST_BACKOFF", 0.002)
    monkeypatch.setattr(limiter, "MAX_DELAY", 0.05)


def _days_of_traces(world, tenant, days=4, per_day=5):
    for day in range(days):
        for n in range(per_day):
            world.trace(tenant, start=noon(day) - timedelta(minutes=n))


class KillClientAfterFirstMeterEvent:
    """Let Stripe record the first meter event, then SIGKILL the sender."""

    def __init__(self, emulator):
        self.emulator = emulator
        self.pid = None
        self.killed = threading.Event()

    def handle(self, request):
        response = self.emulator.handle(request)
        if request.path == "/v1/billing/meter_events" and not self.killed.is_set():
            self.killed.set()
            os.kill(self.pid, signal.SIGKILL)
            return RESET
        return response


def test_a_sync_killed_between_stripe_send_and_commit_bills_exactly_once(world):
    tenant = world.tenant("acme", sync_concurrency=1)
    _days_of_traces(world, tenant)
    killer = KillClientAfterFirstMeterEvent(world.stripe)
    with EmulatorServer(killer) as stripe_server:
        database = connection.settings_dict
        env = {
            **os.environ,
            "DATABASE_URL": (
                f"postgres://{database['USER']}@{database['HOST']}:"
                f"{database['PORT'] or 5432}/{database['NAME']}"
            ),
            "STRIPE_API_BASE": stripe_server.url,
            "STRIPE_API_KEY": world.stripe_key,
        }
        child = subprocess.Popen(
            [sys.executable, "manage.py", "sync_billing", "--tenant", "acme"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        killer.pid = child.pid
        assert child.wait(timeout=60) == -signal.SIGKILL

    # Stripe has the first event; our outbox still says it is pending.
    assert len(world.stripe.meter_events()) == 1
    assert StripeReport.objects.filter(status="pending").count() == 4

    run = sync_tenant(tenant_id=tenant.pk)

    assert run.status == SyncRun.Status.SUCCEEDED
    assert StripeReport.objects.filter(status="sent").count() == 4
    assert len(world.stripe.meter_events()) == 4
    assert UsageRecord.objects.filter(status="reported").count() == 20
    assert world.stripe_total(tenant) == world.sent_units(tenant)
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)


def test_a_lost_stripe_response_is_resent_and_counted_once(world, fast_limiter):
    tenant = world.tenant("acme", sync_concurrency=1)
    _days_of_traces(world, tenant, days=2)
    world.stripe.fail_next("reset", times=1, after_processing=True)

    run = sync_tenant(tenant_id=tenant.pk)

    assert run.status == SyncRun.Status.SUCCEEDED
    assert len(world.stripe.meter_events()) == 2
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)


def test_a_429_storm_completes_with_nothing_lost_and_the_rate_adapting(
    world, fast_limiter, monkeypatch
):
    monkeypatch.setattr("billing.langfuse_source.PAGE_SIZE", 10)
    tenant = world.tenant("acme")
    _days_of_traces(world, tenant, days=6, per_day=8)
    storm = dict(rate_429=0.5, retry_after=0)
    world.langfuse.faults = Faults(seed=1, **storm)
    world.stripe.faults = Faults(seed=2, **storm)

    run = sync_tenant(tenant_id=tenant.pk)

    assert run.status == SyncRun.Status.SUCCEEDED
    assert run.rate_limited > 10
    assert run.langfuse_calls > run.rate_limited // 2
    assert run.final_delay_ms > 0  # still backed off at the end of the storm
    assert UsageRecord.objects.filter(status="reported").count() == 48
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)
    assert len(world.stripe.meter_events()) == StripeReport.objects.count() == 6


def test_a_5xx_failing_tenant_does_not_delay_a_healthy_one(world, fast_limiter):
    sick, healthy = world.tenant("sick"), world.tenant("healthy")
    _days_of_traces(world, sick, days=1)
    _days_of_traces(world, healthy, days=2)
    world.langfuse.key_faults[sick.langfuse_public_key] = Faults(rate_5xx=1.0)

    sick_run, healthy_run = sync_tenants([sick.pk, healthy.pk], concurrency=2)

    assert healthy_run.status == SyncRun.Status.SUCCEEDED
    assert (healthy_run.rate_limited, healthy_run.final_delay_ms) == (0, 0)
    assert healthy_run.billed == 10
    assert world.stripe_total(healthy) == world.ledger_micro_usd(healthy) > 0
    assert sick_run.status == SyncRun.Status.FAILED
    assert sick_run.error.startswith("langfuse: HTTP 503")
    assert healthy_run.finished_at < sick_run.finished_at
    # A server error is the provider's fault: the tenant is not paused.
    assert Tenant.objects.get(pk=sick.pk).sync_paused_reason == ""


def test_two_concurrent_syncs_of_one_tenant_bill_once(world):
    tenant = world.tenant("acme")
    _days_of_traces(world, tenant, days=3)
    barrier = threading.Barrier(2)
    results = []

    def sync():
        barrier.wait()
        try:
            results.append(sync_tenant(tenant_id=tenant.pk))
        finally:
            connections["default"].close()

    threads = [threading.Thread(target=sync) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert UsageRecord.objects.filter(status="reported").count() == 15
    assert len(world.stripe.meter_events()) == StripeReport.objects.count() == 3
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)
    assert sum(run.billed for run in results if run) == 15


def test_a_held_lock_makes_a_second_sync_skip_quietly(world):
    tenant = world.tenant("acme")
    world.trace(tenant)
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s, %s)", [0x5E1C, tenant.pk])
        skipped = sync_tenant(tenant_id=tenant.pk)
        assert (skipped.status, skipped.error) == (
            "skipped",
            "another run of this tenant holds its lock",
        )
        assert not UsageRecord.objects.exists()
        # Released explicitly: a closed session's locks go asynchronously.
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [0x5E1C, tenant.pk])
    finally:
        other.close()
    assert sync_tenant(tenant_id=tenant.pk).billed == 1


def test_the_settle_window_holds_back_a_trace_in_progress(world):
    tenant = world.tenant("acme")
    now = timezone.now()
    start = now - timedelta(minutes=5)
    busy = world.trace(tenant, start=start, updated=now)
    done = world.trace(tenant, start=start)

    sync_tenant(tenant_id=tenant.pk)
    assert UsageRecord.objects.get(trace_id=busy).status == "pending"
    assert UsageRecord.objects.get(trace_id=done).status == "reported"

    with time_machine.travel(now + timedelta(minutes=2)):
        run = sync_tenant(tenant_id=tenant.pk)
    assert run.billed == 1
    assert UsageRecord.objects.get(trace_id=busy).status == "reported"


def test_a_late_observation_produces_exactly_one_adjustment(world):
    tenant = world.tenant("acme")
    start = timezone.now() - timedelta(hours=2)
    trace_id = world.trace(tenant, start=start)
    sync_tenant(tenant_id=tenant.pk)
    billed_before = world.stripe_total(tenant)

    # Ingested now, but it started two hours ago: behind the cursor, only a
    # reconcile re-reads that far.
    world.langfuse.add_observations(
        tenant.langfuse_public_key,
        [
            {
                "id": f"{trace_id}-late",
                "traceId": trace_id,
                "type": "GENERATION",
                "startTime": (start + timedelta(seconds=2)).isoformat(),
                "endTime": (start + timedelta(seconds=3)).isoformat(),
                "model": "gpt-4o",
                "usageDetails": {"input": 4000, "output": 1000},
            }
        ],
    )
    assert sync_tenant(tenant_id=tenant.pk).adjustments == 0

    healed = sync_tenant(tenant_id=tenant.pk, kind=SyncRun.Kind.RECONCILE)
    again = sync_tenant(tenant_id=tenant.pk, kind=SyncRun.Kind.RECONCILE)

    record = UsageRecord.objects.get(trace_id=trace_id)
    adjustment = record.adjustments.get()
    assert (healed.adjustments, again.adjustments) == (1, 0)
    assert adjustment.status == "reported"
    assert str(adjustment.cost) == "0.0200000000"  # 4000 * 2.50 + 1000 * 10.00 per 1M
    assert record.cost < adjustment.cost  # the record itself was not edited
    assert world.stripe_total(tenant) == billed_before + 20_000
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)
    assert len(world.stripe.meter_events()) == 2


def test_reconcile_heals_a_trace_the_minute_syncs_missed(world, caplog):
    tenant = world.tenant("acme")
    world.trace(tenant, start=timezone.now() - timedelta(minutes=30))
    sync_tenant(tenant_id=tenant.pk)
    # Ingested late and behind the cursor: the regular sync will never see it.
    missed = world.trace(tenant, start=timezone.now() - timedelta(hours=3))
    assert sync_tenant(tenant_id=tenant.pk).billed == 0

    run = sync_tenant(tenant_id=tenant.pk, kind=SyncRun.Kind.RECONCILE)

    assert (run.healed, run.billed) == (1, 1)
    assert "healed 1 traces in tenant acme" in caplog.text
    assert UsageRecord.objects.get(trace_id=missed).status == "reported"
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)


def test_rejected_langfuse_keys_pause_the_tenant_with_a_visible_reason(world):
    tenant = world.tenant("acme")
    world.trace(tenant)
    tenant.langfuse_secret_key = "sk-lf-revoked"
    tenant.save()

    run = sync_tenant(tenant_id=tenant.pk)

    tenant.refresh_from_db()
    assert run.status == SyncRun.Status.FAILED
    assert run.error == "langfuse: HTTP 401"
    assert tenant.sync_paused_reason == "langfuse: HTTP 401"
    assert AuditLog.objects.filter(action="tenant.pause_sync").count() == 1
    assert run.langfuse_calls == 1  # a 401 is not retried
    skipped = sync_tenant(tenant_id=tenant.pk)
    assert (skipped.status, skipped.error) == (
        "skipped",
        "sync paused: langfuse: HTTP 401",
    )


def test_a_long_running_trace_is_billed_whole_not_adjusted(world):
    tenant = world.tenant("acme")
    now = timezone.now()
    start = now - timedelta(minutes=20)
    trace_id = world.trace(tenant, start=start, ended=False, updated=now)
    sync_tenant(tenant_id=tenant.pk)
    assert UsageRecord.objects.get(trace_id=trace_id).status == "pending"

    # A generation that started 19 minutes ago finishes and is ingested now,
    # and the trace ends: older than the cursor's overlap, but its trace was
    # running, so it is re-read by id.
    world.langfuse.add_observations(
        tenant.langfuse_public_key,
        [
            {
                "id": f"{trace_id}-root",
                "traceId": trace_id,
                "type": "SPAN",
                "startTime": start.isoformat(),
                "endTime": now.isoformat(),
                "updatedAt": now.isoformat(),
            },
            {
                "id": f"{trace_id}-gen-late",
                "traceId": trace_id,
                "type": "GENERATION",
                "startTime": (start + timedelta(minutes=1)).isoformat(),
                "endTime": now.isoformat(),
                "updatedAt": now.isoformat(),
                "model": "gpt-4o",
                "usageDetails": {"input": 4000, "output": 1000},
            },
        ],
    )
    with time_machine.travel(now + timedelta(minutes=3)):
        run = sync_tenant(tenant_id=tenant.pk)

    record = UsageRecord.objects.get(trace_id=trace_id)
    assert (run.billed, run.adjustments, record.status) == (1, 0, "reported")
    assert len(record.observations) == 2
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)
