"""
Contract tests: the real ``langfuse`` REST client against the emulator.

Everything goes over real HTTP; nothing is mocked. ``max_retries: 0`` keeps
the generated client from retrying (and sleeping) on 429 and 5xx.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from langfuse.api import Error, LangfuseAPI, UnauthorizedError
from langfuse.api.core.api_error import ApiError

from billing.emulators.base import Faults, MinuteRateLimiter
from billing.emulators.langfuse import (
    FIELD_GROUPS,
    MALFORMED_KINDS,
    OBSERVATIONS_PATH,
    format_timestamp,
    parse_timestamp,
    to_micros,
)
from billing.emulators.scenario import Scenario
from tests.fixtures.langfuse import LangfuseCredentials, credentials_for

NO_RETRY: Any = {"max_retries": 0}
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
PYDANTIC_NAMES = {
    "traceId": "trace_id",
    "startTime": "start_time",
    "endTime": "end_time",
    "projectId": "project_id",
    "parentObservationId": "parent_observation_id",
    "statusMessage": "status_message",
    "userId": "user_id",
    "sessionId": "session_id",
    "isRootObservation": "is_root_observation",
    "completionStartTime": "completion_start_time",
    "createdAt": "created_at",
    "updatedAt": "updated_at",
    "internalModelId": "internal_model_id",
    "modelParameters": "model_parameters",
    "usageDetails": "usage_details",
    "costDetails": "cost_details",
    "totalCost": "total_cost",
    "usagePricingTierName": "usage_pricing_tier_name",
    "promptId": "prompt_id",
    "promptName": "prompt_name",
    "promptVersion": "prompt_version",
    "timeToFirstToken": "time_to_first_token",
    "traceName": "trace_name",
}


def at(seconds: float) -> str:
    return format_timestamp(to_micros(T0 + timedelta(seconds=seconds)))


def observation(index: int, *, start: float | None = None, **fields: Any) -> dict:
    """A finished generation; ``start`` is in seconds after T0."""
    start = float(index) if start is None else start
    return {
        "id": f"obs-{index:05d}",
        "traceId": f"trace-{index // 4:05d}",
        "type": "GENERATION",
        "name": "chat",
        "startTime": at(start),
        "endTime": at(start + 1.5),
        "userId": f"user-{index % 3}",
        "model": "gpt-4o-mini",
        "usageDetails": {"input": 100, "output": 20, "total": 120},
        "costDetails": {"input": 0.000015, "output": 0.000012, "total": 0.000027},
        "totalCost": 0.000027,
        "metadata": {"project_id": "web", "agent": "support"},
        "traceName": "support",
        **fields,
    }


def read_all(api: LangfuseAPI, cursor: str | None = None, **params: Any) -> list[Any]:
    """Follow the cursor to the last page; ``cursor`` resumes a read."""
    items = []
    while True:
        page = api.observations.get_many(
            cursor=cursor, request_options=NO_RETRY, **params
        )
        items.extend(page.data)
        cursor = page.meta.cursor
        if cursor is None:
            return items


@pytest.fixture
def emulator(langfuse_emulator):
    return langfuse_emulator.emulator


@pytest.fixture
def api(langfuse_api) -> LangfuseAPI:
    return langfuse_api()


@pytest.fixture
def add(emulator, langfuse_project: LangfuseCredentials):
    def add(observations, **kwargs: Any) -> None:
        emulator.add_observations(langfuse_project.public_key, observations, **kwargs)

    return add


# Health, authentication, routing


def test_health_needs_no_credentials(langfuse_api):
    health = langfuse_api(secret_key="wrong").health.health()

    assert (health.status, health.version) == ("OK", "3.x-emulator")


def test_wrong_secret_is_unauthorized_without_echoing_it(langfuse_api):
    api = langfuse_api(secret_key="sk-lf-not-the-right-one")

    with pytest.raises(UnauthorizedError) as caught:
        api.observations.get_many(request_options=NO_RETRY)

    assert caught.value.status_code == 401
    assert "message" in caught.value.body
    assert "sk-lf-not-the-right-one" not in str(caught.value.body)


def test_unknown_public_key_and_missing_header_are_unauthorized(
    langfuse_emulator, langfuse_api
):
    with pytest.raises(UnauthorizedError):
        langfuse_api(public_key="pk-lf-nobody").observations.get_many(
            request_options=NO_RETRY
        )

    response = httpx.get(langfuse_emulator.url + OBSERVATIONS_PATH)
    assert response.status_code == 401


def test_unknown_path_is_404_and_wrong_method_is_405(
    langfuse_emulator, langfuse_project
):
    auth = (langfuse_project.public_key, langfuse_project.secret_key)

    missing = httpx.get(langfuse_emulator.url + "/api/public/nope", auth=auth)
    wrong_method = httpx.post(langfuse_emulator.url + OBSERVATIONS_PATH, auth=auth)

    assert missing.status_code == 404 and "message" in missing.json()
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Allow"] == "GET"


# Pagination


def test_pages_of_1000_return_everything_once_newest_first(api, add):
    # Pairs share a start time so that the id has to break the tie.
    add(observation(i, start=i // 2) for i in range(2500))

    pages = []
    cursor = None
    while True:
        page = api.observations.get_many(
            limit=1000, cursor=cursor, request_options=NO_RETRY
        )
        pages.append(page.data)
        cursor = page.meta.cursor
        if cursor is None:
            break

    assert [len(page) for page in pages] == [1000, 1000, 500]
    ids = [item.id for page in pages for item in page]
    assert ids == [f"obs-{i:05d}" for i in reversed(range(2500))]


@pytest.mark.parametrize("limit", [1, 7, 50, 999])
def test_odd_limits_lose_and_repeat_nothing(api, add, limit):
    count = 60 if limit == 1 else 1003
    add(observation(i, start=i // 3) for i in reversed(range(count)))

    items = read_all(api, limit=limit)

    assert [item.id for item in items] == [
        f"obs-{i:05d}" for i in reversed(range(count))
    ]


def test_exact_multiple_of_limit_ends_without_cursor(api, add):
    add(observation(i) for i in range(20))

    first = api.observations.get_many(limit=10)
    second = api.observations.get_many(limit=10, cursor=first.meta.cursor)

    assert first.meta.cursor is not None
    assert len(second.data) == 10 and second.meta.cursor is None


def test_default_limit_is_50(api, add):
    add(observation(i) for i in range(60))

    assert len(api.observations.get_many().data) == 50


def test_cursor_is_stable_when_observations_are_inserted(api, add):
    add(observation(i, start=10 * i) for i in range(30))
    first = api.observations.get_many(limit=10)
    assert first.data[-1].id == "obs-00020"

    # Newest first, so "already passed" means newer than the cursor: one among
    # the pages read, one newer than everything, one just past the cursor and
    # one older than everything (the new end).
    add(
        [
            observation(100, start=255),
            observation(101, start=1000),
            observation(102, start=195),
            observation(103, start=-10),
        ]
    )
    rest = read_all(api, limit=10, cursor=first.meta.cursor)

    ids = [item.id for item in rest]
    assert ids == [
        "obs-00102",
        *(f"obs-{i:05d}" for i in reversed(range(20))),
        "obs-00103",
    ]


def test_oldest_first_pages_forwards_in_time(emulator, api, add):
    emulator.newest_first = False
    # Pairs share a start time so that the id has to break the tie.
    add(observation(i, start=i // 2) for i in reversed(range(25)))
    first = api.observations.get_many(limit=4)
    # Past the cursor (already read) and after it (still to come).
    add([observation(100, start=0.5), observation(101, start=1000)])

    items = [*first.data, *read_all(api, limit=4, cursor=first.meta.cursor)]
    window = read_all(
        api,
        limit=3,
        from_start_time=T0 + timedelta(seconds=2),
        to_start_time=T0 + timedelta(seconds=7),
    )

    assert [item.id for item in items] == [
        *(f"obs-{i:05d}" for i in range(25)),
        "obs-00101",
    ]
    assert [item.id for item in window] == [f"obs-{i:05d}" for i in range(4, 14)]


def test_invalid_cursor_is_a_bad_request(api):
    with pytest.raises(Error) as caught:
        api.observations.get_many(cursor="not-a-cursor!!", request_options=NO_RETRY)

    assert caught.value.body == {"message": "Invalid cursor format"}


# Query validation


@pytest.mark.parametrize("limit", [0, -1, 1001])
def test_limit_out_of_range_is_a_bad_request(api, limit):
    with pytest.raises(Error) as caught:
        api.observations.get_many(limit=limit, request_options=NO_RETRY)

    assert caught.value.status_code == 400
    assert "limit must be between 1 and 1000" in caught.value.body["message"]


def test_non_integer_limit_is_a_bad_request(langfuse_emulator, langfuse_project):
    response = httpx.get(
        langfuse_emulator.url + OBSERVATIONS_PATH,
        params={"limit": "ten"},
        auth=(langfuse_project.public_key, langfuse_project.secret_key),
    )

    assert response.status_code == 400
    assert "integer" in response.json()["message"]


def test_parse_io_as_json_is_rejected_as_documented(api):
    with pytest.raises(Error) as caught:
        api.observations.get_many(parse_io_as_json=True, request_options=NO_RETRY)

    assert "parseIoAsJson=true is no longer supported" in caught.value.body["message"]
    assert api.observations.get_many(parse_io_as_json=False).data == []


def test_unknown_field_group_is_a_bad_request(api):
    with pytest.raises(Error) as caught:
        api.observations.get_many(fields="core,usage,costs", request_options=NO_RETRY)

    assert "costs" in caught.value.body["message"]


def test_bad_timestamp_and_structured_filter_are_bad_requests(
    langfuse_emulator, langfuse_project
):
    auth = (langfuse_project.public_key, langfuse_project.secret_key)
    url = langfuse_emulator.url + OBSERVATIONS_PATH

    assert (
        httpx.get(url, params={"fromStartTime": "yesterday"}, auth=auth).status_code
        == 400
    )
    assert httpx.get(url, params={"filter": "{}"}, auth=auth).status_code == 400
    assert httpx.get(url, params={"filter": "[1"}, auth=auth).status_code == 400
    # A filter the emulator does not implement fails loudly, never silently.
    unsupported = '[{"type":"number","column":"latency","operator":">","value":1}]'
    assert httpx.get(url, params={"filter": unsupported}, auth=auth).status_code == 400
    assert httpx.get(url, params={"level": "LOUD"}, auth=auth).status_code == 400


def test_structured_filter_selects_traces_by_id_within_start_bounds(api, add):
    add(observation(i, traceId=f"t{i % 3}") for i in range(12))
    conditions = [
        {
            "type": "stringOptions",
            "column": "traceId",
            "operator": "any of",
            "value": ["t0", "t2"],
        },
        {
            "type": "datetime",
            "column": "startTime",
            "operator": ">=",
            "value": (T0 + timedelta(seconds=3)).isoformat(),
        },
        {
            "type": "datetime",
            "column": "startTime",
            "operator": "<",
            "value": (T0 + timedelta(seconds=9)).isoformat(),
        },
    ]
    # The structured filter takes precedence over the query parameters.
    items = read_all(api, filter=json.dumps(conditions), trace_id="t1")
    assert sorted(item.id for item in items) == [
        "obs-00003",
        "obs-00005",
        "obs-00006",
        "obs-00008",
    ]


# Filters


def test_start_time_window_is_inclusive_then_exclusive(api, add):
    # 1 ms apart around both edges of the window [10 s, 20 s).
    starts = [9.999, 10.0, 10.001, 19.999, 20.0, 20.001]
    add(observation(i, start=start) for i, start in enumerate(starts))

    items = read_all(
        api,
        from_start_time=T0 + timedelta(seconds=10),
        to_start_time=T0 + timedelta(seconds=20),
    )

    assert [item.id for item in items] == ["obs-00003", "obs-00002", "obs-00001"]
    assert items[0].start_time == T0 + timedelta(seconds=19.999)
    assert items[-1].start_time == T0 + timedelta(seconds=10)


def test_window_and_cursor_combine(api, add):
    add(observation(i) for i in range(100))

    items = read_all(
        api,
        limit=7,
        from_start_time=T0 + timedelta(seconds=20),
        to_start_time=T0 + timedelta(seconds=60),
    )

    assert [item.id for item in items] == [
        f"obs-{i:05d}" for i in reversed(range(20, 60))
    ]


def test_trace_type_and_user_filters(api, add):
    add(observation(i, type="SPAN" if i % 4 == 0 else "GENERATION") for i in range(40))

    by_trace = read_all(api, trace_id="trace-00003")
    spans = read_all(api, type="SPAN")
    user = read_all(api, user_id="user-1", type="GENERATION")

    assert [item.id for item in by_trace] == [
        f"obs-{i:05d}" for i in reversed(range(12, 16))
    ]
    assert {item.id for item in spans} == {f"obs-{i:05d}" for i in range(0, 40, 4)}
    assert {item.id for item in user} == {
        f"obs-{i:05d}" for i in range(40) if i % 3 == 1 and i % 4
    }


def test_other_query_filters(api, add):
    add(
        [
            observation(0, parentObservationId=None, environment="production"),
            observation(1, parentObservationId="obs-00000", environment="staging"),
            observation(2, parentObservationId="obs-00000", level="ERROR", name="x"),
        ]
    )

    def ids(**params: Any) -> list[str]:
        return [item.id for item in read_all(api, **params)]

    assert ids(environment=["production", "staging"]) == ["obs-00001", "obs-00000"]
    assert ids(level="ERROR") == ids(name="x") == ["obs-00002"]
    assert ids(is_root_observation=True) == ["obs-00000"]
    assert ids(parent_observation_id="obs-00000") == ["obs-00002", "obs-00001"]
    assert ids(parent_observation_id="") == ["obs-00000"]


# Field groups


@pytest.mark.parametrize(
    "fields",
    [None, "usage", "model,usage", "core,metadata,trace_context", "time,metrics"],
)
def test_only_requested_field_groups_are_returned(api, add, fields):
    add([observation(0, completionStartTime=at(0.4), tags=["a"], release="v1")])

    item = api.observations.get_many(fields=fields).data[0]

    groups = {"core", *(fields.split(",") if fields else ["basic"])}
    expected = {
        PYDANTIC_NAMES.get(name, name)
        for group in groups
        for name in FIELD_GROUPS[group]
    }
    assert item.model_fields_set == expected


def test_all_field_groups_parse_with_their_values(api, add, langfuse_project):
    add(
        [
            observation(
                0,
                completionStartTime=at(0.4),
                tags=["billing"],
                release="v1.2",
                input={"messages": ["hi"]},
                promptName="triage",
                promptVersion=3,
                modelParameters={"temperature": 0.2},
            )
        ]
    )

    item = api.observations.get_many(fields=",".join(FIELD_GROUPS)).data[0]

    assert item.project_id == langfuse_project.project_id
    assert item.usage_details == {"input": 100, "output": 20, "total": 120}
    assert item.total_cost == pytest.approx(0.000027)
    assert item.model == "gpt-4o-mini" and item.model_parameters == {"temperature": 0.2}
    assert item.metadata == {"project_id": "web", "agent": "support"}
    assert (item.trace_name, item.tags, item.release) == (
        "support",
        ["billing"],
        "v1.2",
    )
    assert item.input == '{"messages": ["hi"]}'  # always a raw string
    assert (item.latency, item.time_to_first_token) == (1.5, 0.4)
    assert item.level == "DEFAULT" and item.is_root_observation is True
    assert (item.prompt_name, item.prompt_version) == ("triage", 3)
    assert item.created_at is not None


def test_times_are_iso_with_milliseconds_and_z(
    langfuse_emulator, langfuse_project, add
):
    add([observation(0, start=0.123456)])

    response = httpx.get(
        langfuse_emulator.url + OBSERVATIONS_PATH,
        auth=(langfuse_project.public_key, langfuse_project.secret_key),
    )

    item = response.json()["data"][0]
    assert item["startTime"] == "2025-03-01T12:00:00.123Z"
    assert item["endTime"] == "2025-03-01T12:00:01.623Z"


def test_long_metadata_values_are_truncated_unless_expanded(api, add):
    add([observation(0, metadata={"note": "x" * 300, "agent": "a"})])

    truncated = api.observations.get_many(fields="metadata").data[0].metadata
    expanded = api.observations.get_many(fields="metadata", expand_metadata="note")

    assert len(truncated["note"]) == 200
    assert expanded.data[0].metadata["note"] == "x" * 300


# Storage semantics


def test_same_id_replaces_the_observation(api, add):
    add([observation(0, endTime=None, totalCost=None)])
    created = api.observations.get_many(fields="time").data[0].created_at

    add([observation(0)])

    items = read_all(api, fields="usage,time")
    assert len(items) == 1
    assert items[0].end_time is not None and items[0].total_cost is not None
    assert items[0].created_at == created


def test_upsert_that_moves_start_time_moves_the_item(api, add):
    add(observation(i) for i in range(5))
    add([observation(0, start=10)])

    ids = [item.id for item in read_all(api)]

    assert ids == ["obs-00000", "obs-00004", "obs-00003", "obs-00002", "obs-00001"]


def test_late_observations_stay_hidden_until_visible(
    emulator, api, add, monkeypatch, langfuse_project
):
    now = 1_000_000.0
    monkeypatch.setattr(emulator, "clock", lambda: now)
    add(observation(i) for i in range(10))
    # Ingested late, but it started in the middle of what was already read.
    add([observation(10, start=4.5)], visible_at=now + 60)

    before = read_all(api)
    monkeypatch.setattr(emulator, "clock", lambda: now + 60)
    after = read_all(api)

    assert [item.id for item in before] == [f"obs-{i:05d}" for i in reversed(range(10))]
    assert [item.id for item in after] == [
        *(f"obs-{i:05d}" for i in reversed(range(5, 10))),
        "obs-00010",
        *(f"obs-{i:05d}" for i in reversed(range(5))),
    ]
    assert emulator.observation_count(langfuse_project.public_key) == 11


def test_unknown_fields_are_refused_at_ingestion(emulator, langfuse_project):
    with pytest.raises(ValueError, match="usage_details"):
        emulator.add_observations(
            langfuse_project.public_key, [observation(0, usage_details={})]
        )


# Rate limits and faults


def test_rate_limit_is_per_public_key(emulator, langfuse_api):
    emulator.add_project(public_key="pk-lf-other", secret_key="sk-lf-other")
    emulator.rate_limiter = MinuteRateLimiter(2, clock=lambda: 60 * 1000 + 15.0)
    limited = langfuse_api().observations.with_raw_response
    other = langfuse_api(
        public_key="pk-lf-other", secret_key="sk-lf-other"
    ).observations

    first = limited.get_many(request_options=NO_RETRY)
    second = limited.get_many(request_options=NO_RETRY)
    with pytest.raises(ApiError) as caught:
        limited.get_many(request_options=NO_RETRY)

    assert first.headers["x-ratelimit-limit"] == "2"
    assert [
        first.headers["x-ratelimit-remaining"],
        second.headers["x-ratelimit-remaining"],
    ] == ["1", "0"]
    assert int(first.headers["x-ratelimit-reset"]) > 0
    assert caught.value.status_code == 429
    assert caught.value.headers["retry-after"] == "45"
    assert caught.value.headers["x-ratelimit-remaining"] == "0"
    assert other.get_many(request_options=NO_RETRY).data == []
    assert emulator.stats.rate_limited == 1


def test_rate_limit_window_resets_on_the_emulator_clock(emulator, api, monkeypatch):
    now = [120.0]
    monkeypatch.setattr(emulator, "clock", lambda: now[0])
    emulator.rate_limiter = MinuteRateLimiter(1, clock=lambda: now[0])

    api.observations.get_many(request_options=NO_RETRY)
    with pytest.raises(ApiError):
        api.observations.get_many(request_options=NO_RETRY)
    now[0] += 60

    assert api.observations.get_many(request_options=NO_RETRY).data == []


def test_no_rate_limit_headers_without_a_limit(api):
    response = api.observations.with_raw_response.get_many()

    assert "x-ratelimit-limit" not in response.headers


def test_injected_429_carries_retry_after(emulator, api):
    emulator.faults = Faults(rate_429=1.0, retry_after=7)

    with pytest.raises(ApiError) as caught:
        api.observations.get_many(request_options=NO_RETRY)

    assert caught.value.status_code == 429
    assert caught.value.headers["retry-after"] == "7"


def test_injected_429_hits_about_its_fraction(emulator, api):
    emulator.faults = Faults(rate_429=0.3, seed=11)
    outcomes = []
    for _ in range(60):
        try:
            api.observations.get_many(request_options=NO_RETRY)
            outcomes.append(200)
        except ApiError as exc:
            outcomes.append(exc.status_code)

    assert set(outcomes) == {200, 429}
    assert 8 <= outcomes.count(429) <= 30
    assert emulator.stats.snapshot()["by_status"][429] == outcomes.count(429)


def test_injected_5xx(emulator, api):
    emulator.faults = Faults(rate_5xx=1.0)

    with pytest.raises(ApiError) as caught:
        api.observations.get_many(request_options=NO_RETRY)

    assert caught.value.status_code == 503


def test_connection_reset_is_a_transport_error(emulator, api):
    emulator.faults = Faults(rate_reset=1.0)

    with pytest.raises(httpx.TransportError):
        api.observations.get_many(request_options=NO_RETRY)

    assert emulator.stats.connection_resets == 1


def test_malformed_items_still_parse_but_are_corrupt(emulator, api, add):
    add(observation(i) for i in range(300))
    emulator.faults = Faults(rate_malformed=1.0, seed=5)

    items = read_all(api, limit=100, fields="core,basic,usage,model,metadata")

    malformed = emulator.stats.malformed
    assert len(items) == 300 and len(malformed) == 300
    assert set(malformed.values()) == set(MALFORMED_KINDS)
    for item in items:
        assert corruption(item) == malformed[item.id]


def test_malformed_fraction_only_corrupts_some(emulator, api, add):
    add(observation(i) for i in range(200))
    emulator.faults = Faults(rate_malformed=0.1, seed=2)

    items = read_all(api, limit=200, fields="core,usage")

    malformed = emulator.stats.malformed
    assert 5 <= len(malformed) <= 40
    assert {item.id for item in items if corruption(item)} == set(malformed)
    assert set(malformed.values()) <= {
        "missing_trace_id",
        "end_before_start",
        "negative_tokens",
        "negative_cost",
        "usage_total_mismatch",
    }


def corruption(item: Any) -> str | None:
    """Which MALFORMED_KINDS an observation built by observation() shows."""
    usage = item.usage_details or {}
    if item.trace_id is None:
        return "missing_trace_id"
    if item.end_time is not None and item.end_time < item.start_time:
        return "end_before_start"
    if any(count < 0 for count in usage.values()):
        return "negative_tokens"
    if item.total_cost is not None and item.total_cost < 0:
        return "negative_cost"
    if usage and usage["total"] != sum(v for k, v in usage.items() if k != "total"):
        return "usage_total_mismatch"
    if "model" in item.model_fields_set and item.model is None:
        return "model_without_cost"
    if item.metadata is not None and not isinstance(item.metadata["project_id"], str):
        return "metadata_not_string"
    return None


def test_stats_count_requests_and_reset(emulator, api, langfuse_api):
    api.observations.get_many()
    api.health.health()
    with pytest.raises(UnauthorizedError):
        langfuse_api(secret_key="nope").observations.get_many(request_options=NO_RETRY)

    snapshot = emulator.stats.snapshot()
    emulator.stats.reset()

    assert snapshot["by_path"] == {OBSERVATIONS_PATH: 2, "/api/public/health": 1}
    assert snapshot["by_status"] == {200: 2, 401: 1}
    assert emulator.stats.requests == 0


# Per-key faults


@dataclass
class Tenants:
    """The two tenants of the fixture scenario, one to break, one to keep."""

    failing: LangfuseCredentials
    healthy: LangfuseCredentials
    failing_api: LangfuseAPI
    healthy_api: LangfuseAPI
    healthy_ids: list[str]  # what a full read must return, newest first


def newest_first_ids(scenario: Scenario, slug: str) -> list[str]:
    """The ids of a tenant's visible observations in the order Langfuse serves."""
    observations = scenario.iter_observations(scenario.tenant(slug), include_late=False)
    keys = [(to_micros(parse_timestamp(o["startTime"])), o["id"]) for o in observations]
    return [observation_id for _, observation_id in sorted(keys, reverse=True)]


