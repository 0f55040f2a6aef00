"""
Contract tests: the real stripe-python library against the Stripe emulator,
over real HTTP. They pin down the behaviour the billing app relies on (error
classes, params and codes, idempotency, de-duplication, summaries, rate
limits, retries), so that a change in the emulator or in stripe-python that
would break the app shows up here first.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import requests
import stripe
from stripe._http_client import HTTPClient

from billing.emulators.base import Faults, MinuteRateLimiter
from billing.emulators.stripe import StripeEmulator, mask_api_key
from tests.fixtures.stripe import StripeEmulatorHandle

EVENT_NAME = "llm_tokens"
HOUR = 3600


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # stripe-python sleeps at least 0.5 s before each retry; the retry logic
    # itself is untouched, only the wait is shortened to keep the file fast.
    monkeypatch.setattr(HTTPClient, "INITIAL_DELAY", 0.01)
    monkeypatch.setattr(HTTPClient, "MAX_DELAY", 0.02)


@pytest.fixture
def customer(stripe_client: stripe.StripeClient) -> stripe.Customer:
    return stripe_client.v1.customers.create(
        {"name": "Acme", "email": "billing@acme.test"}
    )


@pytest.fixture
def meter(stripe_client: stripe.StripeClient) -> stripe.billing.Meter:
    return stripe_client.v1.billing.meters.create(
        {
            "display_name": "LLM tokens",
            "event_name": EVENT_NAME,
            "default_aggregation": {"formula": "sum"},
        }
    )


def send_event(
    client: stripe.StripeClient,
    customer_id: str,
    value: int | str,
    *,
    options: dict[str, Any] | None = None,
    **extra: Any,
) -> stripe.billing.MeterEvent:
    params = {
        "event_name": EVENT_NAME,
        "payload": {"stripe_customer_id": customer_id, "value": str(value)},
        **extra,
    }
    return client.v1.billing.meter_events.create(params, options)  # type: ignore[arg-type]


def total(handle: StripeEmulatorHandle, customer_id: str) -> int:
    return handle.emulator.total_value(customer=customer_id, event_name=EVENT_NAME)


# -- customers ---------------------------------------------------------------


def test_customer_create_and_retrieve(stripe_client: stripe.StripeClient) -> None:
    created = stripe_client.v1.customers.create(
        {"name": "Acme", "email": "a@acme.test", "metadata": {"tenant": "t-1"}}
    )
    assert isinstance(created, stripe.Customer)
    assert created.id.startswith("cus_")
    assert created.metadata["tenant"] == "t-1"
    assert created.last_response is not None
    assert created.last_response.request_id.startswith("req_")

    fetched = stripe_client.v1.customers.retrieve(created.id)
    assert (fetched.id, fetched.name, fetched.email) == (
        created.id,
        "Acme",
        "a@acme.test",
    )


def test_customer_retrieve_unknown_is_resource_missing(
    stripe_client: stripe.StripeClient,
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        stripe_client.v1.customers.retrieve("cus_missing")
    assert info.value.http_status == 404
    assert info.value.code == "resource_missing"
    assert info.value.param == "id"
    assert info.value.request_id.startswith("req_")


def test_customer_unknown_parameter_is_rejected(
    stripe_client: stripe.StripeClient,
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        stripe_client.v1.customers.create({"nmae": "typo"})  # type: ignore[typeddict-unknown-key]
    assert (info.value.code, info.value.param) == ("parameter_unknown", "nmae")


def test_customers_list_paginates_newest_first(
    stripe_client: stripe.StripeClient,
) -> None:
    ids = [stripe_client.v1.customers.create({"name": f"c{i}"}).id for i in range(5)]
    page = stripe_client.v1.customers.list({"limit": 2})
    assert page.object == "list"
    assert page.url == "/v1/customers"
    assert [c.id for c in page.data] == ids[::-1][:2]
    assert page.has_more is True
    assert [c.id for c in page.auto_paging_iter()] == ids[::-1]


def test_accounts_are_isolated_per_api_key(
    stripe_emulator: StripeEmulatorHandle, customer: stripe.Customer
) -> None:
    other = stripe_emulator.client(stripe_emulator.other_api_key)
    with pytest.raises(stripe.InvalidRequestError):
        other.v1.customers.retrieve(customer.id)
    assert other.v1.customers.list().data == []


# -- meters -----------------------------------------------------------------


def test_meter_create_list_and_status_filter(
    stripe_client: stripe.StripeClient, meter: stripe.billing.Meter
) -> None:
    assert isinstance(meter, stripe.billing.Meter)
    assert meter.status == "active"
    assert meter.customer_mapping.event_payload_key == "stripe_customer_id"
    assert meter.customer_mapping.type == "by_id"
    assert meter.value_settings.event_payload_key == "value"
    assert meter.default_aggregation.formula == "sum"

    other = stripe_client.v1.billing.meters.create(
        {
            "display_name": "Requests",
            "event_name": "requests",
            "default_aggregation": {"formula": "count"},
            "customer_mapping": {"event_payload_key": "cust", "type": "by_id"},
            "value_settings": {"event_payload_key": "n"},
        }
    )
    stripe_client.v1.billing.meters.deactivate(other.id)

    listed = stripe_client.v1.billing.meters.list()
    assert [m.id for m in listed.data] == [other.id, meter.id]
    active = stripe_client.v1.billing.meters.list({"status": "active"})
    assert [m.id for m in active.data] == [meter.id]
    inactive = stripe_client.v1.billing.meters.list({"status": "inactive"})
    assert [m.id for m in inactive.data] == [other.id]
    assert stripe_client.v1.billing.meters.retrieve(meter.id).event_name == EVENT_NAME


def test_meter_duplicate_active_event_name_is_rejected(
    stripe_client: stripe.StripeClient, meter: stripe.billing.Meter
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        stripe_client.v1.billing.meters.create(
            {
                "display_name": "again",
                "event_name": EVENT_NAME,
                "default_aggregation": {"formula": "sum"},
            }
        )
    assert (info.value.param, info.value.code) == (
        "event_name",
        "resource_already_exists",
    )


def test_meter_invalid_formula_is_rejected(stripe_client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        stripe_client.v1.billing.meters.create(
            {
                "display_name": "x",
                "event_name": "x",
                "default_aggregation": {"formula": "avg"},
            }
        )
    assert info.value.param == "default_aggregation[formula]"


# -- meter events -------------------------------------------------------------


def test_meter_event_create_parses_into_meter_event(
    stripe_emulator: StripeEmulatorHandle,
    stripe_client: stripe.StripeClient,
    customer: stripe.Customer,
    meter: stripe.billing.Meter,
) -> None:
    timestamp = int(time.time()) - 60
    event = send_event(
        stripe_client, customer.id, 25, identifier="evt-1", timestamp=timestamp
    )
    assert isinstance(event, stripe.billing.MeterEvent)
    assert event.object == "billing.meter_event"
    assert event.event_name == EVENT_NAME
    assert event.identifier == "evt-1"
    assert event.timestamp == timestamp
    assert event.livemode is False
    assert event.payload.to_dict() == {
        "stripe_customer_id": customer.id,
        "value": "25",
    }
    assert total(stripe_emulator, customer.id) == 25
    assert stripe_emulator.emulator.meter_events()[0]["identifier"] == "evt-1"


def test_meter_event_generates_identifier_and_timestamp(
    stripe_client: stripe.StripeClient,
    customer: stripe.Customer,
    meter: stripe.billing.Meter,
) -> None:
    before = int(time.time())
    event = send_event(stripe_client, customer.id, 1)
    assert event.identifier
    assert before <= event.timestamp <= int(time.time())


@pytest.mark.parametrize("value", ["0", "-3", "1000000000000"])
def test_meter_event_accepts_whole_numbers(
    stripe_emulator: StripeEmulatorHandle,
    stripe_client: stripe.StripeClient,
    customer: stripe.Customer,
    meter: stripe.billing.Meter,
    value: str,
) -> None:
    send_event(stripe_client, customer.id, value)
    assert total(stripe_emulator, customer.id) == int(value)


@pytest.mark.parametrize(
    ("change", "param", "code"),
    [
        ({"event_name": None}, "event_name", "parameter_missing"),
        ({"event_name": "no_such_meter"}, "event_name", "no_meter"),
        ({"value": "2.5"}, "payload[value]", "meter_event_invalid_value"),
        ({"value": "ten"}, "payload[value]", "meter_event_invalid_value"),
        ({"value": None}, "payload[value]", "meter_event_value_not_found"),
        (
            {"customer": "cus_ghost"},
            "payload[stripe_customer_id]",
            "meter_event_customer_not_found",
        ),
        (
            {"customer": None},
            "payload[stripe_customer_id]",
            "meter_event_no_customer_defined",
        ),
        (
            {"timestamp": -36 * 24 * HOUR},
            "timestamp",
            "timestamp_too_far_in_past",
        ),
        ({"timestamp": 10 * 60}, "timestamp", "timestamp_in_future"),
        ({"timestamp": "soon"}, "timestamp", "parameter_invalid_integer"),
        ({"identifier": "x" * 101}, "identifier", None),
    ],
)
def test_meter_event_validation_errors(
    stripe_emulator: StripeEmulatorHandle,
    stripe_client: stripe.StripeClient,
    customer: stripe.Customer,
    meter: stripe.billing.Meter,
    change: dict[str, Any],
    param: str,
    code: str | None,
) -> None:
    payload: dict[str, Any] = {"stripe_customer_id": customer.id, "value": "5"}
    params: dict[str, Any] = {"event_name": EVENT_NAME, "payload": payload}
    for key, value in change.items():
        if key == "customer":
            payload["stripe_customer_id"] = value
        elif key == "value":
            payload["value"] = value
        elif key == "timestamp" and isinstance(value, int):
            params["timestamp"] = int(time.time()) + value
        else:
            params[key] = value
    params["payload"] = {k: v for k, v in payload.items() if v is not None}

    with pytest.raises(stripe.InvalidRequestError) as info:
        stripe_client.v1.billing.meter_events.create(params)  # type: ignore[arg-type]

    assert info.value.http_status == 400
    assert info.value.param == param
    assert info.value.code == code
    assert info.value.json_body["error"]["type"] == "invalid_request_error"
    assert stripe_emulator.emulator.meter_events() == []
    assert total(stripe_emulator, customer.id) == 0


def test_meter_event_for_inactive_meter_is_archived_meter(
    stripe_client: stripe.StripeClient,
    customer: stripe.Customer,
    meter: stripe.billing.Meter,
) -> None:
    stripe_client.v1.billing.meters.deactivate(meter.id)
    with pytest.raises(stripe.InvalidRequestError) as info:
        send_event(stripe_client, customer.id, 1)
    assert (info.value.param, info.value.code) == ("event_name", "archived_meter")


def test_meter_event_identifier_is_deduplicated(
    stripe_emulator: StripeEmulatorHandle,
    stripe_client: stripe.StripeClient,
    customer: stripe.Customer,
    meter: stripe.billing.Meter,
) -> None:
    send_event(stripe_client, customer.id, 7, identifier="usage-42")
    with pytest.raises(stripe.InvalidRequestError) as info:
        send_event(stripe_client, customer.id, 7, identifier="usage-42")
    assert (info.value.param, info.value.code) == (
        "identifier",
        "resource_already_exists",
    )
    assert total(stripe_emulator, customer.id) == 7
    assert stripe_emulator.emulator.stats().duplicates_rejected == 1


def test_rejected_event_does_not_burn_its_identifier(
    stripe_emulator: StripeEmulatorHandle,
    stripe_client: stripe.StripeClient,
    customer: stripe.Customer,
    meter: stripe.billing.Meter,
) -> None:
    with pytest.raises(stripe.InvalidRequestError):
        send_event(stripe_client, customer.id, "1.5", identifier="usage-43")
    send_event(stripe_client, customer.id, 2, identifier="usage-43")
    assert total(stripe_emulator, customer.id) == 2


def test_async_validation_accepts_but_does_not_count(
    stripe_emulator: StripeEmulatorHandle,
    stripe_client: stripe.StripeClient,
    customer: stripe.Customer,
    meter: stripe.billing.Meter,
) -> None:
    stripe_emulator.emulator.validation = "async"
    event = send_event(stripe_client, "cus_ghost", 3, identifier="late-failure")
    assert event.identifier == "late-failure"
    assert total(stripe_emulator, "cus_ghost") == 0
    [report] = stripe_emulator.emulator.error_reports()
    assert report["code"] == "meter_event_customer_not_found"
    assert report["identifier"] == "late-failure"


# -- idempotency -------------------------------------------------------------


def test_idempotency_key_replays_the_first_response(
    stripe_emulator: StripeEmulatorHandle,
    stripe_client: stripe.StripeClient,
    customer: stripe.Customer,
    meter: stripe.billing.Meter,
) -> None:
    options = {"idempotency_key": "idem-1"}
    first = send_event(stripe_client, customer.id, 4, options=options)
    again = send_event(stripe_client, customer.id, 4, options=options)

    assert again.identifier == first.identifier
    assert again.to_dict() == first.to_dict()
    assert first.last_response is not None and again.last_response is not None
    assert "Idempotent-Replayed" not in first.last_response.headers
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert again.last_response.idempotency_key is None  # Stripe does not echo it
    assert again.last_response.request_id != first.last_response.request_id
    assert total(stripe_emulator, customer.id) == 4
    assert len(stripe_emulator.emulator.meter_events()) == 1
    assert stripe_emulator.emulator.stats().idempotent_replays == 1


def test_idempotency_key_with_other_params_is_idempotency_error(
    stripe_emulator: StripeEmulatorHandle,
    stripe_client: stripe.StripeClient,
    customer: stripe.Customer,
    meter: stripe.billing.Meter,
) -> None:
    options = {"idempotency_key": "idem-2"}
    send_event(stripe_client, customer.id, 4, options=options)
    with pytest.raises(stripe.IdempotencyError) as info:
        send_event(stripe_client, customer.id, 5, options=options)
    assert info.value.http_status == 400
    assert info.value.json_body["error"]["type"] == "idempotency_error"
    assert total(stripe_emulator, customer.id) == 4


def test_idempotency_keys_are_scoped_per_api_key(
    stripe_emulator: StripeEmulatorHandle, stripe_client: stripe.StripeClient
) -> None:
    other = stripe_emulator.client(stripe_emulator.other_api_key)
    options = {"idempotency_key": "shared"}
    mine = stripe_client.v1.customers.create({"name": "a"}, options)
    theirs = other.v1.customers.create({"name": "b"}, options)
    assert mine.id != theirs.id
    assert theirs.last_response is not None
    assert "Idempotent-Replayed" not in theirs.last_response.headers


# -- event summaries ----------------------------------------------------------


def test_event_summaries_match_events_sent(
    stripe_emulator: StripeEmulatorHandle,
    stripe_client: stripe.StripeClient,
    customer: stripe.Customer,
    meter: stripe.billing.Meter,
) -> None:
    other_customer = stripe_client.v1.customers.create({"name": "Other"})
    start = (int(time.time()) // HOUR - 3) * HOUR
    for offset, value in [(10, 5), (70, 7), (HOUR + 1, 11), (2 * HOUR, 13)]:
        send_event(stripe_client, customer.id, value, timestamp=start + offset)
    send_event(stripe_client, other_customer.id, 1000, timestamp=start + 20)
    send_event(stripe_client, customer.id, 2000, timestamp=start - 60)

    summaries = stripe_client.v1.billing.meters.event_summaries.list(
        meter.id,
        {"customer": customer.id, "start_time": start, "end_time": start + 2 * HOUR},
    )
    [summary] = summaries.data
    assert isinstance(summary, stripe.billing.MeterEventSummary)
    assert summary.aggregated_value == 5 + 7 + 11
    assert (summary.start_time, summary.end_time) == (start, start + 2 * HOUR)
    assert summary.meter == meter.id

    hourly = stripe_client.v1.billing.meters.event_summaries.list(
        meter.id,
        {
            "customer": customer.id,
            "start_time": start,
            "end_time": start + 3 * HOUR,
            "value_grouping_window": "hour",
        },
    )
    assert [(s.start_time, s.aggregated_value) for s in hourly.data] == [
        (start + 2 * HOUR, 13),
        (start + HOUR, 11),
        (start, 12),
    ]


def test_event_summaries_empty_range_is_zero(
    stripe_client: stripe.StripeClient,
    customer: stripe.Customer,
    meter: stripe.billing.Meter,
) -> None:
    start = (int(time.time()) // 60 - 10) * 60
    summaries = stripe_client.v1.billing.meters.event_summaries.list(
        meter.id, {"customer": customer.id, "start_time": start, "end_time": start + 60}
    )
    assert [s.aggregated_value for s in summaries.data] == [0]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"start_time": 30}, "start_time"),
        ({"end_time": 90}, "end_time"),
        ({"value_grouping_window": "hour", "end_time": 60 * 90}, "end_time"),
        ({"value_grouping_window": "week"}, "value_grouping_window"),
        ({"end_time": 0}, "end_time"),
        ({"customer": "cus_ghost"}, "customer"),
    ],
)
def test_event_summaries_invalid_params(
    stripe_client: stripe.StripeClient,
    customer: stripe.Customer,
    meter: stripe.billing.Meter,
    params: dict[str, Any],
    param: str,
) -> None:
    query = {"customer": customer.id, "start_time": 0, "end_time": 2 * HOUR, **params}
    with pytest.raises(stripe.InvalidRequestError) as info:
        stripe_client.v1.billing.meters.event_summaries.list(meter.id, query)  # type: ignore[arg-type]
    assert info.value.param == param


def test_event_summaries_missing_customer_is_parameter_missing(
    stripe_client: stripe.StripeClient, meter: stripe.billing.Meter
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        stripe_client.v1.billing.meters.event_summaries.list(
            meter.id,
            {"start_time": 0, "end_time": 60},  # type: ignore[typeddict-item]
        )
    assert (info.value.param, info.value.code) == ("customer", "parameter_missing")


# -- authentication --------------------------------------------------------------


def test_unknown_api_key_is_authentication_error_with_masked_key(
    stripe_emulator: StripeEmulatorHandle,
) -> None:
    secret = "sk_test_TotallySecretKeyThatMustNotLeak9876"
    client = stripe_emulator.client(secret)
    with pytest.raises(stripe.AuthenticationError) as info:
        client.v1.customers.list()

    error = info.value
    assert error.http_status == 401
    masked = mask_api_key(secret)
    assert masked.startswith("sk_test_*")
    assert masked.endswith("9876")
    assert error.user_message == f"Invalid API Key provided: {masked}"
    assert error.json_body["error"]["type"] == "invalid_request_error"
    exposed = " ".join(
        [str(error), repr(error), str(error.http_body), json.dumps(error.json_body)]
    )
    assert secret not in exposed
    assert "TotallySecret" not in exposed


def test_missing_or_basic_auth_over_raw_http(
    stripe_emulator: StripeEmulatorHandle,
) -> None:
    url = f"{stripe_emulator.url}/v1/customers"
    missing = requests.get(url, timeout=5)
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert missing.headers["Request-Id"].startswith("req_")

    basic = requests.get(url, auth=(stripe_emulator.api_key, ""), timeout=5)
    assert basic.status_code == 200
    assert basic.json()["object"] == "list"


def test_unknown_path_and_wrong_method(
    stripe_emulator: StripeEmulatorHandle, stripe_client: stripe.StripeClient
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        stripe_client.raw_request("get", "/v1/no_such_thing")
    assert info.value.http_status == 404
    assert "Unrecognized request URL" in info.value.user_message

    response = requests.delete(
        f"{stripe_emulator.url}/v1/billing/meter_events",
        headers={"Authorization": f"Bearer {stripe_emulator.api_key}"},
        timeout=5,
    )
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.json()["error"]["type"] == "invalid_request_error"


# -- rate limits --------------------------------------------------------------


def test_rate_limit_is_per_api_key(stripe_emulator: StripeEmulatorHandle) -> None:
    # A frozen clock keeps every request in one window, whatever the time.
    stripe_emulator.emulator.rate_limiter = MinuteRateLimiter(
        2, clock=lambda: 120_030.0
    )
    client = stripe_emulator.client()
    client.v1.customers.list()
    client.v1.customers.list()
    with pytest.raises(stripe.RateLimitError) as info:
        client.v1.customers.list()
    assert info.value.http_status == 429
    # RateLimitError is built without a code; Stripe's code is on .error.
    assert info.value.error is not None
    assert info.value.error.code == "rate_limit"
    assert int(info.value.headers["Retry-After"]) == 30
    assert stripe_emulator.emulator.stats().rate_limited == 1

    other = stripe_emulator.client(stripe_emulator.other_api_key)
    assert other.v1.customers.list().object == "list"


def test_rate_limit_429_is_not_retried_by_stripe_python(
    stripe_emulator: StripeEmulatorHandle,
    fast_retries: None,
    customer: stripe.Customer,
    meter: stripe.billing.Meter,
) -> None:
    stripe_emulator.emulator.fail_next("429", path="/v1/billing/meter_events")
    client = stripe_emulator.client(max_network_retries=2)
    with pytest.raises(stripe.RateLimitError) as info:
        send_event(client, customer.id, 1)
    assert info.value.headers["Retry-After"] == "1"
    # The library gave up after one attempt: the app must back off itself.
    stats = stripe_emulator.emulator.stats()
    assert stats.count("POST /v1/billing/meter_events") == 1
    assert total(stripe_emulator, customer.id) == 0


# -- faults and retries ------------------------------------------------------


def test_injected_5xx_is_api_error(
    stripe_emulator: StripeEmulatorHandle, stripe_client: stripe.StripeClient
) -> None:
    stripe_emulator.emulator.faults = Faults(rate_5xx=1.0, seed=7)
    with pytest.raises(stripe.APIError) as info:
        stripe_client.v1.customers.list()
    assert info.value.http_status in (500, 503)
    assert info.value.json_body["error"]["type"] == "api_error"
    assert info.value.headers["Stripe-Should-Retry"] == "true"
    assert info.value.request_id.startswith("req_")


def test_connection_reset_is_api_connection_error(
    stripe_emulator: StripeEmulatorHandle, stripe_client: stripe.StripeClient
) -> None:
    stripe_emulator.emulator.faults = Faults(rate_reset=1.0)
    with pytest.raises(stripe.APIConnectionError):
        stripe_client.v1.customers.list()
    assert stripe_emulator.emulator.stats().count("GET /v1/customers", "reset") == 1


@pytest.mark.parametrize(
    ("kind", "after_processing"),
    [
        ("503", False),
        ("500", True),
        ("lock_timeout", False),
        ("reset", False),
        ("reset", True),
    ],
)
def test_stripe_python_retry_recovers_with_a_single_event(
    stripe_emulator: StripeEmulatorHandle,
    fast_retries: None,
    customer: stripe.Customer,
    meter: stripe.billing.Meter,
    kind: str,
    after_processing: bool,
) -> None:
    emulator = stripe_emulator.emulator
    emulator.fail_next(
        kind,  # type: ignore[arg-type]
        after_processing=after_processing,
        path="/v1/billing/meter_events",
    )
    client = stripe_emulator.client(max_network_retries=2)

    # No explicit key: stripe-python generates one Idempotency-Key per call
    # and resends it on every retry.
    event = send_event(client, customer.id, 9)

    assert total(stripe_emulator, customer.id) == 9
    assert [e["identifier"] for e in emulator.meter_events()] == [event.identifier]
    assert emulator.stats().count("POST /v1/billing/meter_events") == 2
    assert event.last_response is not None
    replayed = event.last_response.headers.get("Idempotent-Replayed") == "true"
    assert replayed is after_processing


def test_concurrent_workers_under_random_faults_count_each_event_once(
    stripe_emulator: StripeEmulatorHandle,
    fast_retries: None,
    customer: stripe.Customer,
    meter: stripe.billing.Meter,
) -> None:
    emulator = stripe_emulator.emulator
    emulator.faults = Faults(rate_5xx=0.2, rate_reset=0.1, seed=42)
    client = stripe_emulator.client(max_network_retries=10)
    errors: list[BaseException] = []

    def worker(worker_id: int) -> None:
        try:
            for i in range(10):
                send_event(client, customer.id, 1, identifier=f"w{worker_id}-{i}")
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert total(stripe_emulator, customer.id) == 80
    stats = emulator.stats()
    assert stats.events_accepted == 80
    assert stats.faults_injected > 0


def test_helpers_seed_without_http() -> None:
    emulator = StripeEmulator()
    seeded = emulator.create_customer(name="Seeded", metadata={"a": "b"})
    meter = emulator.create_meter(event_name="calls", formula="count")
    assert emulator.customers()[0]["id"] == seeded["id"]
    assert emulator.meters()[0]["default_aggregation"] == {"formula": "count"}
    assert emulator.total_value(customer=seeded["id"], meter=meter["id"]) == 0
    emulator.reset()
    assert emulator.customers() == []


# -- unknown outcomes: what real Stripe saves for an Idempotency-Key ---------


def test_500_after_commit_records_the_event_and_the_key_replays_the_500(
    stripe_emulator: StripeEmulatorHandle,
    stripe_client: stripe.StripeClient,
    customer: stripe.Customer,
    meter: stripe.billing.Meter,
) -> None:
    emulator = stripe_emulator.emulator
    emulator.fail_next("500_after_commit", path="/v1/billing/meter_events")
    options = {"idempotency_key": "usage-50-try-0"}

    with pytest.raises(stripe.APIError) as first:
        send_event(
            stripe_client, customer.id, 6, identifier="usage-50", options=options
        )
    # Stripe recorded the event before it failed, and saved the 500 for the key.
    assert first.value.http_status == 500
    assert total(stripe_emulator, customer.id) == 6

    with pytest.raises(stripe.APIError) as replayed:
        send_event(
            stripe_client, customer.id, 6, identifier="usage-50", options=options
        )
    assert replayed.value.http_status == 500
    assert replayed.value.headers["Idempotent-Replayed"] == "true"

    # Only a new key gets a new answer: the identifier is already taken.
    with pytest.raises(stripe.InvalidRequestError) as duplicate:
        send_event(
            stripe_client,
            customer.id,
            6,
            identifier="usage-50",
            options={"idempotency_key": "usage-50-try-1"},
        )
    assert (duplicate.value.http_status, duplicate.value.code) == (
        400,
        "resource_already_exists",
    )
    assert total(stripe_emulator, customer.id) == 6
    assert len(emulator.meter_events()) == 1
    assert emulator.stats().idempotent_replays == 1


def test_stripe_python_retries_cannot_get_past_a_saved_500(
    stripe_emulator: StripeEmulatorHandle,
    fast_retries: None,
    customer: stripe.Customer,
    meter: stripe.billing.Meter,
) -> None:
    emulator = stripe_emulator.emulator
    emulator.fail_next("500_after_commit", path="/v1/billing/meter_events")
    client = stripe_emulator.client(max_network_retries=2)

    # stripe-python resends its own Idempotency-Key: every retry replays the 500.
    with pytest.raises(stripe.APIError) as info:
        send_event(client, customer.id, 3, identifier="usage-51")

    assert info.value.http_status == 500
    assert emulator.stats().count("POST /v1/billing/meter_events", 500) == 3
    assert emulator.stats().idempotent_replays == 2
    assert total(stripe_emulator, customer.id) == 3


def test_cut_body_records_the_event_behind_an_unreadable_200(
    stripe_emulator: StripeEmulatorHandle,
    stripe_client: stripe.StripeClient,
    customer: stripe.Customer,
    meter: stripe.billing.Meter,
) -> None:
    emulator = stripe_emulator.emulator
    emulator.fail_next("cut_body", path="/v1/billing/meter_events")
    options = {"idempotency_key": "usage-52-try-0"}

    with pytest.raises(stripe.APIError) as cut:
        send_event(
            stripe_client, customer.id, 8, identifier="usage-52", options=options
        )

    # stripe-python cannot parse the body and raises with the 200 it got.
    assert cut.value.http_status == 200
    assert total(stripe_emulator, customer.id) == 8
    # The key saved the real answer: only the way back was broken.
    again = send_event(
        stripe_client, customer.id, 8, identifier="usage-52", options=options
    )
    assert again.identifier == "usage-52"
    assert again.last_response is not None
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert total(stripe_emulator, customer.id) == 8
    assert emulator.stats().faults_injected == 1


def test_cut_body_over_raw_http_is_a_200_with_half_a_json_body(
    stripe_emulator: StripeEmulatorHandle, customer: stripe.Customer
) -> None:
    stripe_emulator.emulator.fail_next("cut_body", method="GET")
    response = requests.get(
        f"{stripe_emulator.url}/v1/customers/{customer.id}",
        headers={"Authorization": f"Bearer {stripe_emulator.api_key}"},
        timeout=5,
    )
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.content)
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)
    assert customer.id in response.text  # the first half did arrive


@pytest.mark.parametrize(
    ("style", "code", "param", "message"),
    [
        (
            "resource_already_exists",
            "resource_already_exists",
            "identifier",
            "A meter event with identifier 'usage-53' already exists.",
        ),
        (
            "duplicate_meter_event",
            "duplicate_meter_event",
            None,
            "A meter event with a duplicate identifier has already been submitted.",
        ),
        (
            "message_only",
            None,
            None,
            "An event already exists with identifier usage-53.",
        ),
    ],
)
def test_duplicate_identifier_error_shapes(
    stripe_emulator: StripeEmulatorHandle,
    stripe_client: stripe.StripeClient,
    customer: stripe.Customer,
    meter: stripe.billing.Meter,
    style: str,
    code: str | None,
    param: str | None,
    message: str,
) -> None:
    stripe_emulator.emulator.duplicate_error = style  # type: ignore[assignment]
    send_event(stripe_client, customer.id, 2, identifier="usage-53")

    with pytest.raises(stripe.InvalidRequestError) as info:
        send_event(stripe_client, customer.id, 2, identifier="usage-53")

    assert info.value.http_status == 400
    assert (info.value.code, info.value.param) == (code, param)
    assert info.value.user_message == message
    assert info.value.json_body["error"]["type"] == "invalid_request_error"
    assert total(stripe_emulator, customer.id) == 2


def test_unknown_duplicate_error_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="duplicate_error"):
        StripeEmulator(duplicate_error="conflict")  # type: ignore[arg-type]
