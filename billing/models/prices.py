"""
The price table: what a model's usage costs, per usage key, over time.

Global, not per tenant: providers' list prices. Seeded from the shipped
``billing/model_prices.json`` (``billing.price_table.model_prices_seed``),
edited by superusers in the admin through ``model_price_save``, which audits
every change. A row is never deleted (ledger entries name the row that priced
them); a price is retired by ending its validity. Rows of one model never
overlap in time: the service checks, and on Postgres an exclusion constraint
(migration 0018) makes it so.
"""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q


class ModelPrice(models.Model):
    model_name = models.CharField(max_length=200)
    match_pattern = models.CharField(
        max_length=500,
        help_text="A regular expression, as Langfuse writes them: "
        "(?i)^(openai/)?(gpt-4o)$ matches gpt-4o and openai/gpt-4o, any case.",
    )
    valid_from = models.DateTimeField(
        null=True, blank=True, help_text="UTC. Empty: since always."
    )
    valid_to = models.DateTimeField(
        null=True,
        blank=True,
        help_text="UTC, exclusive. Empty: until further notice.",
    )
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        # Table order decides between rules whose patterns both match.
        ordering = ["id"]
        indexes = [models.Index(fields=["model_name", "valid_from"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(valid_from__isnull=True)
                | Q(valid_to__isnull=True)
                | Q(valid_from__lt=F("valid_to")),
                name="model_price_valid_period",
            ),
            models.CheckConstraint(
                condition=~Q(model_name="") & ~Q(match_pattern=""),
                name="model_price_named",
            ),
        ]

    def __str__(self) -> str:
        return self.model_name


class UnitPrice(models.Model):
    """USD per unit of one usage key (``input``, ``output``, ...) of a model."""

    model_price = models.ForeignKey(
        ModelPrice, on_delete=models.CASCADE, related_name="unit_prices"
    )
    usage_key = models.CharField(
        max_length=100,
        help_text="Langfuse's usage key: input, output, cache_read_input_tokens, "
        "cache_creation_input_tokens, ... ('total' prices the whole usage, alone).",
    )
    price = models.DecimalField(
        max_digits=30,
        decimal_places=18,
        help_text="USD per unit: $2.50 per million tokens is 0.0000025.",
    )

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["model_price", "usage_key"], name="unit_price_unique_key"
            ),
            models.CheckConstraint(
                condition=Q(price__gte=0) & ~Q(usage_key=""),
                name="unit_price_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.usage_key}: {self.price.normalize():f}"
