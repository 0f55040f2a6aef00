"""GET /health: whether this instance serves, and with the token, the pipeline."""

from datetime import timedelta

import pytest
from django.utils import timezone

from billing.models import StripeReport, SyncCursor
from billing.stripe_sink import reports_create
from tests.factories import TenantFactory, ledger_write, trace_usage

pytestmark = pytest.mark.django_db

TOKEN = "monitoring-token-for-tests"
GPT = ["gpt-4o", 1000, 100, 50, "0.0100", "price_table"]


@pytest.fixture(autouse=True)
def monitoring_token(settings):
    settings.HEALTH_TOKEN = TOKEN


def get(client, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.get("/health", headers=headers)


def watermark(tenant, ago: timedelta) -> None:
    SyncCursor.objects.update_or_create(
        tenant=tenant, defaults={"watermark": timezone.now() - ago}
    )


def test_without_the_token_it_says_only_whether_it_serves(client, tenant):
    watermark(tenant, timedelta(hours=5))
    response = get(client)
    assert response.status_code == 200
    body = response.json()
    # The public answer is the instance's alone: no tenant is looked at.
    assert body["status"] == "ok"
    assert body["database"]["ok"] and body["redis"]["ok"]
    assert "tenants" not in body and "queues" not in body
    assert response["Cache-Control"] == "no-store"


def test_a_wrong_token_is_refused(client):
    assert get(client, "guess").status_code == 401


def test_a_stalled_tenant_makes_it_degraded_and_is_named(client, queue):
    stalled, moving = TenantFactory(slug="stalled"), TenantFactory(slug="moving")
    watermark(stalled, timedelta(hours=2))
    watermark(moving, timedelta(minutes=2))
    response = get(client, TOKEN)
    assert response.status_code == 200  # the instance still serves
    body = response.json()
    assert body["status"] == "degraded"
    tenants = {t["tenant"]: t for t in body["tenants"]}
    assert (
        tenants["stalled"]["stalled"] and tenants["stalled"]["sync_lag_seconds"] >= 7200
    )
    assert not tenants["moving"]["stalled"]
    assert 110 <= tenants["moving"]["sync_lag_seconds"] <= 130
    assert body["queues"] == {"default": 0}


def test_a_tenant_that_never_synced_is_stalled(client, tenant):
    [row] = get(client, TOKEN).json()["tenants"]
    assert (row["sync_lag_seconds"], row["stalled"]) == (None, True)


def test_a_report_stuck_in_the_outbox_makes_it_degraded(client, tenant):
    watermark(tenant, timedelta(minutes=1))
    ledger_write(
        tenant, trace_usage("t1", {"o1": GPT}, at=timezone.now() - timedelta(days=1))
    )
    reports_create(tenant=tenant)  # a pending report, not sent yet
    assert get(client, TOKEN).json()["status"] == "ok"
    StripeReport.objects.update(created_at=timezone.now() - timedelta(hours=3))
    body = get(client, TOKEN).json()
    assert body["status"] == "degraded"
    assert body["oldest_unreported_seconds"] >= 3 * 3600
    assert body["tenants"][0]["oldest_unreported_seconds"] >= 3 * 3600


def test_redis_down_is_degraded_but_the_instance_serves(client, settings):
    settings.RQ_QUEUES = {"default": {"URL": "redis://127.0.0.1:1/0"}}
    response = get(client)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert (body["redis"]["ok"], body["redis"]["error"]) == (False, "ConnectionError")
    assert body["database"]["ok"]


def test_a_token_that_is_not_ascii_is_refused_not_a_crash(client):
    response = client.get("/health", headers={"Authorization": "Bearer tökén"})
    assert response.status_code == 401


def test_it_answers_over_plain_http_where_everything_else_redirects(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert get(client).status_code == 200
    assert client.get("/admin/login/").status_code == 301


def test_the_web_role_sees_every_tenant_s_lag(client, tenant, as_app_role):
    watermark(tenant, timedelta(minutes=3))
    as_app_role()  # which cannot lift row-level security
    [row] = get(client, TOKEN).json()["tenants"]
    assert 170 <= row["sync_lag_seconds"] <= 190
