from decimal import Decimal

import pytest

from anomalies.detectors import Finding
from anomalies.models import CostAnomaly, Incident
from anomalies.services import (
    InvalidTransition,
    anomalies_record,
    anomaly_resolve,
    incident_acknowledge,
    incident_reopen,
    incident_resolve,
)
from billing.audit import Actor
from billing.models import AuditLog, UsageRecord
from tests.anomalies.conftest import TODAY

pytestmark = pytest.mark.django_db

DAY = TODAY.date()
JOB = Actor.job("detect-1")


def finding(tenant, scope_type, scope_id, kind="high_cost", project="", observed=50):
    return Finding(
        kind, tenant.pk, scope_type, project, scope_id, None, Decimal(observed), 5
    )


def ledger(tenant, trace_id, cost, **scopes):
    UsageRecord.objects.create(
        tenant=tenant,
        trace_id=trace_id,
        trace_timestamp=TODAY.replace(hour=5),
        last_activity_at=TODAY,
        cost=Decimal(cost),
        content_hash="x",
        **scopes,
    )


def record(*findings):
    return anomalies_record(day=DAY, findings=list(findings), actor=JOB)


def members(incident):
    return sorted(
        incident.anomalies.values_list("anomaly_type", "scope_type", "scope_id")
    )


def test_one_runaway_trace_flagged_at_every_level_is_one_incident(tenant):
    ledger(tenant, "loop-1", "40", project_id="web", agent_id="bot", user_id="u1")
    ledger(tenant, "other", "1", project_id="api", agent_id="etl", user_id="u2")
    record(
        finding(tenant, "agent", "bot", "expensive_trace", project="web"),
        finding(tenant, "agent", "bot", "spike_vs_baseline", project="web"),
        finding(tenant, "user", "u1", "spike_vs_baseline"),
        finding(tenant, "project", "web", "spike_vs_baseline"),
        finding(tenant, "agent", "etl", project="api"),
    )
    loop, other = Incident.objects.order_by("pk")
    assert members(loop) == [
        ("expensive_trace", "agent", "bot"),
        ("spike_vs_baseline", "agent", "bot"),
        ("spike_vs_baseline", "project", "web"),
        ("spike_vs_baseline", "user", "u1"),
    ]
    assert (loop.key, loop.anomaly_count, loop.status) == ("trace:loop-1", 4, "open")
    assert loop.title.startswith("trace loop-1: ")
    assert loop.impact == Decimal(45)
    assert members(other) == [("high_cost", "agent", "etl")]


def test_the_same_scope_across_rules_and_an_agent_with_its_project_group(tenant):
    # No ledger rows: no trace to blame, so the scopes join them.
    record(
        finding(tenant, "agent", "bot", "high_cost", project="web"),
        finding(tenant, "agent", "bot", "spike_vs_baseline", project="web"),
        finding(tenant, "project", "web", "spike_vs_baseline"),
        finding(tenant, "user", "u9", "spike_vs_baseline"),
    )
    grouped = sorted(len(members(i)) for i in Incident.objects.all())
    assert grouped == [1, 3]


def test_a_user_spiking_with_an_agent_s_volume_joins_the_agent_s_incident(tenant):
    # The user's extra traces are the bot's; its costliest one is another
    # agent's ordinary trace, so the top trace alone would not relate them.
    for n in range(6):
        ledger(tenant, f"bot-{n}", "2", project_id="web", agent_id="bot", user_id="u1")
    ledger(tenant, "pricey", "9", project_id="api", agent_id="etl", user_id="u1")
    ledger(tenant, "bot-other", "5", project_id="web", agent_id="bot", user_id="u2")
    record(
        finding(tenant, "agent", "bot", "spike_vs_baseline", project="web"),
        finding(tenant, "user", "u1", "spike_vs_baseline"),
    )
    [incident] = Incident.objects.all()
    assert incident.anomaly_count == 2


def test_tenants_never_share_an_incident(tenant, other_tenant):
    record(
        finding(tenant, "project", "web", "missing_data", observed=0),
        finding(other_tenant, "project", "web", "missing_data", observed=0),
    )
    assert Incident.objects.count() == 2
    assert {i.tenant_id for i in Incident.objects.all()} == {
        tenant.pk,
        other_tenant.pk,
    }


