"""
GET /api/v1/usage: one aggregate query over the daily scope usage, behind a
cache that ledger writes outdate, that runs the query once for many callers,
refreshes a hot entry in the background and survives Redis going away.
"""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial

import httpx
import psycopg
import pytest
from django.db import connection
from django.db.backends.signals import connection_created
from django.test.utils import CaptureQueriesContext

from billing import usage_cache
from billing.models import UsageRecord
from billing.tenancy import tenant_context
from billing.usage_summary import usage_period
from tests.factories import TenantFactory, ledger_write, trace_usage

AT = datetime(2026, 11, 20, 9, tzinfo=UTC)
# [model, input, output, cached, "cost", price source]
GPT = ["gpt-4o", 1000, 100, 50, "0.0100", "price_table"]
HAIKU = ["claude-3-5-haiku-20241022", 10, 5, 0, "0.0005", "price_table"]


trace = partial(trace_usage, at=AT)
merge = ledger_write


def get_usage(api, token, query="period=2026-11"):
    response = api("get", f"/usage?{query}", token)
    return response, response.json()


@pytest.fixture
def usage(tenant, other_tenant):
    merge(
        tenant,
        trace(
            "t1",
            {"o1": GPT, "o2": HAIKU},
            project_id="web",
            agent_id="bot",
            user_id="ann",
        ),
        trace("t2", {"o1": GPT}, project_id="web", agent_id="bot", user_id="bob"),
        trace("t3", {"o1": HAIKU}, project_id="api", agent_id="bot", epic_id="E-1"),
        trace("t4", {"o1": GPT}, at=AT - timedelta(days=30), project_id="web"),
    )
    merge(other_tenant, trace("x1", {"o1": GPT, "o2": GPT}, project_id="web"))


@pytest.mark.django_db
@pytest.mark.usefixtures("empty_cache", "usage")
def test_totals_per_model_and_per_scope_of_the_token_s_tenant_only(
    api, tenant, make_token
):
    response, body = get_usage(api, make_token(tenant))
    assert response.status_code == 200
    assert (body["period"], body["start"], body["end"]) == (
        "2026-11",
        "2026-11-01",
        "2026-11-30",
    )
    assert body["totals"] == {
        "cost": "0.0210000000",
        "traces": 3,
        "input_tokens": 2020,
        "output_tokens": 210,
        "cached_tokens": 100,
    }
    assert [(m["model"], m["cost"], m["traces"]) for m in body["models"]] == [
        ("gpt-4o", "0.0200000000", 2),
        ("claude-3-5-haiku-20241022", "0.0010000000", 2),
    ]
    projects = {
        p["scope_id"]: (p["cost"], p["traces"]) for p in body["scopes"]["project"]
    }
    assert projects == {"web": ("0.0205000000", 2), "api": ("0.0005000000", 1)}
    agents = {
        (a["project_id"], a["scope_id"]): a["traces"] for a in body["scopes"]["agent"]
    }
    assert agents == {("web", "bot"): 2, ("api", "bot"): 1}
    assert {u["scope_id"] for u in body["scopes"]["user"]} == {"ann", "bob"}
    assert [e["scope_id"] for e in body["scopes"]["epic"]] == ["E-1"]


@pytest.mark.django_db
@pytest.mark.usefixtures("empty_cache", "usage")
def test_another_tenant_s_token_never_sees_this_usage(api, other_tenant, make_token):
    _, body = get_usage(api, make_token(other_tenant))
    assert body["tenant_id"] == other_tenant.pk
    assert body["totals"]["cost"] == "0.0200000000"
    assert [p["scope_id"] for p in body["scopes"]["project"]] == ["web"]
    assert body["scopes"]["agent"] == [] and body["scopes"]["user"] == []


@pytest.mark.django_db
@pytest.mark.usefixtures("empty_cache", "usage")
def test_a_range_of_days(api, tenant, make_token):
    _, body = get_usage(api, make_token(tenant), "start=2026-10-01&end=2026-11-19")
    assert body["period"] == "2026-10-01..2026-11-19"
    assert body["totals"]["traces"] == 1  # t4 alone, on 2026-10-21


@pytest.mark.django_db
@pytest.mark.usefixtures("empty_cache")
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("period=2026-13", "query.period"),
        ("period=26-11", "query.period"),
        ("period=2026-11&start=2026-11-01", "query.period"),
        ("start=2026-11-01", "query.period"),
        ("", "query.period"),
        ("start=2026-11-02&end=2026-11-01", "query.end"),
        ("start=2025-01-01&end=2026-11-01", "query.end"),
        ("start=2026-02-30&end=2026-03-01", "query.start"),
        ("period=2026-11&tenant=2", "query.tenant"),
        ("period=0000-01", "query.period"),
        ("start=0&end=86400", "query.start"),
    ],
)
def test_bad_periods_are_a_400_naming_the_field(api, tenant, make_token, query, field):
    response, body = get_usage(api, make_token(tenant), query)
    assert response.status_code == 400
    assert field in [error["field"] for error in body["errors"]]


