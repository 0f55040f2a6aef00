from datetime import timedelta
from decimal import Decimal

import pytest

from anomalies.detectors import Finding
from anomalies.models import CostAnomaly
from anomalies.services import (
    InvalidTransition,
    anomalies_record,
    anomaly_acknowledge,
    anomaly_reopen,
    anomaly_resolve,
)
from billing.audit import Actor
from billing.models import AuditLog
from tests.anomalies.conftest import TODAY

pytestmark = pytest.mark.django_db

DAY = TODAY.date()


def finding(tenant, observed, expected="1", kind="high_cost", scope="bot"):
    return Finding(
        kind,
        tenant.pk,
        "agent",
        "web",
        scope,
        None,
        Decimal(observed),
        Decimal(expected),
    )


def record(tenant, *findings):
    return anomalies_record(day=DAY, findings=list(findings), actor=Actor.job("job-1"))


def test_a_new_finding_is_created_open_and_audited(tenant):
    result = record(tenant, finding(tenant, "10"))
    anomaly = CostAnomaly.objects.get()
    assert result.created == 1
    assert (anomaly.status, anomaly.ratio, anomaly.period_start) == (
        "open",
        Decimal("10"),
        TODAY,
    )
    assert anomaly.period_end == TODAY + timedelta(days=1)
    entry = AuditLog.objects.get(action="anomaly.detect")
    assert (entry.actor_kind, entry.correlation_id) == ("job", "job-1")


def test_re_detection_updates_in_place_instead_of_duplicating(tenant):
    record(tenant, finding(tenant, "10"))
    result = record(tenant, finding(tenant, "12"))
    same = record(tenant, finding(tenant, "12"))
    anomaly = CostAnomaly.objects.get()
    assert (result.created, result.updated, same.updated) == (0, 1, 0)
    assert anomaly.observed == Decimal("12")
    assert AuditLog.objects.filter(action="anomaly.redetect").count() == 1


def test_a_resolved_anomaly_stays_resolved_on_re_detection(tenant, superuser):
    record(tenant, finding(tenant, "10"))
    anomaly = CostAnomaly.objects.get()
    anomaly_resolve(
        anomaly_id=anomaly.pk,
        actor=Actor.staff(superuser),
        reason="expected",
        note="launch day",
    )

    result = record(tenant, finding(tenant, "12"))

    anomaly.refresh_from_db()
    assert (result.created, result.updated, result.reopened) == (0, 0, 0)
    assert (anomaly.status, anomaly.observed) == ("resolved", Decimal("10"))


def test_materially_worse_numbers_reopen_a_resolved_anomaly_as_an_event(
    tenant, superuser
):
    record(tenant, finding(tenant, "10"))
    anomaly = CostAnomaly.objects.get()
    anomaly_resolve(
        anomaly_id=anomaly.pk, actor=Actor.staff(superuser), reason="expected"
    )

    result = record(tenant, finding(tenant, "16"))

    anomaly.refresh_from_db()
    assert result.reopened == 1
    assert (anomaly.status, anomaly.observed, anomaly.resolution_reason) == (
        "open",
        Decimal("16"),
        "",
    )
    entry = AuditLog.objects.get(action="anomaly.reopen")
    assert "materially worse" in entry.note
    assert (entry.before["status"], entry.after["status"]) == ("resolved", "open")


def test_low_cost_worsening_is_measured_the_other_way(tenant, superuser):
    record(tenant, finding(tenant, "0.05", kind="suspiciously_low"))
    anomaly = CostAnomaly.objects.get()
    anomaly_resolve(anomaly_id=anomaly.pk, actor=Actor.staff(superuser), reason="fixed")
    assert (
        record(tenant, finding(tenant, "0.04", kind="suspiciously_low")).reopened == 0
    )
    assert (
        record(tenant, finding(tenant, "0.01", kind="suspiciously_low")).reopened == 1
    )


def test_review_transitions_are_guarded_and_audited(tenant, superuser):
    record(tenant, finding(tenant, "10"))
    anomaly = CostAnomaly.objects.get()
    actor = Actor.staff(superuser)

    anomaly_acknowledge(anomaly_id=anomaly.pk, actor=actor)
    with pytest.raises(InvalidTransition):
        anomaly_acknowledge(anomaly_id=anomaly.pk, actor=actor)
    with pytest.raises(InvalidTransition):
        anomaly_reopen(anomaly_id=anomaly.pk, actor=actor)
    resolved = anomaly_resolve(
        anomaly_id=anomaly.pk, actor=actor, reason="false_positive", note="test traffic"
    )
    with pytest.raises(InvalidTransition):
        anomaly_resolve(anomaly_id=anomaly.pk, actor=actor, reason="expected")
    reopened = anomaly_reopen(anomaly_id=anomaly.pk, actor=actor, note="again")

    assert (resolved.resolved_by, resolved.assignee) == (superuser, superuser)
    assert reopened.status == "open" and reopened.resolved_at is None
    assert list(
        AuditLog.objects.filter(action__startswith="anomaly.")
        .order_by("id")
        .values_list("action", flat=True)
    ) == ["anomaly.detect", "anomaly.acknowledge", "anomaly.resolve", "anomaly.reopen"]


def test_resolve_needs_a_known_reason(tenant, superuser):
    record(tenant, finding(tenant, "10"))
    with pytest.raises(ValueError, match="Unknown resolution reason"):
        anomaly_resolve(
            anomaly_id=CostAnomaly.objects.get().pk,
            actor=Actor.staff(superuser),
            reason="because",
        )


@pytest.mark.django_db(transaction=True)
def test_a_resolve_racing_another_reports_the_status_the_other_left(tenant, superuser):
    import threading

    from django.db import connection, connections

    record(tenant, finding(tenant, "10"))
    anomaly = CostAnomaly.objects.get()
    other = connections.create_connection("default")  # a second operator
    outcome = []

    def second_operator():
        try:
            anomaly_resolve(
                anomaly_id=anomaly.pk, actor=Actor.staff(superuser), reason="fixed"
            )
        except InvalidTransition as exc:
            outcome.append(str(exc))
        finally:
            connection.close()

    try:
        with other.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute(
                "SELECT 1 FROM anomalies_costanomaly WHERE id = %s FOR UPDATE",
                [anomaly.pk],
            )
            racer = threading.Thread(target=second_operator)
            racer.start()
            racer.join(0.5)  # waiting on the row lock
            cursor.execute(
                "UPDATE anomalies_costanomaly SET status = 'resolved', "
                "resolution_reason = 'fixed', resolved_at = now() WHERE id = %s",
                [anomaly.pk],
            )
            cursor.execute("COMMIT")
            racer.join(10)
    finally:
        other.close()

    assert outcome == ["Cannot resolve an anomaly that is resolved."]
