"""
Reports Stripe rejects for configuration (issue 10, item 8): the run fails
with a reason an operator can act on, the rejected usage is not counted as
billed, and once the tenant is fixed a retry sends the usage to the tenant's
current customer and meter, exactly once.
"""

from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from billing.audit import Actor
from billing.models import AuditLog, StripeReport, SyncRun
from billing.services import InvalidTransition, tenant_update
from billing.stripe_sink import report_retry
from billing.sync import sync_tenant
from tests.billing.sync.conftest import METER_EVENT, noon
from tests.factories import MembershipFactory, UserFactory

GONE_CUSTOMER = "cus_gone0000000001"
CUSTOMER_REJECTED = (
    "Stripe rejected 2 report(s): HTTP 400 meter_event_customer_not_found "
    "(param payload[stripe_customer_id]); set the tenant's Stripe customer id "
    "to an existing customer, then retry the failed reports"
)
METER_REJECTED = (
    "Stripe rejected 2 report(s): HTTP 400 no_meter (param event_name); set the "
    "tenant's meter event name to an active Stripe meter, then retry the failed "
    "reports"
)


def _days_of_traces(world, tenant, days=2, per_day=5, first_day=0):
    for day in range(first_day, first_day + days):
        for n in range(per_day):
            world.trace(tenant, start=noon(day) - timedelta(minutes=n))


def _update(tenant, **fields):
    return tenant_update(tenant=tenant, actor=Actor.system(), **fields)


def _retry_failed(actor=None) -> int:
    actor = actor or Actor.system()
    failed = StripeReport.objects.filter(status="failed").values_list("pk", flat=True)
    return sum(report_retry(report_id=pk, actor=actor) for pk in failed)


def assert_billed_exactly_once(world, tenant):
    tenant.refresh_from_db()
    assert not StripeReport.objects.filter(status__in=["pending", "failed"]).exists()
    identifiers = [e["identifier"] for e in world.stripe.meter_events()]
    assert len(identifiers) == len(set(identifiers)) == StripeReport.objects.count()
    assert world.stripe_total(tenant) == world.sent_units(tenant)
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant) > 0


def test_a_missing_customer_fails_the_run_then_a_retry_bills_the_new_one_once(world):
    tenant = _update(
        world.tenant("acme", customer=False), stripe_customer_id=GONE_CUSTOMER
    )
    _days_of_traces(world, tenant)

    run = sync_tenant(tenant_id=tenant.pk)

    assert run.status == SyncRun.Status.FAILED
    assert run.error == CUSTOMER_REJECTED
    # Batched is not billed: nothing reached Stripe.
    assert (run.reports_created, run.reports_sent, run.failed) == (2, 0, 2)
    assert run.billed == 0
    for report in StripeReport.objects.all():
        assert report.status == "failed"
        assert report.last_error == (
            "stripe: HTTP 400 meter_event_customer_not_found (param "
            "payload[stripe_customer_id]); set the tenant's Stripe customer id to "
            "an existing customer, then retry the failed reports"
        )
        assert GONE_CUSTOMER not in report.last_error
    # Failed reports wait for an operator: the next sync does not resend them.
    again = sync_tenant(tenant_id=tenant.pk)
    assert (again.status, again.stripe_calls) == (SyncRun.Status.SUCCEEDED, 0)
    assert StripeReport.objects.filter(status="failed").count() == 2

    customer = world.stripe.create_customer(name="acme")["id"]
    tenant = _update(tenant, stripe_customer_id=customer)
    assert _retry_failed() == 2
    assert _retry_failed() == 0  # a second click changes nothing
    retried = sync_tenant(tenant_id=tenant.pk)

    assert retried.status == SyncRun.Status.SUCCEEDED, retried.error
    assert (retried.billed, retried.reports_sent, retried.failed) == (10, 2, 0)
    assert set(
        StripeReport.objects.values_list("stripe_customer_id", "event_name")
    ) == {(customer, METER_EVENT)}
    assert world.stripe.total_value(customer=GONE_CUSTOMER, event_name=METER_EVENT) == 0
    # A fresh key per send: nothing replayed, nothing refused as a duplicate.
    stats = world.stripe.stats()
    assert (stats.idempotent_replays, stats.duplicates_rejected) == (0, 0)
    assert_billed_exactly_once(world, tenant)
    entries = AuditLog.objects.filter(action="report.retry")
    assert entries.count() == 2
    entry = entries.first()
    assert entry.before["stripe_customer_id"] == GONE_CUSTOMER
    assert entry.after == {
        "status": "pending",
        "stripe_customer_id": customer,
        "event_name": METER_EVENT,
    }
    assert sync_tenant(tenant_id=tenant.pk).stripe_calls == 0
    assert_billed_exactly_once(world, tenant)


