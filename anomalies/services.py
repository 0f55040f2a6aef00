"""
Every change to a cost anomaly, each one audited in the same transaction.

Review actions (acknowledge, resolve, reopen) are conditional UPDATEs, so two
operators clicking at once change an anomaly once. Detection results go
through ``anomalies_record``: new findings are created, open ones updated in
place, and resolved ones left alone unless the numbers got materially worse.
The incident actions review every member of an incident through the same
anomaly actions, so each member's change is audited as its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from anomalies.detectors import Finding
from anomalies.incidents import incident_refresh, incidents_group
from anomalies.models import (
    AnomalyStatus,
    AnomalyType,
    CostAnomaly,
    Incident,
    ResolutionReason,
)
from anomalies.selectors import top_contributors_for
from billing.audit import Actor, audit_log_write
from billing.models import Membership
from billing.selectors import membership_role
from billing.utc_days import day_start

# A resolved anomaly reopens only when its severity (how far from expected,
# either way) is at least this much worse than when it was resolved.
MATERIAL_WORSENING = Decimal("1.5")

ACKNOWLEDGEABLE = (AnomalyStatus.OPEN,)
RESOLVABLE = (AnomalyStatus.OPEN, AnomalyStatus.ACKNOWLEDGED)
REOPENABLE = (AnomalyStatus.RESOLVED,)
# Who works on an anomaly: someone who may act on it (operator or admin of
# its tenant, or a superuser); a resolved one has nobody left to work on it.
ASSIGNABLE = RESOLVABLE
ASSIGNEE_ROLES = (Membership.Role.OPERATOR, Membership.Role.ADMIN)


class InvalidTransition(Exception):
    """The anomaly is not in a state that allows this action."""


def ratio_of(observed: Decimal, expected: Decimal) -> Decimal | None:
    if not expected:
        return None
    return (observed / expected).quantize(Decimal("1e-6"))


def severity(*, observed: Decimal, expected: Decimal) -> Decimal:
    """How far from expected, either way: 10x and 0.1x are both 10."""
    ratio = ratio_of(observed, expected)
    if ratio is None:
        return observed
    if ratio == 0:
        return expected  # missing data: what went missing
    return max(ratio, 1 / ratio).quantize(Decimal("1e-6"))


def _snapshot(anomaly: CostAnomaly) -> dict:
    return {
        "status": anomaly.status,
        "observed": str(anomaly.observed),
        "expected": str(anomaly.expected),
        "ratio": None if anomaly.ratio is None else str(anomaly.ratio),
    }


def _transition(
    *,
    anomaly_id: int,
    allowed: Iterable[str],
    changes: dict,
    action: str,
    actor: Actor,
    note: str = "",
) -> CostAnomaly:
    # Locked: a concurrent transition waits, and then this one reads (and
    # says) the status it left, not the one before it. Its incident first,
    # as the incident actions lock them, so that the two cannot deadlock.
    incident_id = _lock_incident_of(anomaly_id)
    before = CostAnomaly.objects.select_for_update().get(pk=anomaly_id)
    if before.incident_id != incident_id:
        # Detection regrouped it while this waited: locking its new incident
        # now would take the locks in the other order.
        raise InvalidTransition(
            "The anomaly was just regrouped into another incident: try again."
        )
    updated = CostAnomaly.objects.filter(
        pk=anomaly_id, status__in=list(allowed)
    ).update(**changes)
    if not updated:
        raise InvalidTransition(
            f"Cannot {action.split('.')[-1]} an anomaly that is {before.status}."
        )
    anomaly = CostAnomaly.objects.get(pk=anomaly_id)
    incident_refresh(anomaly.incident_id)
    after = _snapshot(anomaly)
    if anomaly.resolution_reason:
        after["resolution_reason"] = anomaly.resolution_reason
    audit_log_write(
        actor=actor,
        action=action,
        obj=anomaly,
        tenant=anomaly.tenant,
        before=_snapshot(before),
        after=after,
        note=note,
    )
    return anomaly


def _lock_incident_of(anomaly_id: int) -> int | None:
    """Lock the anomaly's incident, if it has one; return its id."""
    incident_id = (
        CostAnomaly.objects.filter(pk=anomaly_id)
        .values_list("incident_id", flat=True)
        .first()
    )
    if incident_id is not None:
        list(Incident.objects.select_for_update().filter(pk=incident_id))
    return incident_id


