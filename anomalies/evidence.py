"""
What an anomaly's page shows as evidence: the rule that fired and what its
"expected" was made of, the scope's recent days, the traces behind it, the
anomalies with the same cause, and the audit trail.

Reads only, each a query or two for one anomaly, so the change page costs the
same whatever the anomaly's history. The rule texts read the detectors'
constants, so what the page says is what the detector did.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from django.db.models import QuerySet

from anomalies import detectors
from anomalies.models import AnomalyType, CostAnomaly
from billing.models import AuditLog, CostSummary, UsageRecord

CHART_DAYS = 28
NAMED_PEERS = 5

SCOPE_NOUNS = {
    "project": "projects",
    "agent": "agents",
    "epic": "epics",
    "user": "users",
}


@dataclass(frozen=True)
class Explanation:
    rule: str  # which rule fired, in a sentence
    expected: str  # what the expected value is made of
    peers: list[tuple[str, Decimal]]  # named peers (cohort rules), costliest first
    peer_count: int


def _times(factor: Decimal) -> str:
    """A threshold as people write it: 3x, 0.1x, 15x (not 3.000x)."""
    return f"{factor.normalize():f}x"


def _same_scope(anomaly: CostAnomaly) -> QuerySet:
    return CostSummary.objects.filter(
        tenant_id=anomaly.tenant_id,
        scope_type=anomaly.scope_type,
        project_id=anomaly.project_id,
        scope_id=anomaly.scope_id,
    )


def _group(anomaly: CostAnomaly) -> str:
    noun = SCOPE_NOUNS[anomaly.scope_type]
    if anomaly.project_id:
        return f"the other {noun} of project {anomaly.project_id}"
    return f"the tenant's other {noun}"


def anomaly_explanation(*, anomaly: CostAnomaly) -> Explanation:
    """The rule behind ``anomaly`` and the meaning of its expected value."""
    day = anomaly.period_start
    if anomaly.anomaly_type in (AnomalyType.HIGH_COST, AnomalyType.SUSPICIOUSLY_LOW):
        peers = CostSummary.objects.filter(
            tenant_id=anomaly.tenant_id,
            scope_type=anomaly.scope_type,
            project_id=anomaly.project_id,
            period_start=day,
        ).exclude(scope_id=anomaly.scope_id)
        count = peers.count()
        named = list(
            peers.order_by("-cost").values_list("scope_id", "cost")[:NAMED_PEERS]
        )
        tenant = anomaly.tenant
        if anomaly.anomaly_type == AnomalyType.HIGH_COST:
            rule = (
                f"Cost above {_times(tenant.anomaly_high_ratio)} the group's median "
                "(cohort rule, the tenant's high threshold), and above "
                f"{_times(tenant.anomaly_high_ratio)} this {anomaly.scope_type}'s own "
                "usual day where it has the history."
            )
        else:
            rule = (
                f"Cost below {_times(tenant.anomaly_low_ratio)} the group's median "
                "(cohort rule, the tenant's low threshold), and under "
                f"1/{detectors.BASELINE_MIN_RATIO} of this {anomaly.scope_type}'s "
                "own usual day."
            )
        return Explanation(
            rule=rule,
            expected=(
                f"The median daily cost of this {anomaly.scope_type} and "
                f"{_group(anomaly)} that day ({count} peer{'s' if count != 1 else ''})."
            ),
            peers=named,
            peer_count=count,
        )
    if anomaly.anomaly_type == AnomalyType.SPIKE_VS_BASELINE:
        start = day - timedelta(days=detectors.BASELINE_DAYS)
        days = (
            _same_scope(anomaly)
            .filter(period_start__gte=start, period_start__lt=day)
            .count()
        )
        return Explanation(
            rule=(
                "Cost far above the scope's own history: more than "
                f"{detectors.BASELINE_MIN_RATIO}x what is expected and more than "
                f"{detectors.BASELINE_MAD_K} robust deviations above its median "
                "(baseline rule)."
            ),
            expected=(
                f"The median of this {anomaly.scope_type}'s daily cost over the "
                f"{days} day{'s' if days != 1 else ''} with cost in the "
                f"{detectors.BASELINE_DAYS} days before (a partial first day left "
                f"out), or of the same weekday in the last {detectors.WEEKS} weeks "
                "when that is higher."
            ),
            peers=[],
            peer_count=0,
        )
    if anomaly.anomaly_type == AnomalyType.EXPENSIVE_TRACE:
        factor = _times(anomaly.tenant.anomaly_trace_factor)
        return Explanation(
            rule=(
                f"One trace cost more than {factor} "
                "this agent's recent 95th-percentile trace (expensive-trace "
                "rule): a runaway loop or an oversized request."
            ),
            expected=(
                "The 95th percentile of this agent's trace costs over the "
                f"{detectors.TRACE_DAYS} days before, within 10% (read from its "
                "daily trace cost histogram)."
            ),
            peers=[],
            peer_count=0,
        )
    return Explanation(
        rule=(
            f"Steady cost on each of the {detectors.STEADY_DAYS} days before, "
            "then none on this day (missing-data rule): usually usage that "
            "stopped arriving, not savings."
        ),
        expected=(f"The average daily cost of those {detectors.STEADY_DAYS} days."),
        peers=[],
        peer_count=0,
    )


def scope_daily_costs(
    *, anomaly: CostAnomaly, days: int = CHART_DAYS
) -> list[tuple[date, Decimal]]:
    """The scope's cost on each of ``days`` days up to the anomaly's, zero-filled."""
    last = anomaly.period_start.date()
    first = last - timedelta(days=days - 1)
    costs = dict(
        _same_scope(anomaly)
        .filter(
            period_start__gte=anomaly.period_start - timedelta(days=days - 1),
            period_start__lte=anomaly.period_start,
        )
        .values_list("period_start__date", "cost")
    )
    return [
        (first + timedelta(days=n), costs.get(first + timedelta(days=n), Decimal(0)))
        for n in range(days)
    ]


def top_traces(*, anomaly: CostAnomaly) -> list[dict]:
    """The anomaly's top traces with their ledger rows' ids, for links."""
    traces = (anomaly.top_contributors or {}).get("traces") or []
    ids = dict(
        UsageRecord.objects.filter(
            tenant_id=anomaly.tenant_id, trace_id__in=[t for t, _ in traces]
        ).values_list("trace_id", "pk")
    )
    return [
        {"trace_id": trace_id, "cost": Decimal(cost), "record_id": ids.get(trace_id)}
        for trace_id, cost in traces
    ]


def top_models(*, anomaly: CostAnomaly) -> list[tuple[str, Decimal]]:
    models = (anomaly.top_contributors or {}).get("models") or []
    return [(model, Decimal(cost)) for model, cost in models]


def related_anomalies(*, anomaly: CostAnomaly) -> QuerySet:
    """The other members of the anomaly's incident."""
    if anomaly.incident_id is None:
        return CostAnomaly.objects.none()
    return (
        CostAnomaly.objects.filter(incident_id=anomaly.incident_id)
        .exclude(pk=anomaly.pk)
        .select_related("assignee")
    )


def audit_timeline(*, anomaly: CostAnomaly) -> QuerySet:
    """Every audited change of the anomaly, oldest first."""
    return (
        AuditLog.objects.filter(
            object_type=anomaly._meta.label_lower, object_id=str(anomaly.pk)
        )
        .select_related("actor")
        .order_by("created_at", "id")
    )