def test_re_detection_keeps_the_incident_and_merges_into_the_older(tenant):
    record(finding(tenant, "agent", "bot", project="web"))
    record(finding(tenant, "agent", "etl", project="web"))
    first, second = Incident.objects.order_by("pk")
    assert first.anomaly_count == second.anomaly_count == 1
    # The project is flagged too: its agents' incidents are one, the older.
    record(
        finding(tenant, "agent", "bot", project="web"),
        finding(tenant, "agent", "etl", project="web"),
        finding(tenant, "project", "web", "spike_vs_baseline"),
    )
    assert list(Incident.objects.values_list("pk", flat=True)) == [first.pk]
    assert Incident.objects.get().anomaly_count == 3


def test_resolving_an_incident_resolves_its_members_through_the_services(
    tenant, staff_user
):
    record(
        finding(tenant, "agent", "bot", project="web"),
        finding(tenant, "project", "web", "spike_vs_baseline"),
    )
    incident = Incident.objects.get()
    actor = Actor.staff(staff_user)

    result = incident_resolve(
        incident_id=incident.pk, actor=actor, reason="expected", note="launch day"
    )

    assert len(result.changed) == 2 and result.unchanged == []
    assert set(CostAnomaly.objects.values_list("status", flat=True)) == {"resolved"}
    assert set(CostAnomaly.objects.values_list("resolution_note", flat=True)) == {
        "launch day"
    }
    incident.refresh_from_db()
    assert incident.status == "resolved"
    assert AuditLog.objects.filter(action="anomaly.resolve").count() == 2
    entry = AuditLog.objects.get(action="incident.resolve")
    assert (entry.object_type, entry.object_id, entry.actor_id) == (
        "anomalies.incident",
        str(incident.pk),
        staff_user.pk,
    )
    assert entry.after["resolution_reason"] == "expected"
    with pytest.raises(InvalidTransition, match="incident that is resolved"):
        incident_resolve(incident_id=incident.pk, actor=actor, reason="expected")


def test_members_reviewed_on_their_own_set_the_incident_s_status(tenant, staff_user):
    record(
        finding(tenant, "agent", "bot", project="web"),
        finding(tenant, "project", "web", "spike_vs_baseline"),
    )
    incident = Incident.objects.get()
    actor = Actor.staff(staff_user)
    one, two = CostAnomaly.objects.order_by("pk")
    anomaly_resolve(anomaly_id=one.pk, actor=actor, reason="fixed")
    incident.refresh_from_db()
    assert incident.status == "open"  # one member still open

    result = incident_acknowledge(incident_id=incident.pk, actor=actor)
    assert (result.changed, result.unchanged) == ([two.pk], [one.pk])
    incident.refresh_from_db()
    assert incident.status == "acknowledged"

    incident_resolve(incident_id=incident.pk, actor=actor, reason="fixed")
    incident_reopen(incident_id=incident.pk, actor=actor, note="came back")
    incident.refresh_from_db()
    assert incident.status == "open"
    assert set(CostAnomaly.objects.values_list("status", flat=True)) == {"open"}


def test_a_member_reopened_by_detection_reopens_the_incident(tenant, staff_user):
    record(finding(tenant, "agent", "bot", project="web", observed=50))
    incident = Incident.objects.get()
    incident_resolve(
        incident_id=incident.pk, actor=Actor.staff(staff_user), reason="expected"
    )
    record(finding(tenant, "agent", "bot", project="web", observed=500))
    incident.refresh_from_db()
    assert incident.status == "open"


def test_a_new_group_never_joins_an_incident_another_group_holds(tenant):
    # u1's incident is keyed by trace T1; u1's top trace then becomes T2, and
    # e1, which T1 tops now, is not related to u1 by anything.
    ledger(tenant, "T1", "40", project_id="p1", agent_id="a1", user_id="u1")
    record(finding(tenant, "user", "u1", "spike_vs_baseline", observed=50))
    ledger(tenant, "T2", "100", project_id="p3", agent_id="a3", user_id="u1")
    UsageRecord.objects.filter(trace_id="T1").update(epic_id="e1")
    record(
        finding(tenant, "user", "u1", "spike_vs_baseline", observed=150),
        finding(tenant, "epic", "e1", "high_cost", project="p1", observed=40),
    )
    user, epic = (CostAnomaly.objects.get(scope_type=t) for t in ("user", "epic"))
    assert user.incident_id != epic.incident_id
    assert Incident.objects.get(pk=epic.incident_id).key == f"trace:T1#{epic.pk}"


def test_acting_on_an_incident_merged_away_says_so(tenant, staff_user):
    record(finding(tenant, "agent", "bot", project="web"))
    incident = Incident.objects.get()
    CostAnomaly.objects.update(incident=None)
    Incident.objects.all().delete()
    with pytest.raises(InvalidTransition, match="merged into another one"):
        incident_resolve(
            incident_id=incident.pk, actor=Actor.staff(staff_user), reason="fixed"
        )