@transaction.atomic
def anomaly_acknowledge(
    *, anomaly_id: int, actor: Actor, note: str = ""
) -> CostAnomaly:
    changes = {"status": AnomalyStatus.ACKNOWLEDGED}
    if actor.user is not None:
        changes["assignee"] = actor.user
    return _transition(
        anomaly_id=anomaly_id,
        allowed=ACKNOWLEDGEABLE,
        changes=changes,
        action="anomaly.acknowledge",
        actor=actor,
        note=note,
    )


@transaction.atomic
def anomaly_resolve(
    *, anomaly_id: int, actor: Actor, reason: str, note: str = ""
) -> CostAnomaly:
    """Resolve an open or acknowledged anomaly with a reason."""
    if reason not in ResolutionReason.values:
        raise ValueError(f"Unknown resolution reason: {reason!r}")
    current = CostAnomaly.objects.get(pk=anomaly_id)
    return _transition(
        anomaly_id=anomaly_id,
        allowed=RESOLVABLE,
        changes={
            "status": AnomalyStatus.RESOLVED,
            "resolution_reason": reason,
            "resolution_note": note,
            "resolved_by": actor.user,
            "resolved_at": timezone.now(),
            "resolved_severity": severity(
                observed=current.observed, expected=current.expected
            ),
        },
        action="anomaly.resolve",
        actor=actor,
        note=note,
    )


@transaction.atomic
def anomaly_reopen(*, anomaly_id: int, actor: Actor, note: str = "") -> CostAnomaly:
    return _transition(
        anomaly_id=anomaly_id,
        allowed=REOPENABLE,
        changes={
            "status": AnomalyStatus.OPEN,
            "resolution_reason": "",
            "resolved_by": None,
            "resolved_at": None,
        },
        action="anomaly.reopen",
        actor=actor,
        note=note,
    )


@transaction.atomic
def anomaly_assign(
    *, anomaly_id: int, actor: Actor, assignee: AbstractBaseUser, note: str = ""
) -> CostAnomaly:
    """
    Give an open or acknowledged anomaly to someone who may act on it.

    Raises InvalidTransition for a resolved anomaly and ValueError for an
    assignee who is not an operator or admin of the anomaly's tenant.
    Assigning it to its current assignee changes nothing and writes no row.
    """
    before = CostAnomaly.objects.select_related("tenant").get(pk=anomaly_id)
    if membership_role(user=assignee, tenant=before.tenant) not in ASSIGNEE_ROLES:
        raise ValueError(f"{assignee} cannot review anomalies of {before.tenant}.")
    updated = CostAnomaly.objects.filter(
        pk=anomaly_id, status__in=list(ASSIGNABLE)
    ).update(assignee=assignee)
    anomaly = CostAnomaly.objects.get(pk=anomaly_id)
    if not updated:
        raise InvalidTransition(f"Cannot assign an anomaly that is {anomaly.status}.")
    if before.assignee_id == assignee.pk:
        return anomaly
    audit_log_write(
        actor=actor,
        action="anomaly.assign",
        obj=anomaly,
        tenant=anomaly.tenant,
        before={**_snapshot(before), "assignee": before.assignee_id},
        after={**_snapshot(anomaly), "assignee": anomaly.assignee_id},
        note=note,
    )
    return anomaly


def anomaly_cause(*, anomaly_type: str, top_contributors: dict) -> str:
    """
    What relates a finding to others of its tenant and day: its most
    expensive trace; for missing data the rule itself (usage that stops
    arriving stops for every scope at once); otherwise nothing ("").
    """
    traces = top_contributors.get("traces") or []
    if traces:
        return f"trace:{traces[0][0]}"[:255]
    return anomaly_type if anomaly_type == AnomalyType.MISSING_DATA else ""


