"""
Cost anomalies: what the detectors found, and the operators' verdicts.

One row per (tenant, scope, day, type): re-detection updates it in place and
a resolved anomaly stays resolved unless the numbers get materially worse.
Status changes go through ``anomalies.services`` only, which audit them.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Abs

from billing.models import CostSummary, ScopeType
from billing.models.ledger import MONEY
from billing.tenancy import TenantOwnedModel


class AnomalyType(models.TextChoices):
    HIGH_COST = "high_cost", "High cost vs peers"
    SUSPICIOUSLY_LOW = "suspiciously_low", "Suspiciously low vs peers"
    SPIKE_VS_BASELINE = "spike_vs_baseline", "Spike vs own baseline"
    MISSING_DATA = "missing_data", "Missing data"
    EXPENSIVE_TRACE = "expensive_trace", "Expensive single trace"


class AnomalyStatus(models.TextChoices):
    OPEN = "open", "Open"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    RESOLVED = "resolved", "Resolved"


class ResolutionReason(models.TextChoices):
    EXPECTED = "expected", "Expected usage"
    FIXED = "fixed", "Fixed at the source"
    BILLING_ADJUSTED = "billing_adjusted", "Billing adjusted"
    FALSE_POSITIVE = "false_positive", "False positive"
    DUPLICATE = "duplicate", "Duplicate"


def _review_order() -> Case:
    """Open first, then acknowledged, then resolved: the review queue's order."""
    return Case(
        When(status=AnomalyStatus.OPEN, then=Value(0)),
        When(status=AnomalyStatus.ACKNOWLEDGED, then=Value(1)),
        default=Value(2),
    )


