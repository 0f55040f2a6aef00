from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from rq import SimpleWorker

from anomalies.jobs import enqueue_daily_analytics
from anomalies.models import CostAnomaly
from anomalies.pipeline import DETECT_LOCK, detect_days, rollup_days
from billing.ledger import Totals
from billing.locks import advisory_lock
from billing.models import AnalyticsRun, CostSummary, Tenant, UsageRecord

DAY = datetime(2026, 11, 20, tzinfo=UTC)


def usage(tenant, agent, cost, day, n=1):
    for i in range(n):
        entries = {
            f"{agent}-{day:%d}-{i}": ["gpt-4o", 10, 10, 0, str(cost), "price_table"]
        }
        row = UsageRecord(
            tenant=tenant,
            trace_id=f"{agent}-{day:%Y%m%d}-{i}",
            trace_timestamp=day + timedelta(hours=1),
            last_activity_at=day,
            project_id="web",
            agent_id=agent,
            user_id=f"user-{agent}",
            observations=entries,
            content_hash="x",
        )
        Totals.of(entries.values()).apply_to(row)
        row.save()


def seed_month(tenant):
    """Seven steady agents for 10 days; on the last day one spikes, one stops."""
    for back in range(10, -1, -1):
        day = DAY - timedelta(days=back)
        for agent in ("a", "b", "c", "d", "e", "f", "steady"):
            if agent == "steady" and back == 0:
                continue  # stops on the last day
            # Dollars, not cents: above the tenant's materiality floor.
            cost = "5.00" if agent == "a" and back == 0 else "0.50"
            usage(tenant, agent, cost, day, n=5)


@pytest.mark.django_db
def test_rollup_then_detect_finds_each_kind_and_records_runs(tenant):
    seed_month(tenant)
    days = [(DAY - timedelta(days=n)).date() for n in range(10, -1, -1)]

    rollup = rollup_days(days)
    detect = detect_days([DAY.date()])

    assert rollup.status == detect.status == "succeeded"
    assert rollup.summaries_written == CostSummary.objects.count()
    kinds = set(
        CostAnomaly.objects.values_list("anomaly_type", "scope_type", "scope_id")
    )
    assert ("high_cost", "agent", "a") in kinds
    assert ("spike_vs_baseline", "agent", "a") in kinds
    assert ("missing_data", "agent", "steady") in kinds
    assert detect.anomalies_created == CostAnomaly.objects.count()
    spike = CostAnomaly.objects.get(anomaly_type="high_cost", scope_id="a")
    assert spike.top_contributors["models"][0][0] == "gpt-4o"
    assert spike.top_contributors["traces"][0][0].startswith("a-20261120-")
    assert len(spike.top_contributors["traces"]) == 5

    again = detect_days([DAY.date()])
    assert (again.anomalies_created, again.anomalies_updated) == (0, 0)


@pytest.mark.django_db(transaction=True)
def test_a_held_lock_makes_a_second_detection_skip(tenant):
    with advisory_lock(DETECT_LOCK, 0) as held:
        assert held
        from django.db import connections

        other = connections.create_connection("default")
        try:
            with other.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [DETECT_LOCK, 0])
                assert cursor.fetchone() == (False,)
        finally:
            other.close()
    assert detect_days([DAY.date()]).status == "succeeded"


@pytest.mark.django_db(transaction=True)
def test_detection_runs_after_rollup_through_a_real_worker(tenant, queue):
    seed_month(tenant)
    for back in range(10, 0, -1):
        rollup_days([(DAY - timedelta(days=back)).date()])

    # No Stripe customer: the reconciliation after the rollup has no day to
    # check (tests/billing/sync/test_stripe_reconcile.py checks them).
    Tenant.objects.update(stripe_customer_id="")
    rollup_job, detect_job, reconcile_job = enqueue_daily_analytics(DAY.date())
    assert detect_job.get_status() == reconcile_job.get_status() == "deferred"
    SimpleWorker([queue], connection=queue.connection).work(burst=True)
    assert reconcile_job.return_value() == {"tenant_days": 0, "drift": 0, "resent": 0}

    rollup = AnalyticsRun.objects.get(kind="rollup", job_id=rollup_job.id)
    detect = AnalyticsRun.objects.get(kind="detect", job_id=detect_job.id)
    assert rollup.status == detect.status == "succeeded"
    assert detect.started_at >= rollup.finished_at
    assert detect_job.return_value()["anomalies_created"] == CostAnomaly.objects.count()
    assert CostAnomaly.objects.filter(anomaly_type="missing_data").exists()


@pytest.mark.django_db
def test_commands_take_a_date_or_a_range(tenant):
    seed_month(tenant)
    out = StringIO()
    call_command("rollup_costs", "--since=2026-11-10", "--until=2026-11-20", stdout=out)
    call_command("detect_anomalies", "--date=2026-11-20", stdout=out)
    assert "rollup 2026-11-10..2026-11-20: succeeded" in out.getvalue()
    assert "detection 2026-11-20..2026-11-20: succeeded" in out.getvalue()
    with pytest.raises(CommandError, match="either --date or --since"):
        call_command("rollup_costs", "--date=2026-11-20", "--since=2026-11-01")
    with pytest.raises(CommandError, match="not 'yesterday'"):
        call_command("rollup_costs", "--date=yesterday")
