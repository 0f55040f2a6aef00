from datetime import timedelta
from decimal import Decimal

import pytest

from anomalies.detectors import (
    detect_baseline,
    detect_cohort,
    detect_day,
    detect_missing_data,
)
from billing.models import CostSummary
from tests.anomalies.conftest import TODAY
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db

DAY = TODAY.date()


def _agents(summary, tenant, costs, project="web"):
    for n, cost in enumerate(costs):
        summary(tenant, "agent", f"agent-{n}", cost, project=project)


def test_cohort_flags_a_scope_far_above_its_peers(tenant, summary):
    _agents(summary, tenant, [1, 1.2, 0.9, 1.1, 10])
    [finding] = detect_cohort(DAY)
    assert (finding.anomaly_type, finding.scope_id, finding.project_id) == (
        "high_cost",
        "agent-4",
        "web",
    )
    assert finding.observed == Decimal(10)
    assert finding.expected == Decimal("1.1")  # the group's median


def test_a_new_scope_gets_no_low_verdict(tenant, summary):
    # Its first day is partial: low is what a new scope is.
    _agents(summary, tenant, [1, 1, 1, 0.05])
    assert detect_cohort(DAY) == []


def test_cohort_leaves_normal_spread_and_small_groups_alone(tenant, summary):
    _agents(summary, tenant, [1, 1.4, 0.8, 1.1, 2.5])
    _agents(summary, tenant, [1, 30], project="tiny")  # two members: no average
    summary(tenant, "project", "web", 100)  # projects have no cohort
    assert detect_cohort(DAY) == []


def test_groups_are_per_project_and_per_tenant(tenant, other_tenant, summary):
    _agents(summary, tenant, [1, 1, 1], project="web")
    _agents(summary, tenant, [10, 10, 10], project="mobile")
    _agents(summary, other_tenant, [1, 1, 1], project="web")
    assert detect_cohort(DAY) == []


def test_cohort_thresholds_are_per_tenant(summary):
    lenient = TenantFactory(anomaly_high_ratio=Decimal("20"))
    _agents(summary, lenient, [1, 1, 1, 10])
    assert detect_cohort(DAY) == []


def _history(summary, tenant, costs, today=None, scope=("agent", "bot", "web")):
    scope_type, scope_id, project = scope
    for days_ago, cost in enumerate(reversed(costs), start=1):
        summary(
            tenant,
            scope_type,
            scope_id,
            cost,
            day=TODAY - timedelta(days=days_ago),
            project=project,
        )
    if today is not None:
        summary(tenant, scope_type, scope_id, today, project=project)


def test_baseline_flags_a_spike_and_an_old_outlier_does_not_mask_it(tenant, summary):
    history = [1.0, 1.1, 0.9, 8.0, 1.0, 1.05, 0.95, 1.0, 1.1, 0.9]
    _history(summary, tenant, history, today=6.0)
    [finding] = detect_baseline(DAY)
    assert (finding.anomaly_type, finding.scope_id) == ("spike_vs_baseline", "bot")
    assert finding.observed == Decimal(6)
    assert finding.expected == Decimal("1.0")  # the median, unmoved by the 8.0


def test_baseline_leaves_ordinary_days_alone(tenant, summary):
    _history(summary, tenant, [1.0, 1.1, 0.9, 1.0, 1.2, 0.8, 1.0, 1.1], today=1.6)
    assert detect_baseline(DAY) == []


def test_baseline_needs_enough_history(tenant, summary):
    _history(summary, tenant, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0], today=20)
    assert detect_baseline(DAY) == []


def test_missing_data_flags_a_steady_scope_that_stops(tenant, summary):
    _history(
        summary,
        tenant,
        [1.0, 1.2, 0.9, 1.1, 1.0, 0.8, 1.0],
        scope=("project", "api", ""),
    )
    [finding] = detect_missing_data(DAY)
    assert (finding.anomaly_type, finding.scope_type, finding.scope_id) == (
        "missing_data",
        "project",
        "api",
    )
    assert finding.observed == 0
    assert finding.expected == Decimal("1.0")


