"""
The usage ledger: the source of truth for what was billed.

One ``UsageRecord`` per Langfuse trace, late changes as ``UsageAdjustment``
rows, and the ``StripeReport`` outbox that carries them to Stripe. The unique
constraints, not the code, make double billing impossible: a trace has one
record per tenant, a late change one adjustment, and a report one identifier,
which Stripe de-duplicates when a crash makes us send it twice.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from billing.pricing import PriceSource
from billing.tenancy import TenantOwnedModel

MONEY = {"max_digits": 20, "decimal_places": 10}
# Running totals in meter units (micro-USD or tokens) grow without end:
# 20 digits would overflow at $10,000 of a tenant's lifetime.
METER_TOTAL = {"max_digits": 34, "decimal_places": 10}


class BillingStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    REPORTED = "reported", "Reported"
    SKIPPED = "skipped", "Skipped"
    FAILED = "failed", "Failed"
    # Usage with no price of ours and no Langfuse cost: never billed as 0,
    # held until a price exists, then billed on its own report.
    UNPRICED = "unpriced", "Unpriced"


def billing_status_constraints(prefix: str) -> list[models.CheckConstraint]:
    """Valid statuses, and "reported" exactly when a report carries the row."""
    return [
        models.CheckConstraint(
            condition=Q(status__in=BillingStatus.values),
            name=f"{prefix}_status_valid",
        ),
        models.CheckConstraint(
            condition=Q(status="reported", report__isnull=False)
            | (~Q(status="reported") & Q(report__isnull=True)),
            name=f"{prefix}_reported_has_report",
        ),
    ]


class UsageTotals(models.Model):
    """Token and cost totals shared by records and adjustments."""

    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    cost = models.DecimalField(default=0, **MONEY)
    # {model: {"input": n, "output": n, "cached": n, "cost": "0.01"}}
    model_breakdown = models.JSONField(default=dict, blank=True)
    # {observation_id: [model, input, output, cached, "cost", price_source]}:
    # what was accounted for each observation, so a re-read adds only news.
    observations = models.JSONField(default=dict, blank=True)

    class Meta:
        abstract = True

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cached_tokens


class StripeReport(TenantOwnedModel):
    """
    One meter event in the outbox, written in the same transaction that marks
    its usage rows; the sender pushes pending rows and Stripe de-duplicates a
    re-sent ``identifier``.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    identifier = models.CharField(max_length=100, unique=True)
    event_name = models.CharField(max_length=100)
    stripe_customer_id = models.CharField(max_length=64)
    unit = models.CharField(max_length=16)
    # Integer meter value in the tenant's unit; the exact amount is kept so
    # that rounding is carried across batches, never lost.
    value = models.BigIntegerField()
    amount = models.DecimalField(**METER_TOTAL)
    day = models.DateField()
    timestamp = models.DateTimeField()
    record_count = models.PositiveIntegerField(default=0)
    adjustment_count = models.PositiveIntegerField(default=0)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "status"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(value__gte=0), name="report_value_gte_0"
            ),
            models.CheckConstraint(
                condition=Q(status__in=["pending", "sent", "failed"]),
                name="report_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.identifier


class UsageRecord(TenantOwnedModel, UsageTotals):
    """One Langfuse trace, priced; billed once through its report."""

    trace_id = models.CharField(max_length=200)
    # The earliest observation: the UTC day the usage is billed and rolled up on.
    trace_timestamp = models.DateTimeField()
    # The newest start/end/update of any observation: the settle rule reads it.
    last_activity_at = models.DateTimeField()
    # {observation_id: start time} of observations without an end time; the
    # trace is not settled while any runs, up to the tenant's maximum age.
    running = models.JSONField(default=dict, blank=True)
    # The start of the oldest running observation; null when none runs.
    running_since = models.DateTimeField(null=True, blank=True)
    project_id = models.CharField(max_length=200, blank=True)
    agent_id = models.CharField(max_length=200, blank=True)
    user_id = models.CharField(max_length=200, blank=True)
    epic_id = models.CharField(max_length=200, blank=True)
    price_source = models.CharField(
        max_length=16, choices=PriceSource.choices, default=PriceSource.NONE
    )
    content_hash = models.CharField(max_length=64)
    status = models.CharField(
        max_length=16, choices=BillingStatus.choices, default=BillingStatus.PENDING
    )
    skip_reason = models.TextField(blank=True)
    report = models.ForeignKey(
        StripeReport,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="usage_records",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "status", "trace_timestamp"]),
            models.Index(fields=["tenant", "trace_timestamp"]),
            # The minute sync looks up the traces still running.
            models.Index(
                fields=["tenant", "running_since"],
                condition=Q(running_since__isnull=False),
                name="usage_record_running",
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "trace_id"], name="usage_record_unique_trace"
            ),
            models.CheckConstraint(
                condition=Q(cost__gte=0)
                & Q(input_tokens__gte=0)
                & Q(output_tokens__gte=0)
                & Q(cached_tokens__gte=0),
                name="usage_record_totals_gte_0",
            ),
            *billing_status_constraints("usage_record"),
        ]

    def __str__(self) -> str:
        return self.trace_id


