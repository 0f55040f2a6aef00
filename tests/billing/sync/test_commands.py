from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing.models import SyncCursor, SyncRun, UsageRecord


def test_sync_billing_dry_run_reports_counts_and_writes_no_ledger(world):
    tenant = world.tenant("acme")
    world.trace(tenant)
    out = StringIO()

    call_command("sync_billing", "--tenant", "acme", "--dry-run", stdout=out)

    assert "acme: succeeded (dry run), 1 traces fetched" in out.getvalue()
    assert not UsageRecord.objects.exists()


def test_sync_billing_reconciles_the_tier_it_is_given(world):
    tenant = world.tenant("acme")
    world.trace(tenant)
    call_command("sync_billing", "--tenant", "acme", stdout=StringIO())

    call_command(
        "sync_billing", "--kind", "reconcile", "--tier", "weekly", stdout=StringIO()
    )

    runs = SyncRun.objects.filter(kind="reconcile").order_by("window_start")
    assert runs.last().window_end - runs.first().window_start == timedelta(days=35)


def test_sync_billing_rejects_an_unknown_tenant(world):
    with pytest.raises(CommandError, match="No tenant with slug 'nope'"):
        call_command("sync_billing", "--tenant", "nope")


def test_backfill_bills_history_day_by_day_without_moving_the_cursor(world):
    tenant = world.tenant("acme")
    now = timezone.now()
    old = [world.trace(tenant, start=now - timedelta(days=d, hours=1)) for d in (3, 4)]
    out = StringIO()

    call_command(
        "backfill_billing",
        "--tenant=acme",
        f"--since={(now - timedelta(days=5)).date()}",
        f"--until={(now - timedelta(days=2)).date()}",
        stdout=out,
    )

    runs = SyncRun.objects.filter(kind="backfill")
    assert runs.count() == 3  # one per UTC day
    assert set(
        UsageRecord.objects.filter(status="reported").values_list("trace_id", flat=True)
    ) == set(old)
    assert SyncCursor.objects.get(tenant=tenant).watermark is None
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)
    # Running it again, beside a sync, bills nothing twice.
    call_command("sync_billing", "--tenant=acme", stdout=StringIO())
    call_command(
        "backfill_billing",
        "--tenant=acme",
        f"--since={(now - timedelta(days=5)).date()}",
        f"--until={(now - timedelta(days=2)).date()}",
        stdout=StringIO(),
    )
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)
    assert UsageRecord.objects.count() == 2


def test_backfill_rejects_an_empty_window(world):
    world.tenant("acme")
    with pytest.raises(CommandError, match="--since must be before --until"):
        call_command(
            "backfill_billing",
            "--tenant=acme",
            "--since=2026-01-02",
            "--until=2026-01-01",
        )
