"""
Unknown outcomes at Stripe (issue 10, item 7): a meter event Stripe recorded
but answered with a 500, a cut body or a dropped connection is billed exactly
once, and the report ends sent, never failed or stuck pending.

Stripe saves the first answer of an Idempotency-Key, 500s included, so the
sender retries such an outcome with the same identifier under a new key and
reads the duplicate-identifier refusal as "recorded". Every shape of that
refusal (our emulator's, the OpenAPI spec's, the message-only one the v1
endpoint has been seen to send) must be read so.
"""

from datetime import timedelta

import pytest

from billing import provider_calls
from billing.emulators.base import EmulatorServer
from billing.models import StripeReport, SyncRun
from billing.stripe_sink import idempotency_key
from billing.sync import sync_tenant
from tests.billing.sync.conftest import noon

METER_EVENTS = "/v1/billing/meter_events"
DUPLICATE_SHAPES = ["resource_already_exists", "duplicate_meter_event", "message_only"]


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    # The retry logic is untouched; only its sleeps are shortened.
    monkeypatch.setattr(provider_calls, "TRANSIENT_BACKOFF_BASE", 0.001)


@pytest.fixture(params=DUPLICATE_SHAPES)
def duplicate_shape(request, world):
    world.stripe.duplicate_error = request.param
    return request.param


def _days_of_traces(world, tenant, days=2, per_day=5):
    for day in range(days):
        for n in range(per_day):
            world.trace(tenant, start=noon(day) - timedelta(minutes=n))


def assert_billed_exactly_once(world, tenant):
    """Stripe's total is the ledger's to the unit; nothing left to chase."""
    tenant.refresh_from_db()
    assert not StripeReport.objects.filter(status__in=["pending", "failed"]).exists()
    events = world.stripe.meter_events()
    identifiers = [event["identifier"] for event in events]
    assert len(identifiers) == len(set(identifiers))
    assert sorted(identifiers) == sorted(
        StripeReport.objects.filter(value__gt=0).values_list("identifier", flat=True)
    )
    assert world.stripe_total(tenant) == world.sent_units(tenant)
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant) > 0


def test_a_500_after_commit_is_retried_under_a_new_key_and_billed_once(
    world, duplicate_shape
):
    tenant = world.tenant("acme", sync_concurrency=1)
    _days_of_traces(world, tenant)
    world.stripe.fail_next("500_after_commit", path=METER_EVENTS)

    run = sync_tenant(tenant_id=tenant.pk)

    assert run.status == SyncRun.Status.SUCCEEDED, run.error
    assert (run.billed, run.reports_sent, run.failed) == (10, 2, 0)
    stats = world.stripe.stats()
    # The retry was a new key (no replay of the saved 500), and Stripe
    # refused the identifier it already had: that refusal is "recorded".
    assert (stats.idempotent_replays, stats.duplicates_rejected) == (0, 1)
    assert_billed_exactly_once(world, tenant)


def test_a_500_after_commit_outlasting_a_run_is_recorded_once_by_the_next(
    world, duplicate_shape
):
    tenant = world.tenant("acme")
    _days_of_traces(world, tenant, days=1)
    world.stripe.fail_next("500_after_commit", path=METER_EVENTS)
    retries = provider_calls.MAX_TRANSIENT_ATTEMPTS - 1
    world.stripe.fail_next("503", times=retries, path=METER_EVENTS)

    first = sync_tenant(tenant_id=tenant.pk)

    assert first.status == SyncRun.Status.FAILED
    assert first.error == "1 report(s) left pending after retries"
    assert first.billed == 0  # nothing known to be sent yet
    report = StripeReport.objects.get()
    assert (report.status, report.attempts) == ("pending", 1)
    assert report.last_error == (
        f"stripe: HTTP 503 after {retries + 1} tries; the next sync retries it"
    )
    assert len(world.stripe.meter_events()) == 1  # Stripe has it already

    second = sync_tenant(tenant_id=tenant.pk)

    assert second.status == SyncRun.Status.SUCCEEDED, second.error
    assert (second.billed, second.reports_sent) == (5, 1)
    assert world.stripe.stats().idempotent_replays == 0
    assert world.stripe.stats().duplicates_rejected == 1
    assert_billed_exactly_once(world, tenant)


def test_a_200_with_a_cut_body_is_sent_not_failed(world, duplicate_shape):
    tenant = world.tenant("acme", sync_concurrency=1)
    _days_of_traces(world, tenant)
    world.stripe.fail_next("cut_body", path=METER_EVENTS)

    run = sync_tenant(tenant_id=tenant.pk)

    assert run.status == SyncRun.Status.SUCCEEDED, run.error
    assert (run.billed, run.reports_sent, run.failed) == (10, 2, 0)
    assert world.stripe.stats().duplicates_rejected == 1
    assert StripeReport.objects.filter(status="sent").count() == 2
    assert_billed_exactly_once(world, tenant)


