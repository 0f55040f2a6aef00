from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection

from anomalies.detectors import detect_day, detect_expensive_traces
from anomalies.evidence import anomaly_explanation
from anomalies.models import CostAnomaly
from anomalies.pipeline import detect_days, rollup_days
from billing.ledger import Totals
from billing.models import DailyTraceCost, UsageRecord
from billing.tenancy import tenant_context

pytestmark = pytest.mark.django_db

DAY = datetime(2026, 11, 20, tzinfo=UTC)


def trace(tenant, trace_id, cost, day, agent="loop-bot", user="u1"):
    entries = {f"{trace_id}-o": ["gpt-4o", 10, 10, 0, str(cost), "price_table"]}
    row = UsageRecord(
        tenant=tenant,
        trace_id=trace_id,
        trace_timestamp=day + timedelta(hours=3),
        last_activity_at=day,
        project_id="web",
        agent_id=agent,
        user_id=user,
        observations=entries,
        content_hash="x",
    )
    Totals.of(entries.values()).apply_to(row)
    row.save()


def week_of_traces(tenant, costs, days=8, agent="loop-bot"):
    """``costs`` on each of the ``days`` days up to DAY, DAY included."""
    for back in range(days - 1, -1, -1):
        day = DAY - timedelta(days=back)
        for n, cost in enumerate(costs):
            trace(tenant, f"{agent}-{day:%m%d}-{n}", cost, day, agent=agent)
    return [(DAY - timedelta(days=n)).date() for n in range(days - 1, -1, -1)]


def test_the_ledger_keeps_each_agent_s_trace_cost_histogram(tenant):
    # $0.01..$0.20: buckets of a quarter octave, 2^(b/4) <= cost < 2^((b+1)/4).
    week_of_traces(tenant, [Decimal(n) / 100 for n in range(1, 21)], days=1)
    buckets = dict(
        DailyTraceCost.objects.filter(agent_id="loop-bot").values_list(
            "bucket", "traces"
        )
    )
    assert sum(buckets.values()) == 20
    assert min(buckets) == -27  # $0.01: 2^(-27/4) = $0.0093
    assert buckets[-10] == 3  # $0.18 to $0.20: from 2^(-10/4) = $0.177
    UsageRecord.objects.filter(cost=Decimal("0.20")).update(status="skipped")
    assert DailyTraceCost.objects.get(bucket=-10).traces == 2
    UsageRecord.objects.filter(cost=Decimal("0.20")).update(status="pending")
    UsageRecord.objects.filter(cost=Decimal("0.01")).update(cost=Decimal("3.00"))
    now = dict(DailyTraceCost.objects.values_list("bucket", "traces"))
    assert (now[-27], now[6]) == (0, 1)  # $3: 2^(6/4) = $2.83


def test_a_runaway_trace_is_flagged_with_the_trace_as_its_cause(tenant):
    days = week_of_traces(tenant, ["0.40", "0.50", "0.60", "0.45", "0.55"] * 2)
    trace(tenant, "runaway", "30.00", DAY)  # one loop: 60x the agent's p95
    rollup_days(days)

    [finding] = detect_expensive_traces(DAY.date())
    assert (finding.anomaly_type, finding.scope_type, finding.scope_id) == (
        "expensive_trace",
        "agent",
        "loop-bot",
    )
    # The p95 is the 0.60 trace's bucket (0.59..0.71), read as its middle.
    assert finding.observed == Decimal(30)
    assert Decimal("0.59") < finding.expected < Decimal("0.71")

    detect_days([DAY.date()])
    anomaly = CostAnomaly.objects.get(anomaly_type="expensive_trace")
    assert anomaly.top_contributors["traces"][0] == ["runaway", "30.0000000000"]
    assert anomaly.cause == "trace:runaway"
    tenant.refresh_from_db()  # the factor as stored: 15.00
    explained = anomaly_explanation(anomaly=anomaly)
    assert "One trace cost more than 15x this agent's" in explained.rule


def test_an_agent_with_a_heavy_tail_is_judged_by_its_own_tail(tenant):
    # One trace in ten costs $5 every day: a $20 trace is 4x its p95.
    days = week_of_traces(tenant, ["0.50"] * 9 + ["5.00"])
    trace(tenant, "big-but-usual", "20.00", DAY)
    rollup_days(days)
    assert detect_expensive_traces(DAY.date()) == []


def test_too_little_history_gives_no_verdict(tenant):
    # Two days of five traces: ten traces, below the twenty it needs.
    days = week_of_traces(tenant, ["0.50"] * 5, days=3)
    trace(tenant, "runaway", "30.00", DAY)
    rollup_days(days)
    assert detect_expensive_traces(DAY.date()) == []


def test_a_trace_factor_per_tenant_and_the_floor_apply(tenant):
    days = week_of_traces(tenant, ["0.04", "0.05", "0.06"] * 4)
    trace(tenant, "loop", "0.95", DAY)  # 16x the p95, but 89 cents
    rollup_days(days)
    assert len(detect_expensive_traces(DAY.date())) == 1
    assert detect_day(DAY.date()) == []  # below the $1 floor
    tenant.anomaly_min_amount = Decimal("0.50")
    tenant.save()
    assert [f.anomaly_type for f in detect_day(DAY.date())] == ["expensive_trace"]
    tenant.anomaly_trace_factor = Decimal("25")
    tenant.save()
    assert detect_expensive_traces(DAY.date()) == []


def test_a_day_high_only_by_one_trace_is_the_expensive_trace_rule_s(tenant):
    # $10 a day in ten traces; today one more trace of $25: 3.5x the usual
    # day, all of it one trace. The agent's and project's day rules leave it
    # to the expensive-trace rule, which judges it against the agent's tail.
    days = week_of_traces(tenant, ["1.00"] * 10, days=15)
    trace(tenant, "runaway", "25.00", DAY)
    rollup_days(days)
    assert [(f.anomaly_type, f.scope_type) for f in detect_day(DAY.date())] == [
        ("expensive_trace", "agent")
    ]


def test_a_day_high_by_volume_is_a_spike_whatever_its_top_trace(tenant):
    days = week_of_traces(tenant, ["1.00"] * 10, days=15)
    for n in range(25):
        trace(tenant, f"burst-{n}", "1.00", DAY)
    rollup_days(days)
    # Its user did 3.5x the traces too: a volume spike at every level.
    assert {(f.anomaly_type, f.scope_type) for f in detect_day(DAY.date())} == {
        ("spike_vs_baseline", "agent"),
        ("spike_vs_baseline", "project"),
        ("spike_vs_baseline", "user"),
    }


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="row-level security is Postgres's"
)
def test_detection_and_grouping_run_under_rls_as_the_app_role(
    tenant, other_tenant, as_app_role
):
    # The histogram, the ledger reads and the incident grouping of a tenant's
    # run see that tenant's rows only, as the app's own role.
    days = week_of_traces(tenant, ["0.40", "0.50", "0.60", "0.45", "0.55"] * 2)
    week_of_traces(other_tenant, ["0.50"] * 10)
    trace(tenant, "runaway", "30.00", DAY)
    as_app_role()

    rollup_days(days, tenant_id=tenant.pk)
    run = detect_days([DAY.date()], tenant_id=tenant.pk)

    assert run.status == "succeeded"
    with tenant_context([tenant.pk]):
        anomaly = CostAnomaly.objects.get(anomaly_type="expensive_trace")
        assert anomaly.incident.key == "trace:runaway"
        assert anomaly.incident.tenant_id == tenant.pk
