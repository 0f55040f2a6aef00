from datetime import timedelta

import pytest
from django.utils import timezone

from billing import stripe_sink
from billing.models import (
    StripeReport,
    SyncCursor,
    SyncRun,
    UsageAdjustment,
    UsageRecord,
)
from billing.sync import RECONCILE_TIERS, reconcile_tenant, sync_tenant
from tests.billing.sync.conftest import expected_cost, iso, noon


def _records(tenant):
    return UsageRecord.objects.for_tenant(tenant)


def test_sync_bills_every_trace_once_and_stripe_matches_the_ledger(world):
    tenant = world.tenant("acme")
    now = timezone.now()
    generations = [("gpt-4o", 1000, 200, 300), ("claude-3-5-haiku-20241022", 50, 10, 0)]
    for day in range(3):
        for minute in range(5):
            world.trace(
                tenant,
                start=now - timedelta(days=day, minutes=10 + minute),
                generations=generations,
            )

    run = sync_tenant(tenant_id=tenant.pk)

    assert run.status == SyncRun.Status.SUCCEEDED
    assert run.traces_fetched == run.billed == 15
    assert _records(tenant).filter(status="reported").count() == 15
    record = _records(tenant).first()
    assert record.cost == expected_cost(generations)
    assert record.price_source == "price_table"
    assert record.model_breakdown["gpt-4o"]["cached"] == 300
    assert (record.agent_id, record.user_id, record.project_id, record.epic_id) == (
        "support-triage",
        "user-1",
        "web",
        "EPIC-1",
    )
    # One meter event per UTC day with usage, never one per trace.
    days = {r.trace_timestamp.date() for r in _records(tenant)}
    assert StripeReport.objects.count() == run.reports_sent == len(days)
    assert world.stripe_total(tenant) == world.sent_units(tenant)
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)

    again = sync_tenant(tenant_id=tenant.pk)
    assert (again.billed, again.reports_created) == (0, 0)
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)
    assert len(world.stripe.meter_events()) == len(days)


def test_cursor_advances_and_the_next_sync_reads_only_new_usage(world):
    tenant = world.tenant("acme")
    world.trace(tenant)
    first = sync_tenant(tenant_id=tenant.pk)
    watermark = SyncCursor.objects.get(tenant=tenant).watermark
    assert watermark == first.window_end

    world.trace(tenant, start=timezone.now() - timedelta(minutes=3))
    second = sync_tenant(tenant_id=tenant.pk)

    assert second.window_start == watermark - timedelta(minutes=15)
    assert second.billed == 1
    assert _records(tenant).filter(status="reported").count() == 2


def test_unknown_model_uses_langfuse_cost_and_no_cost_is_held_unpriced(world):
    tenant = world.tenant("acme")
    priced = world.trace(
        tenant, generations=[("acme-distilled-v2", 100, 100, 0, 0.0123)]
    )
    unpriced = world.trace(tenant, generations=[("local-llama-3-8b-ft", 100, 100, 0)])
    normal = world.trace(tenant)

    run = sync_tenant(tenant_id=tenant.pk)

    fallback = _records(tenant).get(trace_id=priced)
    assert (fallback.status, fallback.price_source) == ("reported", "langfuse")
    assert str(fallback.cost) == "0.0123000000"
    held = _records(tenant).get(trace_id=unpriced)
    assert held.status == "unpriced"
    assert "local-llama-3-8b-ft" in held.skip_reason
    assert _records(tenant).get(trace_id=normal).status == "reported"
    assert run.skipped == 0
    assert run.skip_reasons == {"held unpriced: no price and no Langfuse cost": 1}
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)


def test_malformed_observations_are_skipped_with_a_reason_and_the_rest_bills(world):
    tenant = world.tenant("acme")
    good = [world.trace(tenant) for _ in range(3)]
    bad = world.trace(tenant, generations=[("gpt-4o", -5, 10, 0)])
    start = timezone.now() - timedelta(minutes=9)
    world.langfuse.add_observations(
        tenant.langfuse_public_key,
        [
            {
                "id": "orphan-1",
                "traceId": None,
                "type": "GENERATION",
                "startTime": start.isoformat(),
                "endTime": start.isoformat(),
                "model": "gpt-4o",
                "usageDetails": {"input": 10, "output": 10},
            }
        ],
    )

    run = sync_tenant(tenant_id=tenant.pk)

    assert run.status == SyncRun.Status.SUCCEEDED
    assert set(
        _records(tenant).filter(status="reported").values_list("trace_id", flat=True)
    ) == set(good)
    skipped = _records(tenant).get(trace_id=bad)
    assert skipped.status == "skipped"
    assert (
        skipped.skip_reason
        == f"malformed observation {bad}-gen-0: negative token count"
    )
    assert run.skip_reasons == {
        "negative token count": 1,
        "observation without traceId": 1,
    }
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)