def test_missing_data_ignores_unsteady_or_short_or_still_running_scopes(
    tenant, summary
):
    _history(
        summary, tenant, [0.1, 3, 0.2, 2, 1, 0.1, 4], scope=("agent", "bursty", "web")
    )
    _history(summary, tenant, [1, 1, 1, 1, 1, 1], scope=("agent", "new", "web"))
    _history(
        summary, tenant, [1, 1, 1, 1, 1, 1, 1], today=0.9, scope=("agent", "ok", "web")
    )
    assert detect_missing_data(DAY) == []


def test_suspended_tenants_get_no_findings(summary):
    tenant = TenantFactory(status="suspended")
    _agents(summary, tenant, [1, 1, 1, 10])
    assert detect_cohort(DAY) == []


def test_thin_scopes_get_no_cohort_verdict(tenant, summary):
    _agents(summary, tenant, [1, 1, 1, 10])
    CostSummary.objects.filter(scope_id="agent-3").update(trace_count=2)
    assert detect_cohort(DAY) == []


# Issue 13: each rule's own case and its false-positive traps.


def test_one_outlier_peer_does_not_make_its_peers_look_low(tenant, summary):
    # With the peers' average (8.25 here) as the yardstick, the three ordinary
    # agents read as 88% down; the group's median is one of them.
    _agents(summary, tenant, [1, 1.1, 0.9, 30])
    [finding] = detect_cohort(DAY)
    assert (finding.anomaly_type, finding.scope_id) == ("high_cost", "agent-3")
    assert finding.expected == Decimal("1.05")


def test_cohort_leaves_a_scope_that_always_costs_that_much_alone(tenant, summary):
    # A structurally expensive agent: 10x its peers on every day of its
    # history is its normal, not an anomaly; nor is a new agent as pricey.
    for days_ago in range(1, 11):
        day = TODAY - timedelta(days=days_ago)
        for name, cost in (("a", 1), ("b", 1), ("c", 1), ("big", 10)):
            summary(tenant, "agent", name, cost, day=day, project="web")
    for name, cost in (("a", 1), ("b", 1.1), ("c", 0.9), ("big", 11), ("new", 10)):
        summary(tenant, "agent", name, cost, project="web")
    assert detect_cohort(DAY) == []
    # A new agent is judged against the costliest of its peers: far above it.
    CostSummary.objects.filter(scope_id="new").update(cost=40)
    assert [(f.anomaly_type, f.scope_id) for f in detect_cohort(DAY)] == [
        ("high_cost", "new")
    ]


def test_cohort_flags_a_drop_of_a_scope_with_history(tenant, summary):
    for days_ago in range(1, 11):
        for name in ("agent-0", "agent-1", "agent-2", "agent-3"):
            summary(
                tenant,
                "agent",
                name,
                1,
                day=TODAY - timedelta(days=days_ago),
                project="web",
            )
    _agents(summary, tenant, [1, 1, 1, 0.05])
    [finding] = detect_cohort(DAY)
    assert (finding.anomaly_type, finding.scope_id) == ("suspiciously_low", "agent-3")


def test_a_partial_first_day_is_not_history(tenant, summary):
    # Six full days and the afternoon the scope started: not the seven
    # complete days a verdict needs (and the afternoon would drag the median).
    _history(summary, tenant, [0.5, 10, 10, 10, 10, 10, 10], today=25)
    assert detect_baseline(DAY) == []
    # Once the scope has a day before it, that afternoon is a day like any
    # other: seven complete days, and the same spike is flagged against 10.
    summary(tenant, "agent", "bot", 10, day=TODAY - timedelta(days=8), project="web")
    [finding] = detect_baseline(DAY)
    assert finding.expected == Decimal(10)


def test_a_scope_that_started_before_the_window_keeps_its_first_day(tenant, summary):
    _history(summary, tenant, [10] * 28, today=25)
    [finding] = detect_baseline(DAY)
    assert finding.expected == Decimal(10)


