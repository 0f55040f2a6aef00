"""The seeded scenario: determinism, shape, costs and injected anomalies."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from billing.emulators.langfuse import LangfuseEmulator, langfuse_cost, parse_timestamp
from billing.emulators.scenario import (
    CUSTOM_PRICED_MODEL,
    HOSTILE_STRINGS,
    REASONING_FACTOR,
    SETTLE_SECONDS,
    UNPRICED_MODEL,
    Scenario,
    ScenarioTenant,
    generate_scenario,
    usage_keys,
)
from tests.fixtures.langfuse import SCENARIO_NOW, credentials_for

NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    # Big enough for two traces a day in every steady series.
    return generate_scenario(seed=3, tenants=3, traces_per_tenant=600, days=10, now=NOW)


def observations(scenario: Scenario, tenant: ScenarioTenant) -> list[dict[str, Any]]:
    return list(scenario.iter_observations(tenant))


def daily_cost(scenario, tenant, *, agent=None, project=None, user=None):
    """The cost per UTC day of the traces in one scope."""
    costs: dict[date, Decimal] = defaultdict(Decimal)
    for trace in scenario.iter_traces(tenant):
        if agent not in (None, trace.agent) or project not in (None, trace.project):
            continue
        if user not in (None, trace.user_id):
            continue
        costs[trace.start_time.date()] += trace.cost
    return costs


def test_same_seed_same_scenario():
    first = generate_scenario(seed=9, traces_per_tenant=120, days=6, now=NOW)
    second = generate_scenario(seed=9, traces_per_tenant=120, days=6, now=NOW)
    other = generate_scenario(seed=10, traces_per_tenant=120, days=6, now=NOW)

    assert first.tenants == second.tenants
    assert first.anomalies == second.anomalies
    for tenant in first.tenants:
        assert observations(first, tenant) == observations(second, tenant)
    assert first.tenants[0].public_key != other.tenants[0].public_key
    assert observations(first, first.tenants[0]) != observations(
        other, other.tenants[0]
    )


def test_a_tenant_does_not_depend_on_how_many_follow():
    small = generate_scenario(seed=9, tenants=1, traces_per_tenant=120, days=6, now=NOW)
    large = generate_scenario(seed=9, tenants=4, traces_per_tenant=120, days=6, now=NOW)

    assert small.tenants[0] == large.tenants[0]
    assert observations(small, small.tenants[0]) == observations(
        large, large.tenants[0]
    )


def test_tenant_keys_and_scopes(scenario):
    for tenant in scenario.tenants:
        assert re.fullmatch(rf"pk-lf-{tenant.slug}-[0-9a-f]{{12}}", tenant.public_key)
        assert re.fullmatch(r"sk-lf-[0-9a-f]{32}", tenant.secret_key)
        assert len(tenant.projects) == 3 and len(tenant.agents) == 4
    assert len({tenant.slug for tenant in scenario.tenants}) == 3


def test_traces_are_well_formed(scenario):
    tenant = scenario.tenants[0]
    traces = list(scenario.iter_traces(tenant))
    totals = scenario.totals(tenant)

    assert len(traces) == totals.traces == 600
    assert [t.start_time for t in traces] == sorted(t.start_time for t in traces)
    ids = [o["id"] for t in traces for o in t.all_observations()]
    assert len(ids) == len(set(ids))
    for trace in traces:
        root, *children = trace.observations
        assert 1 <= len(children) + len(trace.late_observations) <= 6
        assert root["type"] in ("AGENT", "SPAN") and root["parentObservationId"] is None
        for item in (*children, *trace.late_observations):
            assert item["parentObservationId"] == root["id"]
            assert item["traceId"] == trace.trace_id
            assert item["traceName"] == item["metadata"]["agent"] == trace.agent
            assert item["metadata"]["project_id"] in tenant.projects
            assert item["userId"] == trace.user_id
    with_epic = sum("epic" in t.observations[0]["metadata"] for t in traces)
    assert 0.7 < with_epic / len(traces) < 1


def test_costs_are_langfuse_costs_of_every_usage_key(scenario):
    seen_models, seen_keys = set(), set()
    for item in observations(scenario, scenario.tenants[0]):
        usage = item.get("usageDetails")
        if not usage:
            continue
        model = item["model"]
        seen_models.add(model)
        seen_keys |= set(usage)
        assert usage["total"] == sum(v for k, v in usage.items() if k != "total")
        assert min(usage.values()) >= 0
        if model == UNPRICED_MODEL:
            assert item["costDetails"] == {} and item["totalCost"] is None
            continue
        assert item["totalCost"] == item["costDetails"]["total"] > 0
        if model == CUSTOM_PRICED_MODEL:
            continue
        expected = langfuse_cost(model, usage)
        assert item["costDetails"] == {k: float(v) for k, v in expected.items()}
        # One key per kind the model prices, and only those.
        assert set(usage) - {"input", "output", "total"} <= set(
            usage_keys(model).values()
        )
        if "reasoning" in usage_keys(model):
            key = usage_keys(model)["reasoning"]
            assert usage[key] == REASONING_FACTOR * usage["output"]

    assert {"gpt-4o", "claude-3-5-sonnet-20241022", "text-embedding-3-small"} <= (
        seen_models
    )
    assert {CUSTOM_PRICED_MODEL, UNPRICED_MODEL} <= seen_models
    assert {
        "cache_read_input_tokens",
        "input_cached_tokens",
        "cache_creation_input_tokens",
        "output_reasoning_tokens",
        "input_audio_tokens",
    } <= seen_keys


def test_usage_keys_follow_the_model_prices():
    assert usage_keys("gpt-4o") == {"cache_read": "cache_read_input_tokens"}
    assert usage_keys("o3-mini") == {
        "cache_read": "input_cached_tokens",
        "reasoning": "output_reasoning_tokens",
    }
    assert usage_keys("claude-sonnet-4-20250514") == {
        "cache_read": "cache_read_input_tokens",
        "cache_write": "cache_creation_input_tokens",
    }
    assert usage_keys("gemini-2.5-flash") == {
        "cache_read": "input_cached_tokens",
        "reasoning": "output_reasoning_tokens",
        "audio": "input_audio_tokens",
    }
    assert usage_keys(UNPRICED_MODEL) == {}


def test_gpt_4o_price_example():
    usage = {"input": 1000, "output": 500, "cache_read_input_tokens": 2000}

    cost = langfuse_cost("gpt-4o", usage)

    # $2.50, $10 and $1.25 per million tokens.
    assert cost == {
        "input": Decimal("0.0025"),
        "output": Decimal("0.005"),
        "cache_read_input_tokens": Decimal("0.0025"),
        "total": Decimal("0.01"),
    }


def test_times_stay_in_the_window_and_running_traces_are_recent(scenario):
    tenant = scenario.tenants[1]
    start = scenario.window_start
    running = [t for t in scenario.iter_traces(tenant) if t.in_progress]

    for item in observations(scenario, tenant):
        assert start <= parse_timestamp(item["startTime"]) <= NOW
        assert item["startTime"].endswith("Z") and len(item["startTime"]) == 24
    assert len(running) == scenario.totals(tenant).in_progress_traces >= 1
    for trace in running:
        assert NOW - trace.start_time < timedelta(seconds=SETTLE_SECONDS)
        assert trace.observations[0]["endTime"] is None
        assert not trace.billable
        assert any(o["endTime"] is None for o in trace.observations[1:])


def test_some_runs_never_end_and_count_as_billable_after_the_maximum_age(scenario):
    tenant = scenario.tenants[0]
    endless = [
        t
        for t in scenario.iter_traces(tenant)
        if t.observations[0]["endTime"] is None and not t.in_progress
    ]

    assert len(endless) == 1
    (trace,) = endless
    assert timedelta(hours=2) <= NOW - trace.start_time <= timedelta(hours=5)
    assert all(o["endTime"] is not None for o in trace.observations[1:])
    assert trace.billable


def test_a_fraction_of_traces_carry_hostile_strings(scenario):
    tenant = scenario.tenants[0]
    hostile = [
        t
        for t in scenario.iter_traces(tenant)
        if "note" in t.observations[0]["metadata"]
    ]

    assert 0 < len(hostile) < 0.03 * scenario.totals(tenant).traces
    for trace in hostile:
        root = trace.observations[0]
        assert trace.user_id.endswith("\x00") and root["userId"] == trace.user_id
        assert root["name"] == root["metadata"]["note"] in HOSTILE_STRINGS
        assert "\x00" in root["sessionId"]


def test_totals_match_what_load_into_stores(scenario):
    emulator = LangfuseEmulator()
    scenario.load_into(emulator)

    for tenant in scenario.tenants:
        totals = scenario.totals(tenant)
        stored = emulator.observation_count(tenant.public_key)
        assert stored == totals.observations + totals.late_observations
        assert totals.late_observations > 0
        assert 0 < totals.billable_traces < totals.traces
        assert totals.unpriced_generations > 0


def test_control_tenant_has_no_anomalies(scenario):
    control = scenario.tenants[-1]

    assert scenario.anomalies_for(control) == []
    assert {a.kind for a in scenario.anomalies_for(scenario.tenants[0])} == {
        "cost_spike",
        "cost_drop",
        "missing_data",
        "runaway_trace",
    }
    steady = daily_cost(scenario, control, agent="nightly-digest")
    yesterday = NOW.date() - timedelta(days=1)
    assert steady[yesterday] > 0


@pytest.mark.parametrize("index", [0, 1])
def test_cost_spike_is_ten_times_the_usual_day(scenario, index):
    tenant = scenario.tenants[index]
    (spike,) = [a for a in scenario.anomalies_for(tenant) if a.kind == "cost_spike"]
    costs = daily_cost(scenario, tenant, agent=spike.value, project=spike.project)

    (day,) = spike.days
    usual = statistics.median(c for d, c in costs.items() if d != day)
    assert spike.scope == "agent" and spike.factor == 10
    assert 7 < costs[day] / usual < 14


def test_cost_drop_is_a_twentieth_of_the_usual_day(scenario):
    tenant = scenario.tenants[0]
    (drop,) = [a for a in scenario.anomalies_for(tenant) if a.kind == "cost_drop"]
    costs = daily_cost(scenario, tenant, agent=drop.value, project=drop.project)

    (day,) = drop.days
    usual = statistics.median(c for d, c in costs.items() if d != day)
    assert drop.scope == "agent" and drop.factor == 0.05
    assert 0.03 < costs[day] / usual < 0.08


def test_missing_data_follows_steady_days(scenario):
    tenant = scenario.tenants[0]
    (missing,) = [a for a in scenario.anomalies_for(tenant) if a.kind == "missing_data"]
    costs = daily_cost(scenario, tenant, agent=missing.value)

    before = [c for d, c in costs.items() if d < missing.days[0]]
    assert missing.days == (NOW.date() - timedelta(days=1), NOW.date())
    assert all(costs.get(day, 0) == 0 for day in missing.days)
    assert len(before) == scenario.days - 2
    assert max(before) / min(before) < 1.5


def test_scenario_needs_room_for_its_series():
    with pytest.raises(ValueError, match="at least 5 days"):
        generate_scenario(days=4)
    with pytest.raises(ValueError, match="too small"):
        generate_scenario(traces_per_tenant=20, days=14)
    assert (
        generate_scenario(days=2, anomalies=False, traces_per_tenant=20).anomalies == []
    )


def test_late_observations_appear_over_http_after_the_delay(
    langfuse_emulator, langfuse_scenario, langfuse_api, monkeypatch
):
    emulator = langfuse_emulator.emulator
    tenant = langfuse_scenario.tenants[0]
    api = langfuse_api(credentials_for(langfuse_scenario, tenant.slug))
    late = {
        o["id"]
        for trace in langfuse_scenario.iter_traces(tenant)
        for o in trace.late_observations
    }
    assert late, "the fixture scenario should have a late observation"

    def served_ids() -> set[str]:
        ids, cursor = set(), None
        while True:
            page = api.observations.get_many(limit=1000, cursor=cursor)
            ids |= {item.id for item in page.data}
            if (cursor := page.meta.cursor) is None:
                return ids

    before = served_ids()
    later = emulator.clock() + 301
    monkeypatch.setattr(emulator, "clock", lambda: later)
    after = served_ids()

    totals = langfuse_scenario.totals(tenant)
    assert late.isdisjoint(before) and late <= after
    assert len(after) == totals.observations + totals.late_observations
    assert langfuse_scenario.now == SCENARIO_NOW