def _key(tenant_id, scope_type, project_id, scope_id, anomaly_type) -> tuple:
    return (tenant_id, scope_type, project_id, scope_id, anomaly_type)


class RecordResult:
    def __init__(self) -> None:
        self.created = self.updated = self.reopened = 0


@transaction.atomic
def anomalies_record(
    *, day: date, findings: list[Finding], actor: Actor
) -> RecordResult:
    """
    Write one day's findings. New: created open. Open or acknowledged: numbers
    updated in place (audited when they change). Resolved: untouched, unless
    the severity is MATERIAL_WORSENING times what it was when resolved; then
    reopened with an audited note saying so. Last, the day's anomalies of
    the findings' tenants are grouped into incidents.
    """
    start = day_start(day)
    now = timezone.now()
    result = RecordResult()
    tenant_ids = {f.tenant_id for f in findings}
    # The day's incidents before its anomalies: the order the review
    # actions lock them in.
    list(
        Incident.objects.filter(
            period_start=start, tenant_id__in=tenant_ids
        ).select_for_update()
    )
    existing = {
        _key(a.tenant_id, a.scope_type, a.project_id, a.scope_id, a.anomaly_type): a
        for a in CostAnomaly.objects.filter(
            period_start=start, tenant_id__in=tenant_ids
        ).select_for_update()
    }
    # What to write is decided first: the top contributors of all of it are
    # then read at once (one pass over the day's ledger, not one per finding),
    # and not at all by a re-run that changes nothing.
    writes: list[tuple[Finding, CostAnomaly | None, str, str]] = []
    for finding in findings:
        key = _key(
            finding.tenant_id,
            finding.scope_type,
            finding.project_id,
            finding.scope_id,
            finding.anomaly_type,
        )
        anomaly = existing.get(key)
        if anomaly is None:
            writes.append((finding, None, "", "anomaly.detect"))
            continue
        if anomaly.status == AnomalyStatus.RESOLVED:
            worse = severity(observed=finding.observed, expected=finding.expected)
            if worse < (anomaly.resolved_severity or 0) * MATERIAL_WORSENING:
                continue
            note = (
                f"re-detected materially worse: severity {worse} vs "
                f"{anomaly.resolved_severity} when resolved"
            )
            writes.append((finding, anomaly, note, "anomaly.reopen"))
        elif (anomaly.observed, anomaly.expected) == (
            finding.observed,
            finding.expected,
        ):
            CostAnomaly.objects.filter(pk=anomaly.pk).update(last_detected_at=now)
        else:
            writes.append((finding, anomaly, "", "anomaly.redetect"))

    contributors = top_contributors_for([finding for finding, *_ in writes], day)
    for finding, anomaly, note, action in writes:
        top = contributors[finding]
        ratio = ratio_of(finding.observed, finding.expected)
        if anomaly is None:
            anomaly = CostAnomaly.objects.create(
                tenant_id=finding.tenant_id,
                summary_id=finding.summary_id,
                scope_type=finding.scope_type,
                project_id=finding.project_id,
                scope_id=finding.scope_id,
                period_start=start,
                period_end=start + timedelta(days=1),
                anomaly_type=finding.anomaly_type,
                observed=finding.observed,
                expected=finding.expected,
                ratio=ratio,
                top_contributors=top,
                cause=anomaly_cause(
                    anomaly_type=finding.anomaly_type, top_contributors=top
                ),
                first_detected_at=now,
                last_detected_at=now,
            )
            audit_log_write(
                actor=actor,
                action=action,
                obj=anomaly,
                tenant=anomaly.tenant,
                after=_snapshot(anomaly),
            )
            result.created += 1
            continue

        before = _snapshot(anomaly)
        if action == "anomaly.reopen":
            anomaly.status = AnomalyStatus.OPEN
            anomaly.resolution_reason = ""
            anomaly.resolved_by = None
            anomaly.resolved_at = None
            result.reopened += 1
        else:
            result.updated += 1
        anomaly.observed = finding.observed
        anomaly.expected = finding.expected
        anomaly.ratio = ratio
        anomaly.summary_id = finding.summary_id
        anomaly.top_contributors = top
        anomaly.cause = anomaly_cause(
            anomaly_type=anomaly.anomaly_type, top_contributors=anomaly.top_contributors
        )
        anomaly.last_detected_at = now
        anomaly.save()
        audit_log_write(
            actor=actor,
            action=action,
            obj=anomaly,
            tenant=anomaly.tenant,
            before=before,
            after=_snapshot(anomaly),
            note=note,
        )
    ungrouped = CostAnomaly.objects.filter(
        period_start=start, tenant_id__in=tenant_ids, incident__isnull=True
    )
    # Grouping reads the day's ledger; a re-run that changed nothing, on a
    # day already grouped, has nothing to regroup.
    if writes or ungrouped.exists():
        incidents_group(period_start=start, tenant_ids=tenant_ids)
    return result


