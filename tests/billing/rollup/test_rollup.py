from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.audit import Actor
from billing.ledger import Totals
from billing.models import CostSummary, UsageAdjustment, UsageRecord
from billing.rollup import rollup_day
from billing.services import tenant_set_status
from billing.tenancy import tenant_context

pytestmark = pytest.mark.django_db

DAY = datetime(2026, 11, 20, tzinfo=UTC)


def record(
    tenant,
    trace_id,
    *,
    at=DAY,
    project="web",
    agent="bot",
    epic="E1",
    user="u1",
    entries=None,
    status="reported",
):
    entries = entries or {
        f"{trace_id}-g": ["gpt-4o", 1000, 100, 50, "0.0100", "price_table"]
    }
    row = UsageRecord(
        tenant=tenant,
        trace_id=trace_id,
        trace_timestamp=at + timedelta(hours=1),
        last_activity_at=at + timedelta(hours=1),
        project_id=project,
        agent_id=agent,
        epic_id=epic,
        user_id=user,
        observations=entries,
        content_hash=trace_id,
        status="pending",
    )
    Totals.of(entries.values()).apply_to(row)
    row.save()
    return row


def summaries(tenant):
    return {
        (s.scope_type, s.project_id, s.scope_id): s
        for s in CostSummary.objects.for_tenant(tenant)
    }


def test_rollup_aggregates_per_scope_and_model(tenant):
    record(tenant, "t1")
    record(
        tenant,
        "t2",
        agent="other",
        entries={
            "g1": ["gpt-4o", 10, 10, 0, "0.0020", "price_table"],
            "g2": ["claude-3-5-haiku-20241022", 5, 5, 0, "0.0005", "price_table"],
        },
    )
    record(tenant, "t3", project="mobile", epic="", user="u2")
    record(tenant, "yesterday", at=DAY - timedelta(days=1))

    written = rollup_day(day=DAY.date())

    rows = summaries(tenant)
    assert written == len(rows) == 8  # 2 projects, 3 agents, 1 epic, 2 users
    project = rows[("project", "", "web")]
    assert (project.trace_count, project.cost) == (2, Decimal("0.0125"))
    assert (project.input_tokens, project.output_tokens, project.cached_tokens) == (
        1015,
        115,
        50,
    )
    assert project.model_breakdown["gpt-4o"]["input"] == 1010
    assert Decimal(project.model_breakdown["claude-3-5-haiku-20241022"]["cost"]) == (
        Decimal("0.0005")
    )
    assert rows[("agent", "web", "bot")].cost == Decimal("0.0100")
    assert rows[("agent", "mobile", "bot")].trace_count == 1
    assert rows[("epic", "web", "E1")].trace_count == 2
    assert ("epic", "mobile", "") not in rows  # no epic, no epic scope
    assert rows[("user", "", "u1")].trace_count == 2
    assert project.period_start == DAY
    assert project.period_end == DAY + timedelta(days=1)


def test_rerunning_is_idempotent_and_rewrites_period_end(tenant):
    record(tenant, "t1")
    rollup_day(day=DAY.date())
    first = {k: (s.pk, s.cost, s.trace_count) for k, s in summaries(tenant).items()}
    CostSummary.objects.update(period_end=DAY + timedelta(hours=1))

    rollup_day(day=DAY.date())

    again = summaries(tenant)
    assert {k: (s.pk, s.cost, s.trace_count) for k, s in again.items()} == first
    assert {s.period_end for s in again.values()} == {DAY + timedelta(days=1)}


def test_an_adjustment_changes_the_days_totals_on_the_next_run(tenant):
    row = record(tenant, "t1")
    rollup_day(day=DAY.date())
    UsageAdjustment.objects.create(
        tenant=tenant,
        usage_record=row,
        trace_timestamp=row.trace_timestamp,
        content_hash="late",
        cost=Decimal("0.0300"),
        input_tokens=3000,
        model_breakdown={
            "gpt-4o": {"input": 3000, "output": 0, "cached": 0, "cost": "0.0300"}
        },
    )

    rollup_day(day=DAY.date())

    project = summaries(tenant)[("project", "", "web")]
    assert (project.cost, project.trace_count) == (Decimal("0.0400"), 1)
    assert project.model_breakdown["gpt-4o"]["input"] == 4000


def test_skipped_traces_and_suspended_tenants_are_left_out(tenant, other_tenant):
    record(tenant, "t1")
    record(tenant, "skipped", status="skipped")
    UsageRecord.objects.filter(trace_id="skipped").update(status="skipped")
    record(other_tenant, "t9")
    tenant_set_status(
        tenant_id=other_tenant.pk, status="suspended", actor=Actor.system()
    )

    rollup_day(day=DAY.date())

    assert summaries(tenant)[("project", "", "web")].trace_count == 1
    assert not CostSummary.objects.for_tenant(other_tenant).exists()


def test_rollup_of_one_tenant_leaves_the_others_alone(tenant, other_tenant):
    record(tenant, "t1")
    record(other_tenant, "t2")

    rollup_day(day=DAY.date(), tenant_id=tenant.pk)

    assert CostSummary.objects.for_tenant(tenant).count() == 4
    assert not CostSummary.objects.for_tenant(other_tenant).exists()


def test_rollup_runs_under_rls_as_the_app_role(tenant, other_tenant, as_app_role):
    record(tenant, "t1")
    record(other_tenant, "t2")
    as_app_role()

    rollup_day(day=DAY.date(), tenant_id=tenant.pk)

    with tenant_context([tenant.pk]):
        assert CostSummary.objects.count() == 4
