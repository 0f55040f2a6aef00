"""
Daily cost summaries per tenant and scope, and the runs that compute them.

A summary row is one scope's totals for one UTC day. Agents and epics are
scoped within their project (``project_id``), because the anomaly rules
compare an agent with the other agents of its project; projects and users
have an empty ``project_id``.
"""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q

from billing.models.ledger import MONEY
from billing.tenancy import TenantOwnedModel


class ScopeType(models.TextChoices):
    PROJECT = "project", "Project"
    AGENT = "agent", "Agent"
    EPIC = "epic", "Epic"
    USER = "user", "User"


class DailyScopeUsage(TenantOwnedModel):
    """
    One UTC day's billable usage of one scope and model, kept current by
    database triggers on the ledger (``billing.scope_usage``): the daily
    rollup's input.

    Every write to a usage record or adjustment adds its change here in the
    same statement, so these rows are the ledger's per-scope sums whatever
    writes it, and the rollup reads a few hundred thousand of them instead
    of 10M records' JSON breakdowns. Nothing else writes them.
    """

    # The triggers write these rows for ledger rows that have the tenant's
    # constraint; a check per row would only slow the ledger's writes. The
    # tenant is indexed with the scope type (Meta), not on its own.
    tenant = models.ForeignKey(
        "billing.Tenant", on_delete=models.CASCADE, db_constraint=False, db_index=False
    )
    day = models.DateField()
    scope_type = models.CharField(max_length=16, choices=ScopeType.choices)
    project_id = models.CharField(max_length=200, blank=True)
    scope_id = models.CharField(max_length=200)
    # Empty for records whose breakdown is empty (their traces still count).
    model = models.CharField(max_length=200, blank=True)
    # Traces of the scope counted on this model's row: each trace once, on
    # one of its models, so that the scope's trace count is the plain sum.
    trace_count = models.BigIntegerField()
    # Traces that used the model (adjustments add none).
    model_trace_count = models.BigIntegerField()
    input_tokens = models.BigIntegerField()
    output_tokens = models.BigIntegerField()
    cached_tokens = models.BigIntegerField()
    cost = models.DecimalField(**MONEY)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "day",
                    "tenant",
                    "scope_type",
                    "project_id",
                    "scope_id",
                    "model",
                ],
                name="daily_scope_usage_unique_key",
            ),
        ]
        # The cost pages read one scope type of a few tenants over 30 or 90
        # days; the unique key, led by the day, would read every tenant's.
        indexes = [
            models.Index(
                fields=["scope_type", "tenant", "day"],
                name="daily_scope_usage_by_tenant",
            )
        ]

    def __str__(self) -> str:
        return f"{self.scope_type} {self.scope_id} {self.model} on {self.day}"


class DailyTraceCost(TenantOwnedModel):
    """
    How many of an agent's billable traces of one UTC day cost between
    2^(bucket/4) and 2^((bucket+1)/4) USD, kept current by database triggers
    on the ledger (``billing.trace_costs``): the expensive-trace rule's
    percentiles, without reading every trace.
    """

    tenant = models.ForeignKey(
        "billing.Tenant", on_delete=models.CASCADE, db_constraint=False, db_index=False
    )
    day = models.DateField()
    project_id = models.CharField(max_length=200, blank=True)
    agent_id = models.CharField(max_length=200)
    bucket = models.SmallIntegerField()
    traces = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "tenant", "project_id", "agent_id", "bucket"],
                name="daily_trace_cost_unique_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.agent_id} on {self.day}: {self.traces} in bucket {self.bucket}"


class CostSummary(TenantOwnedModel):
    # The unique key starts with the tenant, so no index of its own: one
    # index fewer to write for each of a day's ~100k summaries.
    tenant = models.ForeignKey(
        "billing.Tenant", on_delete=models.CASCADE, db_index=False
    )
    scope_type = models.CharField(max_length=16, choices=ScopeType.choices)
    project_id = models.CharField(max_length=200, blank=True)
    scope_id = models.CharField(max_length=200)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    trace_count = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    cost = models.DecimalField(default=0, **MONEY)
    # {model: {"cost": "1.23", "input": n, "output": n, "cached": n, "traces": n}}
    model_breakdown = models.JSONField(default=dict, blank=True)
    computed_at = models.DateTimeField()

    class Meta:
        # Django's default plural would be "cost summarys".
        verbose_name_plural = "cost summaries"
        ordering = ["-period_start", "scope_type", "scope_id"]
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "tenant",
                    "scope_type",
                    "project_id",
                    "scope_id",
                    "period_start",
                ],
                name="cost_summary_unique_scope_period",
            ),
            models.CheckConstraint(
                condition=Q(scope_type__in=["project", "agent", "epic", "user"]),
                name="cost_summary_scope_type_valid",
            ),
            models.CheckConstraint(
                condition=Q(cost__gte=0)
                & Q(trace_count__gte=0)
                & Q(input_tokens__gte=0)
                & Q(output_tokens__gte=0)
                & Q(cached_tokens__gte=0),
                name="cost_summary_totals_gte_0",
            ),
            models.CheckConstraint(
                condition=Q(period_end__gt=F("period_start")),
                name="cost_summary_period_end_after_start",
            ),
        ]
        indexes = [models.Index(fields=["period_start", "tenant"])]

    def __str__(self) -> str:
        return f"{self.scope_type} {self.scope_id} on {self.period_start:%Y-%m-%d}"

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cached_tokens


class AnalyticsRun(models.Model):
    """One rollup or detection pass over a range of days (all tenants or one)."""

    class Kind(models.TextChoices):
        ROLLUP = "rollup", "Rollup"
        DETECT = "detect", "Anomaly detection"

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped (already running)"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.RUNNING
    )
    tenant = models.ForeignKey(
        "billing.Tenant",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    summaries_written = models.PositiveIntegerField(default=0)
    scopes_examined = models.PositiveIntegerField(default=0)
    anomalies_created = models.PositiveIntegerField(default=0)
    anomalies_updated = models.PositiveIntegerField(default=0)
    anomalies_reopened = models.PositiveIntegerField(default=0)
    job_id = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=["rollup", "detect"]),
                name="analytics_run_kind_valid",
            ),
            models.CheckConstraint(
                condition=Q(status__in=["running", "succeeded", "failed", "skipped"]),
                name="analytics_run_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(period_end__gt=F("period_start")),
                name="analytics_run_period_end_after_start",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.period_start:%Y-%m-%d}..{self.period_end:%Y-%m-%d}"