@dataclass
class IncidentReviewResult:
    """The members an incident action changed, and those it left alone."""

    incident: Incident
    changed: list[int] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)


def _incident_review(
    *,
    incident_id: int,
    actor: Actor,
    action: str,
    allowed: Iterable[str],
    member_action: Callable[[int], CostAnomaly],
    note: str = "",
    details: dict | None = None,
) -> IncidentReviewResult:
    # The incident first, then its members (each through its own service, so
    # that every member's change is audited as its own).
    incident = Incident.objects.select_for_update().filter(pk=incident_id).first()
    if incident is None:
        raise InvalidTransition(
            "The incident was merged into another one by detection just now: "
            "open its anomalies to find it."
        )
    before = {"status": incident.status, "anomalies": incident.anomaly_count}
    result = IncidentReviewResult(incident)
    members = (
        CostAnomaly.objects.filter(incident_id=incident_id)
        .order_by("pk")
        .values_list("pk", "status")
    )
    for pk, status in members:
        if status in allowed:
            member_action(pk)
            result.changed.append(pk)
        else:
            result.unchanged.append(pk)
    if not result.changed:
        raise InvalidTransition(
            f"Cannot {action.split('.')[-1]} an incident that is {incident.status}."
        )
    incident.refresh_from_db()
    audit_log_write(
        actor=actor,
        action=action,
        obj=incident,
        tenant=incident.tenant,
        before=before,
        after={
            "status": incident.status,
            "anomalies": incident.anomaly_count,
            "changed": result.changed,
            **(details or {}),
        },
        note=note,
    )
    return result


@transaction.atomic
def incident_acknowledge(
    *, incident_id: int, actor: Actor, note: str = ""
) -> IncidentReviewResult:
    """Acknowledge every open member of an incident."""
    return _incident_review(
        incident_id=incident_id,
        actor=actor,
        action="incident.acknowledge",
        allowed=ACKNOWLEDGEABLE,
        member_action=lambda pk: anomaly_acknowledge(
            anomaly_id=pk, actor=actor, note=note
        ),
        note=note,
    )


@transaction.atomic
def incident_resolve(
    *, incident_id: int, actor: Actor, reason: str, note: str = ""
) -> IncidentReviewResult:
    """Resolve every open or acknowledged member with one reason."""
    if reason not in ResolutionReason.values:
        raise ValueError(f"Unknown resolution reason: {reason!r}")
    return _incident_review(
        incident_id=incident_id,
        actor=actor,
        action="incident.resolve",
        allowed=RESOLVABLE,
        member_action=lambda pk: anomaly_resolve(
            anomaly_id=pk, actor=actor, reason=reason, note=note
        ),
        note=note,
        details={"resolution_reason": reason},
    )


@transaction.atomic
def incident_reopen(
    *, incident_id: int, actor: Actor, note: str = ""
) -> IncidentReviewResult:
    """Reopen every resolved member of an incident."""
    return _incident_review(
        incident_id=incident_id,
        actor=actor,
        action="incident.reopen",
        allowed=REOPENABLE,
        member_action=lambda pk: anomaly_reopen(anomaly_id=pk, actor=actor, note=note),
        note=note,
    )
