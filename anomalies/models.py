"""
Cost anomalies: what the detectors found, and the operators' verdicts.

One row per (tenant, scope, day, type): re-detection updates it in place and
a resolved anomaly stays resolved unless the numbers get materially worse.
Status changes go through ``anomalies.services`` only, which audit them.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from billing.models import CostSummary, ScopeType
from billing.models.ledger import MONEY
from billing.tenancy import TenantOwnedModel


class AnomalyType(models.TextChoices):
    HIGH_COST = "high_cost", "High cost vs peers"
    SUSPICIOUSLY_LOW = "suspiciously_low", "Suspiciously low vs peers"
    SPIKE_VS_BASELINE = "spike_vs_baseline", "Spike vs own baseline"
    MISSING_DATA = "missing_data", "Missing data"


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

    class Meta:
        verbose_name_plural = "cost anomalies"
        ordering = ["-period_start", "-ratio"]
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
        ]

    def __str__(self) -> str:
        scope = (
            f"{self.project_id}/{self.scope_id}" if self.project_id else self.scope_id
        )
        return (
            f"{self.get_anomaly_type_display()}: {self.scope_type} {scope} "
            f"on {self.period_start:%Y-%m-%d}"
        )