def test_a_missing_meter_fails_the_run_then_a_retry_uses_the_fixed_event_name(world):
    tenant = _update(world.tenant("acme"), stripe_meter_event_name="llm_usage_v2")
    _days_of_traces(world, tenant)

    run = sync_tenant(tenant_id=tenant.pk)

    assert run.status == SyncRun.Status.FAILED
    assert run.error == METER_REJECTED
    assert (run.billed, run.failed) == (0, 2)
    assert world.stripe_total(tenant) == 0

    tenant = _update(tenant, stripe_meter_event_name=METER_EVENT)
    assert _retry_failed() == 2
    retried = sync_tenant(tenant_id=tenant.pk)

    assert retried.status == SyncRun.Status.SUCCEEDED, retried.error
    assert (retried.billed, retried.reports_sent) == (10, 2)
    assert set(StripeReport.objects.values_list("event_name", flat=True)) == {
        METER_EVENT
    }
    assert_billed_exactly_once(world, tenant)


def test_billed_counts_the_records_sent_not_the_records_batched(world):
    tenant = world.tenant("acme", sync_concurrency=1)
    good_customer = tenant.stripe_customer_id
    _days_of_traces(world, tenant, days=1, per_day=3, first_day=2)
    # Stripe is down for the first run: the report is batched, left pending.
    world.stripe.fail_next("503", times=5, path="/v1/billing/meter_events")
    down = sync_tenant(tenant_id=tenant.pk)
    assert (down.status, down.billed, down.reports_created) == ("failed", 0, 1)

    # Then the customer id is broken, and new usage arrives.
    tenant = _update(tenant, stripe_customer_id=GONE_CUSTOMER)
    for _ in range(4):
        # Within the sync's overlap behind the cursor, and settled.
        world.trace(tenant, start=timezone.now() - timedelta(minutes=3))
    mixed = sync_tenant(tenant_id=tenant.pk)

    # The pending report (old customer) went; the new one was rejected.
    assert mixed.status == SyncRun.Status.FAILED
    assert mixed.error.startswith("Stripe rejected 1 report(s): HTTP 400")
    assert (mixed.reports_created, mixed.reports_sent, mixed.failed) == (1, 1, 1)
    assert mixed.billed == 3

    tenant = _update(tenant, stripe_customer_id=good_customer)
    assert _retry_failed() == 1
    fixed = sync_tenant(tenant_id=tenant.pk)
    assert (fixed.status, fixed.billed) == (SyncRun.Status.SUCCEEDED, 4)
    assert_billed_exactly_once(world, tenant)


def test_a_retry_needs_somewhere_to_send_the_report(world):
    tenant = _update(world.tenant("acme"), stripe_meter_event_name="nope")
    _days_of_traces(world, tenant, days=1)
    sync_tenant(tenant_id=tenant.pk)
    report = StripeReport.objects.get()
    _update(tenant, stripe_customer_id="")

    with pytest.raises(InvalidTransition, match="has no Stripe customer id"):
        report_retry(report_id=report.pk, actor=Actor.system())

    report.refresh_from_db()
    assert report.status == "failed"
    assert not AuditLog.objects.filter(action="report.retry").exists()


def test_the_admin_retry_action_goes_through_the_service(world, client):
    tenant = _update(world.tenant("acme"), stripe_meter_event_name="llm_usage_v2")
    _days_of_traces(world, tenant)
    sync_tenant(tenant_id=tenant.pk)
    tenant = _update(tenant, stripe_meter_event_name=METER_EVENT)
    user = UserFactory(is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_stripereport"))
    MembershipFactory(user=user, tenant=tenant, role="operator")
    client.force_login(user)

    response = client.post(
        reverse("admin:billing_stripereport_changelist"),
        {
            "action": "retry",
            "_selected_action": list(StripeReport.objects.values_list("pk", flat=True)),
        },
    )

    assert response.status_code == 302
    assert StripeReport.objects.filter(status="pending").count() == 2
    entry = AuditLog.objects.filter(action="report.retry").first()
    assert (entry.actor, entry.actor_kind) == (user, "staff")
    assert sync_tenant(tenant_id=tenant.pk).status == SyncRun.Status.SUCCEEDED
    assert_billed_exactly_once(world, tenant)


def test_sync_billing_exits_non_zero_naming_the_failed_tenants(world):
    healthy = world.tenant("healthy")
    broken = _update(world.tenant("broken"), stripe_meter_event_name="nope")
    _days_of_traces(world, healthy, days=1)
    _days_of_traces(world, broken, days=1)
    out = StringIO()

    with pytest.raises(CommandError) as raised:
        call_command("sync_billing", stdout=out)

    assert str(raised.value) == "sync failed for 1 tenant(s): broken"
    assert "healthy: succeeded" in out.getvalue()
    assert "broken: failed" in out.getvalue()
    assert "Stripe rejected 1 report(s): HTTP 400 no_meter" in out.getvalue()
    assert world.stripe_total(healthy) == world.ledger_micro_usd(healthy) > 0
    # Only the broken tenant makes the command fail.
    call_command("sync_billing", "--tenant", "healthy", stdout=StringIO())
