"""
``top_contributors_for`` (a day's findings at once) against the per-finding
``top_contributors`` it replaced in the recording path: the same answer for
every scope of a small realistic day, and a number of queries that does not
grow with the findings.
"""

import random
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from anomalies.detectors import Finding
from anomalies.selectors import TOP_TRACES, top_contributors, top_contributors_for
from anomalies.services import anomalies_record
from billing.audit import Actor
from billing.models import CostSummary, UsageRecord
from billing.rollup import rollup_day
from billing.tenancy import tenant_context
from tests.anomalies.conftest import TODAY

pytestmark = pytest.mark.django_db

DAY = TODAY.date()
MODELS = ("gpt-4o", "gpt-4o-mini", "o3-mini", "claude-3-5-haiku-20241022")


def record(tenant, n, at, *, cost, project="", agent="", epic="", user="", models=()):
    """One trace; its cost split evenly over ``models`` (none: no breakdown)."""
    share = (cost / len(models)).quantize(Decimal("1e-10")) if models else 0
    return UsageRecord.objects.create(
        tenant=tenant,
        trace_id=f"t{tenant.pk}-{at:%m%d}-{n:04d}",
        trace_timestamp=at,
        last_activity_at=at,
        project_id=project,
        agent_id=agent,
        epic_id=epic,
        user_id=user,
        cost=cost,
        model_breakdown={
            model: {"input": 10, "output": 5, "cached": 0, "cost": str(share)}
            for model in models
        },
        content_hash="x",
    )


def seed(tenant, rng: random.Random) -> None:
    """
    Three days ending on DAY: two projects sharing agent and epic names, an
    agent also used outside any project, users, traces without one scope or
    another, costs from a few values (ties), and scopes that stop on DAY.
    """
    for back in (2, 1, 0):
        day = TODAY - timedelta(days=back)
        for n in range(120):
            project = rng.choice(["p1", "p1", "p2", ""])
            agent = rng.choice(["a1", "a2", "a3", ""])
            if back > 0 and n % 10 == 0:
                agent = "retired"  # steady before DAY, gone on it
            record(
                tenant,
                n,
                day + timedelta(minutes=11 * n),
                cost=Decimal(rng.choice(["0.01", "0.02", "0.02", "0.05", "0.50"])),
                project=project,
                agent=agent,
                epic=rng.choice(["e1", "e2", ""]),
                user=rng.choice(["u1", "u2", "u3", "u4", ""]),
                models=rng.sample(MODELS, rng.randint(0, 3)),
            )
    # Just outside DAY on both sides: never a top trace of DAY.
    for n, at in enumerate((TODAY - timedelta(microseconds=1), TODAY + timedelta(1))):
        record(tenant, 900 + n, at, cost=Decimal(9), project="p1", agent="a1")


@pytest.fixture
def day_findings(tenant, other_tenant):
    """Findings for every scope of both tenants' day, plus missing data."""
    seed(tenant, random.Random(12))
    seed(other_tenant, random.Random(34))  # the same scope names, other costs
    with tenant_context(all_tenants=True):
        for back in (2, 1, 0):
            rollup_day(day=DAY - timedelta(days=back))
        summaries = list(CostSummary.objects.filter(period_start=TODAY))
    findings = []
    for summary in summaries:
        scope = (summary.scope_type, summary.project_id, summary.scope_id)
        args = (summary.tenant_id, *scope, summary.pk, summary.cost, Decimal(1))
        findings.append(Finding("high_cost", *args))
        if summary.scope_type in ("agent", "user"):
            findings.append(Finding("spike_vs_baseline", *args))
    for tenant_id in (tenant.pk, other_tenant.pk):
        for scope in [("agent", "p1", "retired"), ("agent", "", "retired")]:
            # The scope's last summary is the day before: its models.
            findings.append(
                Finding("missing_data", tenant_id, *scope, None, Decimal(0), Decimal(1))
            )
        # Never seen at all: no models, no traces.
        findings.append(
            Finding(
                "missing_data",
                tenant_id,
                "user",
                "",
                "ghost",
                None,
                Decimal(0),
                Decimal(1),
            )
        )
    return findings