def _weekly(summary, tenant, weekday_cost, weekend_cost, today):
    for days_ago in range(1, 29):
        day = TODAY - timedelta(days=days_ago)
        cost = weekend_cost if day.weekday() >= 5 else weekday_cost
        summary(tenant, "agent", "bot", cost, day=day, project="web")
    summary(tenant, "agent", "bot", today, project="web")


def test_weekday_heavy_usage_does_not_make_a_monday_a_spike(tenant, summary):
    assert TODAY.weekday() == 4  # a Friday: compared with a week of weekdays
    _weekly(summary, tenant, weekday_cost=30, weekend_cost=10, today=33)
    assert detect_baseline(DAY) == []


def test_weekend_heavy_usage_is_compared_with_the_same_weekday(tenant, summary):
    saturday = (TODAY + timedelta(days=1)).date()
    for days_ago in range(0, 28):
        day = TODAY - timedelta(days=days_ago)
        cost = 30 if day.weekday() >= 5 else 10
        summary(tenant, "agent", "bot", cost, day=day, project="web")
    summary(tenant, "agent", "bot", 32, day=TODAY + timedelta(days=1), project="web")
    assert detect_baseline(saturday) == []
    CostSummary.objects.filter(period_start=TODAY + timedelta(days=1)).update(cost=95)
    [finding] = detect_baseline(saturday)
    assert finding.expected == Decimal(30)  # its Saturdays, not its median day


def test_a_new_scope_gets_no_baseline_or_missing_data_verdict(tenant, summary):
    summary(tenant, "agent", "fresh", 500, project="web")
    assert detect_baseline(DAY) == []
    assert detect_missing_data(DAY) == []


def test_cent_sized_changes_are_not_material(tenant, summary):
    # A $0.35 day at 2.7x is a 60-cent change: below the $1 floor.
    _history(summary, tenant, [0.35] * 10, today=0.95)
    assert [f.scope_id for f in detect_baseline(DAY)] == ["bot"]
    assert detect_day(DAY) == []


def test_the_floor_is_a_share_of_the_tenant_s_day(tenant, summary):
    # $40 over expected is material at a small tenant, not at one spending
    # $10,000 that day (1% = $100).
    _history(summary, tenant, [20] * 10, today=60)
    summary(tenant, "project", "web", 500)
    assert [f.scope_id for f in detect_day(DAY)] == ["bot"]
    CostSummary.objects.filter(scope_type="project").update(cost=10_000)
    assert detect_day(DAY) == []
    tenant.anomaly_min_share = Decimal("0.001")
    tenant.save()
    assert [f.scope_id for f in detect_day(DAY)] == ["bot"]


def test_a_user_s_costly_day_needs_more_traces_to_be_a_spike(tenant, summary):
    # A user at 3x with the usual number of traces hit pricier agents that
    # day; at twice the traces, they did more.
    _history(summary, tenant, [10] * 10, today=30, scope=("user", "u1", ""))
    assert detect_baseline(DAY) == []
    CostSummary.objects.filter(period_start=TODAY).update(trace_count=20)
    assert [f.scope_id for f in detect_baseline(DAY)] == ["u1"]


def test_a_small_agent_below_its_peers_is_judged_by_its_own_days(tenant, summary):
    # 2% of its peers' median is its normal; its money at stake is what it
    # usually costs, not the peers' median.
    for days_ago in range(1, 11):
        for name, cost in (("a", 10), ("b", 10), ("c", 10), ("tiny", 0.2)):
            day = TODAY - timedelta(days=days_ago)
            summary(tenant, "agent", name, cost, day=day, project="web")
    for name, cost in (("a", 10), ("b", 10), ("c", 10), ("tiny", 0.05)):
        summary(tenant, "agent", name, cost, project="web")
    [finding] = detect_cohort(DAY)
    assert (finding.scope_id, finding.expected) == ("tiny", Decimal(10))
    assert finding.money_at_stake() == Decimal("0.15")
    assert detect_day(DAY) == []
