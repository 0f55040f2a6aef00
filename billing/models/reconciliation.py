"""
What Stripe holds against what the ledger billed, per tenant and UTC day.

Written by ``billing.stripe_reconcile`` (``manage.py reconcile_stripe`` and
the daily job), one row per tenant and day, updated by every check of that
day; the admin lists them and warns while any day is off.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from billing.models.ledger import METER_TOTAL
from billing.tenancy import TenantOwnedModel


class StripeReconciliation(TenantOwnedModel):
    class Status(models.TextChoices):
        MATCH = "match", "Match"
        DRIFT = "drift", "Drift"

    day = models.DateField()
    status = models.CharField(max_length=16, choices=Status.choices)
    checked_at = models.DateTimeField()
    # All in the tenant's meter unit (micro-USD or tokens). The ledger's
    # exact amount, reported and not yet; what the day's reports carry.
    ledger_amount = models.DecimalField(**METER_TOTAL)
    unreported_amount = models.DecimalField(**METER_TOTAL)
    reported_amount = models.DecimalField(**METER_TOTAL)
    # Whole units: sent by the outbox, and held by Stripe for the day.
    sent_value = models.BigIntegerField()
    stripe_value = models.BigIntegerField()
    # {"missing": [...], "pending": [...], "failed": [...], "resent": [...]}
    # (report identifiers), "unexpected": units Stripe holds beyond ours.
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-day", "tenant_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "day"], name="stripe_reconciliation_unique_day"
            ),
            models.CheckConstraint(
                condition=Q(status__in=["match", "drift"]),
                name="stripe_reconciliation_status_valid",
            ),
        ]
        indexes = [models.Index(fields=["status", "-day"])]

    def __str__(self) -> str:
        return f"{self.tenant} {self.day}: {self.status}"

    @property
    def drift_value(self) -> int:
        """Units Stripe holds beyond what was sent (negative: missing)."""
        return self.stripe_value - self.sent_value