@pytest.fixture
def tenants(langfuse_scenario, langfuse_api) -> Tenants:
    first, second = langfuse_scenario.tenants
    failing = credentials_for(langfuse_scenario, first.slug)
    healthy = credentials_for(langfuse_scenario, second.slug)
    return Tenants(
        failing=failing,
        healthy=healthy,
        failing_api=langfuse_api(failing),
        healthy_api=langfuse_api(healthy),
        healthy_ids=newest_first_ids(langfuse_scenario, second.slug),
    )


def test_key_faults_fail_one_tenant_while_another_reads_cleanly(emulator, tenants):
    emulator.key_faults[tenants.failing.public_key] = Faults(rate_5xx=1.0)

    # Interleaved, so that each healthy page is served between two failures.
    pages, failures, cursor = [], [], None
    while True:
        with pytest.raises(ApiError) as caught:
            tenants.failing_api.observations.get_many(request_options=NO_RETRY)
        failures.append(caught.value.status_code)
        page = tenants.healthy_api.observations.get_many(
            limit=40, cursor=cursor, request_options=NO_RETRY
        )
        pages.append(page.data)
        if (cursor := page.meta.cursor) is None:
            break

    ids = [item.id for page in pages for item in page]
    assert len(pages) > 2
    assert ids == tenants.healthy_ids
    assert set(failures) == {503}
    assert emulator.stats.malformed == {}
    assert emulator.stats.snapshot()["by_status"] == {
        200: len(pages),
        503: len(pages),
    }
    with pytest.raises(ApiError) as caught:
        tenants.failing_api.health.health(request_options=NO_RETRY)
    assert caught.value.status_code == 503
    assert tenants.healthy_api.health.health(request_options=NO_RETRY).status == "OK"