class Incident(TenantOwnedModel):
    """
    The anomalies of one tenant and day that share a cause, reviewed once.

    One runaway trace is flagged for its agent, its project and its user, by
    the cohort, baseline and expensive-trace rules alike; an agent's spike
    shows in its project too. Detection groups such findings here
    (``anomalies.incidents``) and an operator acknowledges, resolves or
    reopens them all at once. The status follows the members': open while
    any is open, resolved when all are.
    """

    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    # What joined the members: "trace:<id>", "missing_data" or "scope:<...>",
    # from the first member; stable as members join.
    key = models.CharField(max_length=255)
    title = models.CharField(max_length=255)
    status = models.CharField(
        max_length=16, choices=AnomalyStatus.choices, default=AnomalyStatus.OPEN
    )
    # The largest member's: members overlap (a trace's cost is in its agent's
    # and its project's day), so their impacts do not add up.
    impact = models.DecimalField(**MONEY)
    anomaly_count = models.PositiveIntegerField(default=0)
    review_order = models.GeneratedField(
        expression=_review_order(),
        output_field=models.SmallIntegerField(),
        db_persist=True,
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["review_order", "-impact", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "period_start", "key"],
                name="incident_unique_tenant_period_key",
            ),
            models.CheckConstraint(
                condition=Q(status__in=["open", "acknowledged", "resolved"]),
                name="incident_status_valid",
            ),
        ]
        indexes = [
            models.Index(
                fields=["review_order", "-impact", "-id"], name="incident_review_queue"
            ),
            models.Index(
                fields=["tenant", "review_order", "-impact", "-id"],
                name="incident_tenant_queue",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.title} on {self.period_start:%Y-%m-%d}"


class CostAnomaly(TenantOwnedModel):
    summary = models.ForeignKey(
        CostSummary, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    scope_type = models.CharField(max_length=16, choices=ScopeType.choices)
    project_id = models.CharField(max_length=200, blank=True)
    scope_id = models.CharField(max_length=200)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    anomaly_type = models.CharField(max_length=32, choices=AnomalyType.choices)
    observed = models.DecimalField(**MONEY)
    expected = models.DecimalField(**MONEY)
    # observed / expected; None when expected is zero.
    ratio = models.DecimalField(max_digits=20, decimal_places=6, null=True, blank=True)
    # {"models": [[model, "cost"], ...], "traces": [[trace_id, "cost"], ...]}
    top_contributors = models.JSONField(default=dict, blank=True)
    # What the finding has in common with its relatives: the day's most
    # expensive trace (one runaway trace is flagged for its agent, user and
    # project, by the cohort and the baseline rule alike), or the rule when
    # there is no trace to blame (usage that stopped arriving). Anomalies of
    # one tenant and day with the same cause share an incident.
    cause = models.CharField(max_length=255, blank=True)
    incident = models.ForeignKey(
        Incident,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="anomalies",
    )
    # The money at stake, either way: how far the day is from expected.
    # Generated by the database so the changelist sorts on an index.
    impact = models.GeneratedField(
        expression=Abs(F("observed") - F("expected")),
        output_field=models.DecimalField(**MONEY),
        db_persist=True,
    )
    status = models.CharField(
        max_length=16, choices=AnomalyStatus.choices, default=AnomalyStatus.OPEN
    )
    resolution_reason = models.CharField(
        max_length=32, choices=ResolutionReason.choices, blank=True
    )
    resolution_note = models.TextField(blank=True)
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    # What the numbers were when it was resolved: re-detection reopens only
    # when they get materially worse than this.
    resolved_severity = models.DecimalField(
        max_digits=20, decimal_places=6, null=True, blank=True
    )
    first_detected_at = models.DateTimeField()
    last_detected_at = models.DateTimeField()
    # Open first, then acknowledged, then resolved: the review queue's order.
    review_order = models.GeneratedField(
        expression=_review_order(),
        output_field=models.SmallIntegerField(),
        db_persist=True,
    )

    class Meta:
        verbose_name_plural = "cost anomalies"
        # The review queue: open first, the most money at stake first.
        ordering = ["review_order", "-impact", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "tenant",
                    "scope_type",
                    "project_id",
                    "scope_id",
                    "period_start",
                    "anomaly_type",
                ],
                name="cost_anomaly_unique_scope_period_type",
            ),
            models.CheckConstraint(
                condition=Q(scope_type__in=["project", "agent", "epic", "user"]),
                name="cost_anomaly_scope_type_valid",
            ),
            models.CheckConstraint(
                condition=Q(
                    anomaly_type__in=[
                        "high_cost",
                        "suspiciously_low",
                        "spike_vs_baseline",
                        "missing_data",
                        "expensive_trace",
                    ]
                ),
                name="cost_anomaly_type_valid",
            ),
            models.CheckConstraint(
                condition=Q(status__in=["open", "acknowledged", "resolved"]),
                name="cost_anomaly_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(observed__gte=0) & Q(expected__gte=0),
                name="cost_anomaly_values_gte_0",
            ),
            models.CheckConstraint(
                condition=Q(period_end__gt=models.F("period_start")),
                name="cost_anomaly_period_end_after_start",
            ),
            models.CheckConstraint(
                condition=~Q(status="resolved")
                | (Q(resolved_at__isnull=False) & ~Q(resolution_reason="")),
                name="cost_anomaly_resolved_has_reason",
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "status", "-period_start"]),
            models.Index(fields=["period_start", "anomaly_type"]),
            # The changelist's default order, for all tenants and for one.
            models.Index(
                fields=["review_order", "-impact", "-id"],
                name="cost_anomaly_review_queue",
            ),
            models.Index(
                fields=["tenant", "review_order", "-impact", "-id"],
                name="cost_anomaly_tenant_queue",
            ),
            models.Index(
                fields=["tenant", "period_start", "cause"],
                name="cost_anomaly_incident",
            ),
            models.Index(
                fields=["assignee", "review_order"], name="cost_anomaly_assignee"
            ),
            # The changelist's search by id: equality is leakproof, so it
            # may use an index under row-level security (LIKE may not).
            models.Index(fields=["scope_id"], name="cost_anomaly_scope_id"),
            models.Index(fields=["project_id"], name="cost_anomaly_project_id"),
        ]

    def __str__(self) -> str:
        scope = (
            f"{self.project_id}/{self.scope_id}" if self.project_id else self.scope_id
        )
        return (
            f"{self.get_anomaly_type_display()}: {self.scope_type} {scope} "
            f"on {self.period_start:%Y-%m-%d}"
        )