class UsageAdjustment(TenantOwnedModel, UsageTotals):
    """
    Observations that arrived or changed after their trace was reported.

    Reported as its own meter event; the record it corrects is never edited.
    Totals are deltas and may be negative when Langfuse revised usage down.
    """

    usage_record = models.ForeignKey(
        UsageRecord, on_delete=models.PROTECT, related_name="adjustments"
    )
    trace_timestamp = models.DateTimeField()
    content_hash = models.CharField(max_length=64)
    status = models.CharField(
        max_length=16, choices=BillingStatus.choices, default=BillingStatus.PENDING
    )
    skip_reason = models.TextField(blank=True)
    report = models.ForeignKey(
        StripeReport,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="adjustments",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "status", "trace_timestamp"])]
        constraints = [
            models.UniqueConstraint(
                fields=["usage_record", "content_hash"],
                name="usage_adjustment_unique_change",
            ),
            *billing_status_constraints("usage_adjustment"),
        ]

    def __str__(self) -> str:
        return f"adjustment {self.pk} of {self.usage_record_id}"


class SyncCursor(TenantOwnedModel):
    """Per tenant: how far the source is complete, and what was billed so far."""

    watermark = models.DateTimeField(null=True, blank=True)
    # Running totals that carry meter rounding across batches.
    billed_amount = models.DecimalField(default=0, **METER_TOTAL)
    billed_units = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant"], name="sync_cursor_unique_tenant")
        ]


class SyncRun(TenantOwnedModel):
    """One sync, reconcile or backfill of one tenant, for operators to inspect."""

    class Kind(models.TextChoices):
        SYNC = "sync", "Sync"
        RECONCILE = "reconcile", "Reconcile"
        BACKFILL = "backfill", "Backfill"

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped"
        # Its process died (SIGKILL, OOM, a restart) without finishing it.
        ABANDONED = "abandoned", "Abandoned"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.RUNNING
    )
    dry_run = models.BooleanField(default=False)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    window_start = models.DateTimeField(null=True, blank=True)
    window_end = models.DateTimeField(null=True, blank=True)
    observations_fetched = models.PositiveIntegerField(default=0)
    traces_fetched = models.PositiveIntegerField(default=0)
    billed = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    healed = models.PositiveIntegerField(default=0)
    adjustments = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    reports_created = models.PositiveIntegerField(default=0)
    reports_sent = models.PositiveIntegerField(default=0)
    langfuse_calls = models.PositiveIntegerField(default=0)
    stripe_calls = models.PositiveIntegerField(default=0)
    rate_limited = models.PositiveIntegerField(default=0)
    final_delay_ms = models.PositiveIntegerField(default=0)
    skip_reasons = models.JSONField(default=dict, blank=True)
    # {scope: traces read with no value for it}: a mapping that misses.
    scopes_missing = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    # Runs of this tenant in a row, this one included, that failed with this
    # error; STUCK_AFTER or more and the tenant shows as stuck.
    consecutive_failures = models.PositiveIntegerField(default=0)
    STUCK_AFTER = 3

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["tenant", "-started_at"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=["sync", "reconcile", "backfill"]),
                name="sync_run_kind_valid",
            ),
            models.CheckConstraint(
                condition=Q(
                    status__in=[
                        "running",
                        "succeeded",
                        "failed",
                        "skipped",
                        "abandoned",
                    ]
                ),
                name="sync_run_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} of {self.tenant_id} at {self.started_at:%Y-%m-%d %H:%M}"
