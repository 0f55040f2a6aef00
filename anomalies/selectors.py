"""Reads behind the anomaly views and the detection write path."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from anomalies.detectors import Finding
from billing.models import CostSummary, UsageRecord

TOP_MODELS = 3
TOP_TRACES = 5

SCOPE_FIELDS = {
    "project": "project_id",
    "agent": "agent_id",
    "epic": "epic_id",
    "user": "user_id",
}


def _scope_filter(finding: Finding) -> dict:
    fields = {SCOPE_FIELDS[finding.scope_type]: finding.scope_id}
    if finding.project_id:
        fields["project_id"] = finding.project_id
    return fields


def top_contributors(finding: Finding, day: date) -> dict:
    """
    The models and traces that made the day's cost; for missing data, the
    models of the scope's last day with cost (what stopped arriving).
    """
    summaries = CostSummary.objects.for_tenant(finding.tenant_id).filter(
        scope_type=finding.scope_type,
        project_id=finding.project_id,
        scope_id=finding.scope_id,
    )
    summary = (
        summaries.filter(pk=finding.summary_id).first()
        if finding.summary_id
        else summaries.order_by("-period_start").first()
    )
    models = sorted(
        (
            (model, Decimal(row["cost"]))
            for model, row in (summary.model_breakdown if summary else {}).items()
        ),
        key=lambda item: item[1],
        reverse=True,
    )[:TOP_MODELS]
    start = datetime.combine(day, time.min, tzinfo=UTC)
    traces = (
        UsageRecord.objects.for_tenant(finding.tenant_id)
        .filter(
            trace_timestamp__gte=start,
            trace_timestamp__lt=start + timedelta(days=1),
            **_scope_filter(finding),
        )
        .order_by("-cost")
        .values_list("trace_id", "cost")[:TOP_TRACES]
    )
    return {
        "models": [[model, str(cost)] for model, cost in models],
        "traces": [[trace_id, str(cost)] for trace_id, cost in traces],
    }
