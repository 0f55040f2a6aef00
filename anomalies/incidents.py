"""
Incidents: the anomalies of one tenant and day that share a cause.

Detection flags one runaway trace up to five times (its agent, project and
user; the cohort, baseline and expensive-trace rules), and an agent's spike
again in its project. ``incidents_group`` puts such anomalies under one
``Incident`` after every detection pass; the incident actions in
``anomalies.services`` review them all at once.

Two anomalies of a tenant and day belong together when they have the same
cause (the same most expensive trace, or both are missing data) or the same
scope (whatever the rule), or when one is flagged for a scope the other is
part of: an agent's or epic's project, or the agent or project of the
other's most expensive trace or (for a user or epic) of most of its traces
that day. Two agents of one project are not related by that alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime

from django.db.models import Count, Q

from anomalies.models import AnomalyStatus, CostAnomaly, Incident
from billing.models import UsageRecord


def _incident_for(members: list[CostAnomaly]) -> int:
    """
    A new group's incident: the one its key names, if that has no members
    of another group left (its members' causes changed since), else a new
    one keyed apart by the first member's id.
    """
    first = members[0]
    key = incident_key(first)
    taken = (
        CostAnomaly.objects.filter(
            incident__tenant_id=first.tenant_id,
            incident__period_start=first.period_start,
            incident__key=key,
        )
        .exclude(pk__in=[a.pk for a in members])
        .exists()
    )
    if taken:
        key = f"{key[:240]}#{first.pk}"
    incident, _ = Incident.objects.get_or_create(
        tenant_id=first.tenant_id,
        period_start=first.period_start,
        key=key,
        defaults={
            "period_end": first.period_end,
            "title": incident_title(members),
            "impact": first.impact,
        },
    )
    return incident.pk


class _Components:
    """Union-find over anomaly ids: the smallest id of a group is its root."""

    def __init__(self, ids: Iterable[int]) -> None:
        self.parent = {pk: pk for pk in ids}

    def root(self, pk: int) -> int:
        while self.parent[pk] != pk:
            self.parent[pk] = self.parent[self.parent[pk]]
            pk = self.parent[pk]
        return pk

    def join(self, a: int, b: int) -> None:
        a, b = self.root(a), self.root(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _links(anomaly: CostAnomaly) -> list[str]:
    """The keys an anomaly shares with its relatives."""
    links = [f"scope:{anomaly.scope_type}:{anomaly.project_id}:{anomaly.scope_id}"]
    if anomaly.cause:
        links.append(f"cause:{anomaly.cause}")
    return links


def _containing(
    anomaly: CostAnomaly, top_trace_scopes: dict, dominant_agents: dict
) -> list[str]:
    """
    The scopes an anomaly is part of, which it joins when they are flagged
    too: an agent's or epic's project, and the agent (and its project) of
    its most expensive trace and, for a user or epic, of most of its traces
    that day (a user or epic spiking with an agent's runaway day).
    """
    links = []
    if anomaly.scope_type in ("agent", "epic") and anomaly.project_id:
        links.append(f"scope:project::{anomaly.project_id}")
    traces = (anomaly.top_contributors or {}).get("traces") or []
    agents = [top_trace_scopes.get((anomaly.tenant_id, traces[0][0]))] if traces else []
    agents.append(dominant_agents.get(anomaly.pk))
    for project, agent in filter(None, agents):
        links.append(f"scope:agent:{project}:{agent}")
        links.append(f"scope:project::{project}")
    return links


def _dominant_agents(anomalies: list[CostAnomaly]) -> dict[int, tuple[str, str]]:
    """
    The (project, agent) with the most traces in each user or epic anomaly's
    day: what a user's or epic's volume spike came from (its costliest trace
    may well be another agent's ordinary one). One query for the day.
    """
    mixed = [a for a in anomalies if a.scope_type in ("user", "epic")]
    if not mixed:
        return {}
    wanted = Q()
    for anomaly in mixed:
        if anomaly.scope_type == "user":
            wanted |= Q(tenant_id=anomaly.tenant_id, user_id=anomaly.scope_id)
        else:
            wanted |= Q(
                tenant_id=anomaly.tenant_id,
                project_id=anomaly.project_id,
                epic_id=anomaly.scope_id,
            )
    rows = (
        UsageRecord.objects.filter(
            wanted,
            trace_timestamp__gte=mixed[0].period_start,
            trace_timestamp__lt=mixed[0].period_end,
        )
        .values_list("tenant_id", "user_id", "epic_id", "project_id", "agent_id")
        .annotate(traces=Count("pk"))
    )
    counts: dict[tuple, Counter] = {}
    for tenant, user, epic, project, agent, traces in rows:
        for key in (("user", tenant, "", user), ("epic", tenant, project, epic)):
            counts.setdefault(key, Counter())[(project, agent)] += traces
    found = {}
    for anomaly in mixed:
        key = (
            anomaly.scope_type,
            anomaly.tenant_id,
            anomaly.project_id,
            anomaly.scope_id,
        )
        if counts.get(key):
            # The most traces; ties go to the first (project, agent) by name.
            found[anomaly.pk] = min(
                counts[key].items(), key=lambda item: (-item[1], item[0])
            )[0]
    return found


def _top_trace_scopes(anomalies: list[CostAnomaly]) -> dict:
    """(tenant, trace id) -> (project, agent) of each anomaly's top trace."""
    wanted = Q()
    for anomaly in anomalies:
        traces = (anomaly.top_contributors or {}).get("traces") or []
        if traces:
            wanted |= Q(tenant_id=anomaly.tenant_id, trace_id=traces[0][0])
    if not wanted:
        return {}
    return {
        (tenant, trace): (project, agent)
        for tenant, trace, project, agent in UsageRecord.objects.filter(
            wanted
        ).values_list("tenant_id", "trace_id", "project_id", "agent_id")
    }


def incident_key(anomaly: CostAnomaly) -> str:
    """An incident's key, from its first member: its cause, else its scope."""
    if anomaly.cause:
        return anomaly.cause[:255]
    scope = f"{anomaly.project_id}/{anomaly.scope_id}".lstrip("/")
    return f"scope:{anomaly.scope_type}:{scope}"[:255]


def incident_title(anomalies: list[CostAnomaly]) -> str:
    """What an operator reads in the list: the cause and the scopes it hit."""
    lead = max(anomalies, key=lambda a: (a.impact, -a.pk))
    scopes = sorted(
        {f"{a.scope_type} {a.scope_id}" for a in anomalies},
        key=lambda text: (text != f"{lead.scope_type} {lead.scope_id}", text),
    )
    what = lead.get_anomaly_type_display()
    if lead.cause.startswith("trace:"):
        what = f"trace {lead.cause.removeprefix('trace:')}"
    shown = ", ".join(scopes[:3]) + (f" +{len(scopes) - 3}" if len(scopes) > 3 else "")
    return f"{what}: {shown}"[:255]


def incident_status(statuses: Iterable[str]) -> str:
    """Open while any member is open, resolved when all are."""
    statuses = set(statuses)
    if AnomalyStatus.OPEN in statuses:
        return AnomalyStatus.OPEN
    if AnomalyStatus.ACKNOWLEDGED in statuses:
        return AnomalyStatus.ACKNOWLEDGED
    return AnomalyStatus.RESOLVED


def incident_refresh(incident_id: int | None) -> None:
    """Recompute an incident's status, impact, count and title from its members."""
    if incident_id is None:
        return
    members = list(CostAnomaly.objects.filter(incident_id=incident_id))
    if not members:
        Incident.objects.filter(pk=incident_id).delete()
        return
    Incident.objects.filter(pk=incident_id).update(
        status=incident_status(a.status for a in members),
        impact=max(a.impact for a in members),
        anomaly_count=len(members),
        title=incident_title(members),
    )


def incidents_group(*, period_start: datetime, tenant_ids: Iterable[int]) -> int:
    """
    Group one day's anomalies of ``tenant_ids`` into incidents; return how
    many anomalies changed incident. An incident keeps its id as members
    join; two that turn out to share a cause merge into the older one.
    Call it in a transaction that holds the day's incidents and anomalies.
    """
    anomalies = list(
        CostAnomaly.objects.filter(
            period_start=period_start, tenant_id__in=set(tenant_ids)
        ).order_by("pk")
    )
    components = _Components(a.pk for a in anomalies)
    first_with: dict[tuple[int, str], int] = {}
    for anomaly in anomalies:
        for link in _links(anomaly):
            other = first_with.setdefault((anomaly.tenant_id, link), anomaly.pk)
            components.join(other, anomaly.pk)
    # Two agents of a project are not related by that alone: only through
    # their project, when it is flagged as well.
    top_trace_scopes = _top_trace_scopes(anomalies)
    dominant_agents = _dominant_agents(anomalies)
    for anomaly in anomalies:
        for link in _containing(anomaly, top_trace_scopes, dominant_agents):
            container = first_with.get((anomaly.tenant_id, link))
            if container is not None:
                components.join(container, anomaly.pk)

    groups: dict[int, list[CostAnomaly]] = {}
    for anomaly in anomalies:
        groups.setdefault(components.root(anomaly.pk), []).append(anomaly)
    moved = 0
    touched: set[int] = set()
    for members in groups.values():
        current = {a.incident_id for a in members if a.incident_id}
        incident_id = min(current) if current else _incident_for(members)
        strays = [a.pk for a in members if a.incident_id != incident_id]
        if strays:
            moved += CostAnomaly.objects.filter(pk__in=strays).update(
                incident_id=incident_id
            )
        touched |= current | {incident_id}
    for incident_id in sorted(touched):
        incident_refresh(incident_id)
    return moved