def test_injected_malformed_items_never_bill_and_never_fail_the_page(world):
    from billing.emulators.base import Faults

    tenant = world.tenant("acme")
    for minute in range(40):
        world.trace(tenant, start=timezone.now() - timedelta(minutes=10 + minute))
    world.langfuse.faults = Faults(rate_malformed=0.3, seed=3)

    run = sync_tenant(tenant_id=tenant.pk)

    corrupted = world.langfuse.stats.malformed
    assert corrupted, "the fault injector corrupted nothing"
    assert run.status == SyncRun.Status.SUCCEEDED
    assert run.skipped + run.skip_reasons.get("observation without traceId", 0) > 0
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)


def test_dry_run_reads_and_counts_but_writes_nothing(world):
    tenant = world.tenant("acme")
    world.trace(tenant)
    world.trace(tenant)

    run = sync_tenant(tenant_id=tenant.pk, dry_run=True)

    assert (run.dry_run, run.status, run.traces_fetched) == (True, "succeeded", 2)
    assert not _records(tenant).exists()
    # Not even its own record or a cursor: a dry run writes nothing.
    assert not SyncCursor.objects.exists()
    assert not SyncRun.objects.exists()
    assert world.stripe.meter_events() == []


def test_a_tenant_without_a_stripe_customer_fills_the_ledger_and_reports_later(world):
    tenant = world.tenant("acme", customer=False)
    world.trace(tenant)

    first = sync_tenant(tenant_id=tenant.pk)
    assert (first.status, first.reports_created) == ("succeeded", 0)
    assert _records(tenant).get().status == "pending"

    tenant.stripe_customer_id = world.stripe.create_customer(name="acme")["id"]
    tenant.save()
    second = sync_tenant(tenant_id=tenant.pk)
    assert second.billed == 1
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant) > 0


def test_tokens_unit_reports_token_counts(world):
    tenant = world.tenant("acme", meter_unit="tokens")
    world.trace(tenant, generations=[("gpt-4o", 1000, 200, 300)])
    world.trace(tenant, generations=[("gpt-4o-mini", 10, 5, 0)])

    sync_tenant(tenant_id=tenant.pk)

    assert world.stripe_total(tenant) == 1000 + 200 + 300 + 10 + 5


@pytest.mark.parametrize("batches", [7])
def test_rounding_is_carried_so_no_money_is_lost_or_invented(world, batches):
    # Each trace costs 0.6 micro-USD: rounded per batch it would bill 0.
    tenant = world.tenant("acme")
    for day in range(batches):
        for n in range(3):
            world.trace(
                tenant,
                start=noon(day) - timedelta(minutes=n),
                generations=[("gpt-4o-mini", 4, 0, 0)],
            )

    sync_tenant(tenant_id=tenant.pk)

    assert StripeReport.objects.count() == batches
    total_micro = 21 * 4 * 0.15  # 12.6 micro-USD
    assert (
        world.stripe_total(tenant) == int(total_micro) == world.ledger_micro_usd(tenant)
    )


def test_a_day_beyond_one_batch_is_billed_in_consecutive_batches(world, monkeypatch):
    """
    Batches of a day follow each other in (trace timestamp, id) order,
    records first, adjustments in the room left; every row is in one batch.
    """
    monkeypatch.setattr(stripe_sink, "MAX_BATCH_ROWS", 2)
    tenant = world.tenant("acme")
    start = noon(0)
    traces = [
        world.trace(tenant, start=start - timedelta(minutes=minutes))
        for minutes in (5, 9, 5, 1, 7)  # two start at the same moment
    ]
    sync_tenant(tenant_id=tenant.pk)

    ordered = list(_records(tenant).order_by("trace_timestamp", "id"))
    reports = list(StripeReport.objects.order_by("id"))
    assert [
        list(r.usage_records.order_by("trace_timestamp", "id")) for r in reports
    ] == [
        ordered[0:2],
        ordered[2:4],
        ordered[4:5],
    ]

    # A new trace of that day, and late usage on three billed ones.
    newest = world.trace(tenant, start=start)
    world.langfuse.add_observations(
        tenant.langfuse_public_key,
        [
            {
                "id": f"{trace_id}-late",
                "traceId": trace_id,
                "type": "GENERATION",
                "startTime": iso(start - timedelta(minutes=10)),
                "endTime": iso(start - timedelta(minutes=10)),
                "model": "gpt-4o",
                "usageDetails": {"input": 4000, "output": 1000},
            }
            for trace_id in traces[:3]
        ],
    )
    reconcile_tenant(tenant_id=tenant.pk, lookback=RECONCILE_TIERS["weekly"])

    late = list(StripeReport.objects.order_by("id"))[len(reports) :]
    adjustments = list(UsageAdjustment.objects.order_by("trace_timestamp", "id"))
    assert [(r.record_count, r.adjustment_count) for r in late] == [(1, 1), (0, 2)]
    assert [r.trace_id for r in late[0].usage_records.all()] == [newest]
    assert list(late[0].adjustments.all()) == adjustments[:1]
    assert (
        list(late[1].adjustments.order_by("trace_timestamp", "id")) == (adjustments[1:])
    )
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)
    assert world.stripe_total(tenant) == world.sent_units(tenant)
