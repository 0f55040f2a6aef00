"""
Reconciling the ledger with Stripe (issue 15, item 1): a report Stripe lost
is found and sent again with its identifier, and its day then matches; units
Stripe holds beyond what was sent are reported, never deleted.
"""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from billing.audit import Actor
from billing.models import AuditLog, StripeReconciliation, StripeReport
from billing.stripe_reconcile import stripe_reconcile
from billing.sync import sync_tenant
from tests.billing.sync.conftest import METER_EVENT, noon

JOB = Actor.job("reconcile-test")


@pytest.fixture
def billed(world):
    """acme, with two days billed: yesterday and the day before."""
    tenant = world.tenant("acme")
    for day in (0, 1):
        for n in range(3):
            world.trace(tenant, start=noon(day) - timedelta(minutes=n))
    assert sync_tenant(tenant_id=tenant.pk).status == "succeeded"
    return tenant


def day_of(days_ago):
    return noon(days_ago).date()


def test_a_billed_day_matches_stripe(world, billed):
    result = stripe_reconcile(tenant=billed, day=day_of(0), fix=True, actor=JOB)
    assert result.status == StripeReconciliation.Status.MATCH
    assert result.sent_value == result.stripe_value > 0
    assert result.unreported_amount == 0
    assert result.ledger_amount == result.reported_amount
    assert result.details == {}


def test_a_report_stripe_lost_is_resent_with_its_identifier_and_the_day_matches(
    world, billed
):
    lost = StripeReport.objects.get(day=day_of(1))
    world.stripe.lose_meter_event(lost.identifier)
    assert world.stripe_total(billed) < world.sent_units(billed)

    found = stripe_reconcile(tenant=billed, day=day_of(1), fix=False, actor=JOB)
    assert found.status == StripeReconciliation.Status.DRIFT
    assert found.details == {"missing": [lost.identifier]}
    assert found.drift_value == -lost.value
    # The other day is untouched by the loss.
    other = stripe_reconcile(tenant=billed, day=day_of(0), fix=False, actor=JOB)
    assert other.status == StripeReconciliation.Status.MATCH

    # The nightly job sends pending reports, but a lost one is an operator's
    # call: usage removed in Stripe on purpose looks the same.
    nightly = stripe_reconcile(tenant=billed, day=day_of(1), fix=True, actor=JOB)
    assert nightly.details == {"missing": [lost.identifier]}
    assert not AuditLog.objects.filter(action="report.resend").exists()

    fixed = stripe_reconcile(
        tenant=billed, day=day_of(1), fix=True, resend_lost=True, actor=JOB
    )
    assert fixed.status == StripeReconciliation.Status.MATCH
    assert fixed.details == {"resent": [lost.identifier]}
    assert world.stripe_total(billed) == world.sent_units(billed)
    identifiers = [e["identifier"] for e in world.stripe.meter_events()]
    assert identifiers.count(lost.identifier) == 1
    lost.refresh_from_db()
    assert lost.status == StripeReport.Status.SENT
    assert AuditLog.objects.filter(
        action="report.resend", object_id=str(lost.pk)
    ).exists()
    # One row per tenant-day, updated by each check.
    assert StripeReconciliation.objects.filter(day=day_of(1)).count() == 1


def test_units_stripe_holds_beyond_the_outbox_are_reported_not_deleted(
    world, billed, stripe_client
):
    before = world.stripe_total(billed)
    stripe_client.v1.billing.meter_events.create(
        params={
            "event_name": METER_EVENT,
            "identifier": "sent-by-someone-else",
            "timestamp": int(noon(0).timestamp()),
            "payload": {"stripe_customer_id": billed.stripe_customer_id, "value": "7"},
        }
    )
    result = stripe_reconcile(
        tenant=billed, day=day_of(0), fix=True, resend_lost=True, actor=JOB
    )
    assert result.status == StripeReconciliation.Status.DRIFT
    assert result.details == {"unexpected": 7}
    assert world.stripe_total(billed) == before + 7
    assert "resent" not in result.details


def test_the_command_reports_each_tenant_day_and_fails_on_drift(world, billed):
    days = ["--tenant", "acme", "--since", day_of(1).isoformat()]
    days += ["--until", day_of(0).isoformat()]
    out = StringIO()
    call_command("reconcile_stripe", *days, stdout=out)
    assert "2 of 2 tenant-days match Stripe." in out.getvalue()
    world.stripe.lose_meter_event(StripeReport.objects.get(day=day_of(0)).identifier)
    with pytest.raises(CommandError, match="1 tenant-day"):
        call_command("reconcile_stripe", *days, "--check-only", stdout=StringIO())
    out = StringIO()
    call_command("reconcile_stripe", *days, "--resend-lost", stdout=out)
    assert "2 of 2 tenant-days match Stripe." in out.getvalue()


def test_a_replaced_meter_keeps_its_events_and_nothing_is_resent(
    world, billed, stripe_client
):
    # The meter is deactivated and a new one made for the same event name:
    # the day's events are in the old meter's summaries, not lost.
    [old] = world.stripe.meters()
    stripe_client.v1.billing.meters.deactivate(old["id"])
    world.stripe.create_meter(event_name=METER_EVENT)
    result = stripe_reconcile(
        tenant=billed, day=day_of(0), fix=True, resend_lost=True, actor=JOB
    )
    assert result.status == StripeReconciliation.Status.MATCH
    assert not AuditLog.objects.filter(action="report.resend").exists()


def test_no_meter_for_the_event_is_unknown_not_a_loss(world, billed):
    StripeReport.objects.update(event_name="renamed_meanwhile")
    result = stripe_reconcile(
        tenant=billed, day=day_of(0), fix=True, resend_lost=True, actor=JOB
    )
    assert result.status == StripeReconciliation.Status.DRIFT
    assert result.details == {"unknown_meter": "renamed_meanwhile"}
    assert not AuditLog.objects.filter(action="report.resend").exists()