@pytest.mark.django_db
@pytest.mark.usefixtures("empty_cache")
@pytest.mark.parametrize(
    ("query", "period"),
    [
        ("period=9999-12", "9999-12"),
        ("start=9999-12-31&end=9999-12-31", "9999-12-31..9999-12-31"),
        ("period=0001-01", "0001-01"),
    ],
)
def test_the_first_and_last_months_a_date_holds(api, tenant, make_token, query, period):
    response, body = get_usage(api, make_token(tenant), query)
    assert response.status_code == 200
    assert body["period"] == period


def summary_queries(captured) -> list[str]:
    return [
        q["sql"] for q in captured.captured_queries if "dailyscopeusage" in q["sql"]
    ]


@pytest.mark.django_db
@pytest.mark.usefixtures("empty_cache", "usage")
def test_a_miss_runs_the_query_once_and_a_hit_runs_none(api, tenant, make_token):
    token = make_token(tenant)
    with CaptureQueriesContext(connection) as cold:
        miss, _ = get_usage(api, token)
    with CaptureQueriesContext(connection) as warm:
        hit, _ = get_usage(api, token)
    assert (miss["X-Cache"], hit["X-Cache"]) == ("miss", "hit")
    assert hit.content == miss.content
    assert len(summary_queries(cold)) == 1
    # A hit, with the token remembered from the miss, asks the database
    # nothing at all.
    assert warm.captured_queries == []


@pytest.mark.django_db
@pytest.mark.usefixtures("empty_cache", "usage")
def test_a_caller_that_missed_just_before_another_stored_does_not_query_again(
    api, tenant, make_token
):
    # Its read missed, then the lock's holder stored the entry and let the
    # lock go: winning the lock now must not run the query a second time.
    period = usage_period(period="2026-11", start=None, end=None)
    versions = (None,)  # the month's version: never bumped here
    get_usage(api, make_token(tenant))
    with CaptureQueriesContext(connection) as late, tenant_context([tenant.pk]):
        body = usage_cache._single_flight(tenant.pk, period, versions)
    assert summary_queries(late) == []
    assert json.loads(body)["totals"]["traces"] == 3


@pytest.mark.django_db
@pytest.mark.usefixtures("empty_cache", "usage")
def test_a_ledger_write_outdates_the_months_it_touched(
    api, tenant, make_token, django_capture_on_commit_callbacks
):
    token = make_token(tenant)
    get_usage(api, token)
    get_usage(api, token, "period=2026-10")
    with django_capture_on_commit_callbacks(execute=True):
        merge(tenant, trace("t5", {"o1": GPT}, project_id="web"))
    november, body = get_usage(api, token)
    october, _ = get_usage(api, token, "period=2026-10")
    assert (november["X-Cache"], october["X-Cache"]) == ("miss", "hit")
    assert body["totals"]["traces"] == 4
    # A range over the month is outdated too.
    get_usage(api, token, "start=2026-11-15&end=2026-11-25")
    with django_capture_on_commit_callbacks(execute=True):
        merge(tenant, trace("t6", {"o1": GPT}, project_id="web"))
    ranged, body = get_usage(api, token, "start=2026-11-15&end=2026-11-25")
    assert ranged["X-Cache"] == "miss" and body["totals"]["traces"] == 5


@pytest.mark.django_db
@pytest.mark.usefixtures("empty_cache", "usage")
def test_a_rolled_back_write_outdates_nothing(
    api, tenant, make_token, django_capture_on_commit_callbacks
):
    token = make_token(tenant)
    get_usage(api, token)
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        tenant_context([tenant.pk]),
    ):
        merge(tenant, trace("t5", {"o1": GPT}, project_id="web"))
        connection.set_rollback(True)
    assert callbacks == []
    assert get_usage(api, token)[0]["X-Cache"] == "hit"


def database_url() -> str:
    """The test database, for a connection of its own (a psycopg URL)."""
    db = connection.settings_dict
    return f"postgresql://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("empty_cache", "usage")
