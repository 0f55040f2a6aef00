from datetime import timedelta
from decimal import Decimal

import pytest

from anomalies.detectors import detect_baseline, detect_cohort, detect_missing_data
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
    assert finding.expected == Decimal("1.05")  # the other four's average


def test_cohort_flags_a_scope_far_below_its_peers(tenant, summary):
    for n, cost in enumerate([1, 1, 1, 0.05]):
        summary(tenant, "user", f"u{n}", cost)
    [finding] = detect_cohort(DAY)
    assert (finding.anomaly_type, finding.scope_id) == ("suspiciously_low", "u3")


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
