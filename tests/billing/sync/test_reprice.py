"""
Repricing a period (issue 15, item 3): the exact difference per tenant, day
and model; --apply records it as adjustments billed as their own meter
events, and nothing already reported is edited.
"""

from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db.models import Sum
from django.utils import timezone

from billing.audit import Actor
from billing.models import (
    AuditLog,
    ModelPrice,
    StripeReconciliation,
    StripeReport,
    SyncRun,
    UsageAdjustment,
    UsageRecord,
)
from billing.price_table import model_price_save
from billing.reprice import (
    HELD,
    LANGFUSE_PRICED,
    NO_PRICE,
    NO_USAGE,
    ledger_reprice,
)
from billing.stripe_reconcile import stripe_reconcile
from billing.sync import sync_tenant
from tests.billing.sync.conftest import noon
from tests.factories import ledger_write, trace_usage

GPT = ("gpt-4o", 1000, 100, 0)  # $0.0025 + $0.001 = $0.0035
MINI = ("gpt-4o-mini", 1000, 100, 0)
OPERATOR = Actor.system()


def gpt_4o_price() -> tuple[ModelPrice, dict[str, Decimal]]:
    """The gpt-4o price row and its unit prices."""
    gpt = ModelPrice.objects.get(model_name="gpt-4o")
    return gpt, {unit.usage_key: unit.price for unit in gpt.unit_prices.all()}


def set_gpt_4o_output_price(price: str) -> ModelPrice:
    gpt, units = gpt_4o_price()
    return model_price_save(
        price=gpt, unit_prices={**units, "output": Decimal(price)}, actor=OPERATOR
    )


def reprice(*args: str) -> str:
    out = StringIO()
    call_command("reprice", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def billed(world):
    """acme: gpt-4o and gpt-4o-mini billed on two days; a gpt-4o trace runs."""
    tenant = world.tenant("acme")
    for n in range(3):
        world.trace(tenant, start=noon(0) + timedelta(minutes=n), generations=[GPT])
    world.trace(tenant, start=noon(0), generations=[MINI])
    for n in range(2):
        world.trace(tenant, start=noon(1) + timedelta(minutes=n), generations=[GPT])
    assert sync_tenant(tenant_id=tenant.pk).status == "succeeded"
    # Still running: priced, not billed yet.
    world.trace(tenant, trace_id="fresh", generations=[GPT], ended=False)
    sync_tenant(tenant_id=tenant.pk)
    assert UsageRecord.objects.get(trace_id="fresh").status == "pending"
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)
    return tenant


def period() -> list[str]:
    return ["--since", str(noon(1).date()), "--until", str(timezone.now().date())]


def test_reprice_prints_the_exact_difference_and_writes_nothing(world, billed):
    records = list(UsageRecord.objects.values_list("id", "cost", "content_hash"))
    set_gpt_4o_output_price("0.000012")  # $0.0012 for 100 tokens, was $0.001

    out = reprice("--tenant", "acme", *period())

    today = timezone.now().date()
    assert (
        f"acme             {noon(1).date()}  gpt-4o                                2 "
        "          $0.007          $0.0074         +$0.0004"
    ) in out
    assert (
        f"acme             {noon(0).date()}  gpt-4o                                3 "
        "         $0.0105          $0.0111         +$0.0006"
    ) in out
    assert f"acme             {today}  gpt-4o                                1 " in out
    assert "gpt-4o-mini" not in out  # its price did not change
    assert (
        "acme: +$0.0012: reported usage +$0.001 (would be adjustments), "
        "unbilled usage +$0.0002 (would be repriced in place); "
        "1 observation(s) unchanged." in out
    )
    assert "Difference in all: +$0.0012." in out
    assert not UsageAdjustment.objects.exists()
    assert list(UsageRecord.objects.values_list("id", "cost", "content_hash")) == (
        records
    )


def test_apply_records_adjustments_equal_to_the_difference_billed_once(world, billed):
    reported = {
        r.pk: (r.cost, r.observations, r.report_id)
        for r in UsageRecord.objects.filter(status="reported")
    }
    set_gpt_4o_output_price("0.000012")
    dry = ledger_reprice(
        tenant=billed,
        since=noon(1).date(),
        until=timezone.now().date(),
        apply=False,
        actor=OPERATOR,
    )

    out = reprice("--tenant", "acme", *period(), "--apply")

    adjustments = UsageAdjustment.objects.all()
    assert adjustments.count() == 5  # one per reported gpt-4o trace
    assert (
        adjustments.aggregate(total=Sum("cost"))["total"]
        == (dry.billed_difference)
        == Decimal("0.0010")
    )
    assert {a.status for a in adjustments} == {"pending"}
    assert {a.input_tokens + a.output_tokens for a in adjustments} == {0}
    assert "reported usage +$0.001 in 5 adjustment(s)" in out
    assert "unbilled usage +$0.0002 repriced in place in 1 record(s)" in out
    # Nothing reported was edited; the unbilled record now has the new price.
    for record in UsageRecord.objects.filter(pk__in=reported):
        assert (record.cost, record.observations, record.report_id) == (
            reported[record.pk]
        )
    assert UsageRecord.objects.get(trace_id="fresh").cost == Decimal("0.0037")
    audit = AuditLog.objects.get(action="ledger.reprice")
    assert audit.tenant == billed
    assert audit.after["adjustments"] == 5
    assert audit.after["billed_difference"] == "0.0010000000"

    # A second run finds nothing left to correct.
    again = reprice("--tenant", "acme", *period(), "--apply")
    assert "Difference in all: +$0.00." in again
    assert UsageAdjustment.objects.count() == 5

    # The next sync bills them as their own meter events, on their days.
    events = len(world.stripe.meter_events())
    sync_tenant(tenant_id=billed.pk)
    for day in (noon(0).date(), noon(1).date()):
        report = StripeReport.objects.get(day=day, adjustment_count__gt=0)
        assert report.record_count == 0
        assert report.status == "sent"
        result = stripe_reconcile(tenant=billed, day=day, fix=False, actor=OPERATOR)
        assert result.status == StripeReconciliation.Status.MATCH
    assert len(world.stripe.meter_events()) > events
    assert world.stripe_total(billed) == world.ledger_micro_usd(billed)