def test_key_faults_replace_the_global_faults(emulator, tenants, langfuse_emulator):
    emulator.faults = Faults(rate_5xx=1.0)
    emulator.key_faults[tenants.healthy.public_key] = Faults()

    items = read_all(tenants.healthy_api, limit=1000)

    assert [item.id for item in items] == tenants.healthy_ids
    assert tenants.healthy_api.health.health(request_options=NO_RETRY).status == "OK"
    with pytest.raises(ApiError) as caught:
        tenants.failing_api.observations.get_many(request_options=NO_RETRY)
    assert caught.value.status_code == 503
    # No credentials, no key: the global faults.
    assert httpx.get(langfuse_emulator.url + "/api/public/health").status_code == 503


def test_key_faults_inject_429_and_resets_per_key(emulator, tenants):
    emulator.key_faults[tenants.failing.public_key] = Faults(
        rate_429=1.0, retry_after=9
    )

    with pytest.raises(ApiError) as caught:
        tenants.failing_api.observations.get_many(request_options=NO_RETRY)
    healthy = tenants.healthy_api.observations.get_many(request_options=NO_RETRY)
    emulator.key_faults[tenants.failing.public_key] = Faults(rate_reset=1.0)
    with pytest.raises(httpx.TransportError):
        tenants.failing_api.observations.get_many(request_options=NO_RETRY)
    after_reset = tenants.healthy_api.observations.get_many(request_options=NO_RETRY)

    assert caught.value.status_code == 429
    assert caught.value.headers["retry-after"] == "9"
    assert [item.id for item in healthy.data] == tenants.healthy_ids[:50]
    assert [item.id for item in after_reset.data] == tenants.healthy_ids[:50]
    assert (emulator.stats.rate_limited, emulator.stats.connection_resets) == (1, 1)


def test_key_faults_slow_down_only_their_key(emulator, tenants):
    emulator.key_faults[tenants.failing.public_key] = Faults(
        rate_slow=1.0, slow_seconds=0.3
    )

    started = time.monotonic()
    slow = tenants.failing_api.observations.get_many(request_options=NO_RETRY)
    slow_seconds = time.monotonic() - started
    started = time.monotonic()
    tenants.healthy_api.observations.get_many(request_options=NO_RETRY)
    healthy_seconds = time.monotonic() - started

    assert len(slow.data) == 50  # slow, but answered
    assert slow_seconds >= 0.3 > healthy_seconds


def test_key_faults_corrupt_only_their_key(emulator, tenants):
    emulator.key_faults[tenants.failing.public_key] = Faults(rate_malformed=1.0, seed=3)

    corrupted = read_all(tenants.failing_api, limit=1000, fields="core,usage")
    clean = read_all(tenants.healthy_api, limit=1000, fields="core,usage")

    assert corrupted
    assert {item.id for item in corrupted} == set(emulator.stats.malformed)
    assert [item.id for item in clean] == tenants.healthy_ids
    assert set(emulator.stats.malformed).isdisjoint(tenants.healthy_ids)