def test_a_stale_entry_is_served_at_once_and_refreshed_in_the_background(
    api, tenant, make_token, time_machine
):
    token = make_token(tenant)
    time_machine.move_to(datetime.now(UTC), tick=True)
    _, first = get_usage(api, token)
    # Usage written behind the ledger's back (no version bump): only the
    # background refresh can bring it in.
    record = UsageRecord.objects.get(tenant=tenant, trace_id="t1")
    record.pk, record.trace_id = None, "t1-copy"
    with tenant_context([tenant.pk]):
        record.save()
    time_machine.shift(timedelta(seconds=usage_cache.FRESH_FOR + 1))
    stale, body = get_usage(api, token)
    assert stale["X-Cache"] == "stale" and body == first

    def refreshed():
        fresh, body = get_usage(api, token)
        return fresh["X-Cache"] == "hit" and body["totals"]["traces"] == 4

    assert wait_for(refreshed)
    assert not [t for t in threading.enumerate() if t.name.startswith("usage-refresh")]


@pytest.fixture
def summary_query_count():
    """How many times any connection ran the summary's query (threads too)."""
    count, lock = [0], threading.Lock()

    def counting(execute, sql, params, many, context):
        if "billing_dailyscopeusage" in sql and sql.lstrip().startswith("SELECT"):
            with lock:
                count[0] += 1
        return execute(sql, params, many, context)

    def install(sender, connection, **kwargs):
        connection.execute_wrappers.append(counting)

    connection_created.connect(install)
    yield count
    connection_created.disconnect(install)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("empty_cache", "usage")
def test_fifty_concurrent_cold_requests_run_the_query_once(
    live_server, tenant, make_token, summary_query_count
):
    headers = {"Authorization": f"Bearer {make_token(tenant)}"}
    url = f"{live_server.url}/api/v1/usage?period=2026-11"
    barrier = threading.Barrier(50)

    def request(_):
        with httpx.Client(timeout=30) as client:
            barrier.wait()
            return client.get(url, headers=headers)

    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(request, range(50)))
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert summary_query_count[0] == 1
    assert sorted({r.headers["X-Cache"] for r in responses}) in (
        ["miss"],
        ["hit", "miss"],
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("empty_cache", "usage")
def test_callers_wait_for_a_slow_query_instead_of_running_it_too(
    live_server, tenant, make_token, summary_query_count
):
    headers = {"Authorization": f"Bearer {make_token(tenant)}"}
    url = f"{live_server.url}/api/v1/usage?period=2026-11"
    # The first caller's query waits on this lock, as on a slow database.
    with psycopg.connect(database_url(), autocommit=False) as blocker:
        blocker.execute("LOCK TABLE billing_dailyscopeusage IN ACCESS EXCLUSIVE MODE")
        with ThreadPoolExecutor(20) as pool:
            requests = [
                pool.submit(httpx.get, url, headers=headers, timeout=30)
                for _ in range(20)
            ]
            time.sleep(1.5)
            blocker.rollback()
            responses = [request.result() for request in requests]
    assert {r.status_code for r in responses} == {200}
    assert summary_query_count[0] == 1


@pytest.fixture
def redis_down(settings):
    # A closed port: every cache call fails at once, as with Redis stopped.
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
        }
    }


@pytest.mark.django_db
@pytest.mark.usefixtures("usage", "redis_down")
def test_redis_down_answers_from_the_database_with_a_warning(
    api, tenant, make_token, caplog, django_capture_on_commit_callbacks
):
    token = make_token(tenant)
    response, body = get_usage(api, token)
    assert response.status_code == 200 and response["X-Cache"] == "bypass"
    assert body["totals"]["traces"] == 3
    assert "cache unavailable (ConnectionError)" in caplog.text
    # Paused after the failure: the next request does not wait on it again.
    caplog.clear()
    assert get_usage(api, token)[0]["X-Cache"] == "bypass"
    assert "cache unavailable" not in caplog.text
    # The ledger's writes go on, saying the cache may lag.
    with django_capture_on_commit_callbacks(execute=True):
        merge(tenant, trace("t5", {"o1": GPT}, project_id="web"))
    assert "may be stale for up to 600 s" in caplog.text
    assert get_usage(api, token)[1]["totals"]["traces"] == 4


@pytest.mark.django_db
@pytest.mark.usefixtures("empty_cache")
def test_money_is_a_plain_decimal_string(api, make_token):
    tenant = TenantFactory()
    tiny = ["gpt-4o", 1, 0, 0, "0.0000001", "price_table"]
    merge(tenant, trace("t1", {"o1": tiny}, project_id="web"))
    _, body = get_usage(api, make_token(tenant))
    assert body["totals"]["cost"] == "0.0000001000"
    assert Decimal(body["models"][0]["cost"]) == Decimal("1E-7")
    assert "E" not in json.dumps(body)