def test_only_usage_under_the_changed_period_is_repriced(world, billed):
    # A new price from the start of yesterday (noon(0)'s day): the day
    # before keeps the old one.
    start = noon(0).replace(hour=0)
    gpt, units = gpt_4o_price()
    gpt.valid_to = start
    model_price_save(price=gpt, unit_prices=units, actor=OPERATOR)
    model_price_save(
        price=ModelPrice(
            model_name="gpt-4o", match_pattern=gpt.match_pattern, valid_from=start
        ),
        unit_prices={**units, "output": Decimal("0.000012")},
        actor=OPERATOR,
    )

    result = ledger_reprice(
        tenant=billed,
        since=noon(1).date(),
        until=noon(0).date(),
        apply=True,
        actor=OPERATOR,
    )

    assert {day for day, _ in result.lines} == {noon(0).date()}
    assert result.billed_difference == Decimal("0.0006")
    assert {
        a.usage_record.trace_timestamp.date() for a in UsageAdjustment.objects.all()
    } == {noon(0).date()}


@pytest.mark.django_db
def test_what_cannot_be_repriced_is_kept_and_counted(tenant):
    at = noon(3)
    stamp = at.isoformat()
    old = ["gpt-4o", 1000, 100, 0, "0.0035", "price_table"]  # no usage kept
    langfuse = [
        "acme-private",
        10,
        5,
        0,
        "0.5",
        "langfuse",
        {"input": 10},
        None,
        stamp,
        "0.5",
    ]
    # A cost Langfuse ingested without usage: nothing of ours can price it.
    cost_only = ["", 0, 0, 0, "0.25", "langfuse", {}, None, stamp, "0.25"]
    held = ["acme-private", 10, 0, 0, "0", "none", {"input": 10}, None, stamp, None]
    ledger_write(
        tenant,
        trace_usage("t", {"o1": old, "o2": langfuse, "o3": cost_only}, at=at),
        trace_usage("held", {"o1": held}, at=at),
    )

    result = ledger_reprice(
        tenant=tenant, since=at.date(), until=at.date(), apply=True, actor=OPERATOR
    )

    assert result.difference == 0
    assert dict(result.kept) == {
        NO_USAGE: 1,
        LANGFUSE_PRICED: 2,
        HELD: 1,
    }
    assert not UsageAdjustment.objects.exists()


def test_a_price_change_alone_bills_nothing_until_repriced(world, billed):
    """Who priced an observation changing is not news to the sync's reconcile."""
    gpt, units = gpt_4o_price()
    # Our gpt-4o price ends before the billed usage: Langfuse's cost applies.
    gpt.valid_to = noon(2)
    model_price_save(price=gpt, unit_prices=units, actor=OPERATOR)
    sent = world.stripe_total(billed)

    sync_tenant(
        tenant_id=billed.pk, kind=SyncRun.Kind.RECONCILE, lookback=timedelta(days=4)
    )

    assert not UsageAdjustment.objects.exists()
    assert world.stripe_total(billed) == sent
    # Repricing is what moves billed usage to the prices in force.
    dry = ledger_reprice(
        tenant=billed,
        since=noon(1).date(),
        until=noon(0).date(),
        apply=False,
        actor=OPERATOR,
    )
    assert dry.kept == {NO_PRICE: 5}


def test_held_usage_released_by_a_new_price_is_priced_in_full_with_it(world):
    tenant = world.tenant("acme")
    world.trace(
        tenant,
        trace_id="mixed",
        start=noon(0),
        generations=[GPT, ("acme-ft-1", 1000, 0, 0, 0)],
    )
    sync_tenant(tenant_id=tenant.pk)
    assert UsageRecord.objects.get(trace_id="mixed").status == "unpriced"
    # Both prices change before the record is billed.
    set_gpt_4o_output_price("0.000012")
    model_price_save(
        price=ModelPrice(model_name="acme-ft-1", match_pattern="^acme-ft-1$"),
        unit_prices={"input": Decimal("0.000001")},
        actor=OPERATOR,
    )

    sync_tenant(
        tenant_id=tenant.pk, kind=SyncRun.Kind.RECONCILE, lookback=timedelta(days=2)
    )

    record = UsageRecord.objects.get(trace_id="mixed")
    assert record.status == "reported"
    assert record.cost == Decimal("0.0037") + Decimal("0.001")
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)


def test_bad_periods_are_refused(world, billed):
    too_old = str((timezone.now() - timedelta(days=40)).date())
    with pytest.raises(CommandError, match="up to 35 days old"):
        reprice("--since", too_old, "--until", str(noon(0).date()), "--apply")
    with pytest.raises(CommandError, match="after the last"):
        reprice("--since", str(noon(0).date()), "--until", str(noon(1).date()))
    with pytest.raises(CommandError, match="No tenant"):
        reprice("--tenant", "nobody", *period())
    # A dry run of an old period is fine: it only reads.
    assert "Difference in all: +$0.00." in reprice(
        "--since", too_old, "--until", str(noon(0).date())
    )