def per_finding(findings, day=DAY):
    return {finding: top_contributors(finding, day) for finding in findings}


def test_the_same_as_one_finding_at_a_time(day_findings):
    with tenant_context(all_tenants=True):
        expected = per_finding(day_findings)
        got = top_contributors_for(day_findings, DAY)

    assert got == expected
    # The data exercises what it should: full and short trace lists, ties
    # at the cut, models from the last summary for missing data, nothing for
    # a scope never seen, and an agent with no project.
    lengths = {len(top["traces"]) for top in got.values()}
    assert {0, TOP_TRACES} <= lengths
    tied_at_cut = [
        top
        for top in got.values()
        if len(top["traces"]) == TOP_TRACES
        and top["traces"][-1][1] == top["traces"][-2][1]
    ]
    assert tied_at_cut
    retired = [f for f in got if f.scope_id == "retired" and f.project_id == "p1"]
    assert all(got[f]["models"] and not got[f]["traces"] for f in retired)
    ghosts = [f for f in got if f.scope_id == "ghost"]
    assert all(got[f] == {"models": [], "traces": []} for f in ghosts)
    assert any(f.scope_type == "agent" and f.project_id == "" for f in got)


def test_ties_are_broken_by_trace_id(day_findings):
    with tenant_context(all_tenants=True):
        got = top_contributors_for(day_findings, DAY)
    for top in got.values():
        ranked = [(-Decimal(cost), trace) for trace, cost in top["traces"]]
        assert ranked == sorted(ranked)


def test_another_day_reads_that_days_records(day_findings):
    day = DAY - timedelta(days=1)
    with tenant_context(all_tenants=True):
        assert top_contributors_for(day_findings, day) == per_finding(day_findings, day)


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="row-level security is Postgres's"
)
def test_row_level_security_hides_other_tenants_as_before(
    day_findings, tenant, as_app_role
):
    """As the web role in one tenant's context: the other tenant's findings
    get nothing from the ledger or summaries, as the per-finding read did."""
    as_app_role()
    with tenant_context([tenant.pk]):
        expected = per_finding(day_findings)
        got = top_contributors_for(day_findings, DAY)
    assert got == expected
    others = [f for f in got if f.tenant_id != tenant.pk]
    assert others
    assert all(got[f] == {"models": [], "traces": []} for f in others)
    assert any(got[f]["traces"] for f in got if f.tenant_id == tenant.pk)


def test_a_day_costs_a_few_queries_whatever_its_findings(day_findings):
    with (
        tenant_context(all_tenants=True),
        CaptureQueriesContext(connection) as queries,
    ):
        top_contributors_for(day_findings, DAY)
    # Summaries by id, the missing-data scopes' last summaries, the traces.
    assert len(day_findings) > 50
    assert len(queries) <= 3
    assert top_contributors_for([], DAY) == {}


def test_recording_reads_the_ledger_a_few_times_and_not_on_an_unchanged_rerun(
    day_findings,
):
    def ledger_reads():
        with CaptureQueriesContext(connection) as queries:
            anomalies_record(day=DAY, findings=day_findings, actor=Actor.job("j"))
        return sum("billing_usagerecord" in q["sql"] for q in queries)

    with tenant_context(all_tenants=True):
        # The top traces; for the incidents, the top traces' agents and the
        # users' and epics' busiest agents: whatever the number of findings.
        assert ledger_reads() == 3
        assert ledger_reads() == 0


def test_batches_give_the_same_answer(day_findings, monkeypatch):
    """SQLite takes fewer parameters a query: the scopes go in batches."""
    monkeypatch.setattr(connection.features, "max_query_params", 3 + 7 * 5)
    monkeypatch.setattr("anomalies.selectors.LAST_SUMMARY_BATCH", 1)
    with tenant_context(all_tenants=True):
        assert top_contributors_for(day_findings, DAY) == per_finding(day_findings)
