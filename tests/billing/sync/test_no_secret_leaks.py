"""
A canary key through every error path: it must not reach a log line, a stored
error, an audit row, a job result or an exception's text.
"""

import json
import logging

import pytest
from django.core import serializers

from billing.emulators.base import Faults
from billing.jobs import sync_tenant_job
from billing.models import AuditLog, StripeReport, SyncRun
from billing.sync import sync_tenant

LANGFUSE_CANARY = "sk-lf-canary-7f3a9c1e5b"
STRIPE_CANARY = "sk_test_canary_stripe_key_9d2b"


def _stored_text() -> str:
    rows = [
        *SyncRun.objects.all(),
        *StripeReport.objects.all(),
        *AuditLog.objects.all(),
    ]
    return serializers.serialize("json", rows)


def _assert_clean(*texts: str) -> None:
    for text in texts:
        for canary in (LANGFUSE_CANARY, STRIPE_CANARY):
            assert canary not in text
            assert canary[-4:] not in text, f"key fragment {canary[-4:]!r} leaked"


@pytest.fixture
def captured_logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


def _rendered(caplog) -> str:
    formatter = logging.Formatter("%(message)s")
    return "\n".join(formatter.format(record) for record in caplog.records)


@pytest.mark.parametrize(
    "scenario",
    ["langfuse_401", "stripe_401", "langfuse_5xx", "langfuse_reset", "stripe_400"],
)
def test_a_canary_key_never_leaks(world, settings, captured_logs, scenario):
    tenant = world.tenant("acme")
    world.trace(tenant)
    if scenario == "langfuse_401":
        tenant.langfuse_secret_key = LANGFUSE_CANARY  # the emulator rejects it
        tenant.save()
    else:
        world.langfuse.add_project(
            public_key="pk-lf-canary", secret_key=LANGFUSE_CANARY
        )
        tenant.langfuse_public_key = "pk-lf-canary"
        tenant.langfuse_secret_key = LANGFUSE_CANARY
        tenant.save()
        world.trace(tenant)
    if scenario == "stripe_401":
        settings.STRIPE_API_KEY = STRIPE_CANARY  # the emulator echoes a fragment
    if scenario == "langfuse_5xx":
        world.langfuse.faults = Faults(rate_5xx=1.0)
    if scenario == "langfuse_reset":
        world.langfuse.faults = Faults(rate_reset=1.0)
    if scenario == "stripe_400":
        tenant.stripe_customer_id = "cus_doesnotexist"
        tenant.save()

    result = sync_tenant_job(tenant.pk)
    run = SyncRun.objects.get(pk=result["sync_run_id"])

    assert run.status == "failed" or StripeReport.objects.filter(status="failed")
    _assert_clean(
        _rendered(captured_logs),
        _stored_text(),
        json.dumps(result),
        run.error,
    )


def test_provider_errors_carry_status_and_code_only(world, settings):
    settings.STRIPE_API_KEY = STRIPE_CANARY
    tenant = world.tenant("acme")
    world.trace(tenant)

    run = sync_tenant(tenant_id=tenant.pk)

    assert run.error == "stripe: HTTP 401"
    report = StripeReport.objects.get()
    assert (report.status, report.last_error) == (
        "pending",
        "stripe: credentials rejected",
    )