def test_an_unreadable_duplicate_refusal_is_retried_not_failed(world, duplicate_shape):
    tenant = world.tenant("acme", sync_concurrency=1)
    _days_of_traces(world, tenant, days=1)
    world.stripe.fail_next("500_after_commit", path=METER_EVENTS)
    # The refusal that would say "recorded" arrives cut: a 400 nobody can read.
    world.stripe.fail_next("cut_body", path=METER_EVENTS)

    run = sync_tenant(tenant_id=tenant.pk)

    assert run.status == SyncRun.Status.SUCCEEDED, run.error
    assert (run.reports_sent, run.failed) == (1, 0)
    assert world.stripe.stats().count(f"POST {METER_EVENTS}", 400) == 2
    assert_billed_exactly_once(world, tenant)


def test_a_connection_lost_after_commit_is_billed_once(world, duplicate_shape):
    tenant = world.tenant("acme", sync_concurrency=1)
    _days_of_traces(world, tenant)
    world.stripe.fail_next(
        "reset", after_processing=True, method="POST", path=METER_EVENTS
    )

    run = sync_tenant(tenant_id=tenant.pk)

    assert run.status == SyncRun.Status.SUCCEEDED, run.error
    assert (run.billed, run.reports_sent) == (10, 2)
    assert world.stripe.stats().count(f"POST {METER_EVENTS}", "reset") == 1
    assert world.stripe.stats().duplicates_rejected == 1
    assert_billed_exactly_once(world, tenant)


class RecordingEmulator:
    """Pass requests through to the emulator; keep each meter event's key."""

    def __init__(self, emulator):
        self.emulator = emulator
        self.keys = []

    def handle(self, request):
        if request.path == METER_EVENTS:
            form = request.form()
            self.keys.append(
                (form["identifier"][0], request.headers.get("idempotency-key"))
            )
        return self.emulator.handle(request)


def test_every_try_and_every_run_uses_a_new_deterministic_key(world, settings):
    tenant = world.tenant("acme")
    _days_of_traces(world, tenant, days=1)
    world.stripe.fail_next("500_after_commit", path=METER_EVENTS)
    world.stripe.fail_next("503", times=4, path=METER_EVENTS)
    recorder = RecordingEmulator(world.stripe)
    with EmulatorServer(recorder) as server:
        settings.STRIPE_API_BASE = server.url
        sync_tenant(tenant_id=tenant.pk)
        sync_tenant(tenant_id=tenant.pk)

    report = StripeReport.objects.get()
    assert report.status == "sent"
    assert [identifier for identifier, _ in recorder.keys] == [report.identifier] * 6
    keys = [key for _, key in recorder.keys]
    assert keys == [idempotency_key(report.identifier, 0, n) for n in range(5)] + [
        idempotency_key(report.identifier, 1, 0)
    ]
    assert len(set(keys)) == 6
    assert_billed_exactly_once(world, tenant)


def test_a_connection_lost_on_every_try_is_billed_once_by_the_next_run(
    world, duplicate_shape
):
    tenant = world.tenant("acme")
    _days_of_traces(world, tenant, days=1)
    # Stripe records the first try; every answer of the run is lost.
    tries = provider_calls.MAX_TRANSIENT_ATTEMPTS
    world.stripe.fail_next(
        "reset", times=tries, after_processing=True, method="POST", path=METER_EVENTS
    )
    first = sync_tenant(tenant_id=tenant.pk)
    assert first.status == SyncRun.Status.FAILED
    assert StripeReport.objects.get().status == "pending"
    assert len(world.stripe.meter_events()) == 1

    second = sync_tenant(tenant_id=tenant.pk)

    assert second.status == SyncRun.Status.SUCCEEDED, second.error
    assert second.billed == 5
    assert_billed_exactly_once(world, tenant)


def test_an_outcome_unknown_for_a_day_goes_to_an_operator_not_to_stripe(world):
    import time_machine
    from django.utils import timezone

    from billing.emulators.base import Faults

    tenant = world.tenant("acme")
    world.trace(tenant)
    world.stripe.faults = Faults(rate_5xx=1.0)
    sync_tenant(tenant_id=tenant.pk)
    report = StripeReport.objects.get()
    assert (report.status, report.attempts) == ("pending", 1)

    # Stripe comes back 21 hours later: it may have recorded the first try
    # and no longer remember its identifier, so a re-send could bill twice.
    world.stripe.faults = Faults()
    with time_machine.travel(timezone.now() + timedelta(hours=21)):
        run = sync_tenant(tenant_id=tenant.pk)

    report.refresh_from_db()
    assert report.status == "failed"
    assert report.last_error.startswith("outcome unknown for over 20 hours; ")
    assert run.status == SyncRun.Status.FAILED
    assert world.stripe.meter_events() == []
    tenant.refresh_from_db()
    assert tenant.sync_problem.startswith("1 Stripe report(s) failed")
