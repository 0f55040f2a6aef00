"""Tenants, their members, and the audit log every state change writes to."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

from billing.scopes import DEFAULT_SCOPE_MAPPING, validate_scope_mapping
from billing.secrets import EncryptedSecretField
from billing.tenancy import TenantOwnedModel, TenantQuerySet

# Seed 002: a trace is billed only once its newest observation is this old.
DEFAULT_SETTLE_SECONDS = 60

DEFAULT_METER_EVENT_NAME = "llm_usage"
SCOPE_MAPPING_HELP = (
    "Per scope (project, agent, epic, user), the sources to try in order: "
    "metadata.KEY, tag:PREFIX, trace_name, user_id, session_id, "
    "langfuse_project_id. Scopes left out keep the defaults: "
    + "; ".join(
        f"{scope}: {', '.join(sources)}"
        for scope, sources in DEFAULT_SCOPE_MAPPING.items()
    )
)
DEFAULT_OVERLAP_SECONDS = 15 * 60
DEFAULT_MAX_RUNNING_SECONDS = 60 * 60
DEFAULT_SYNC_CONCURRENCY = 4


class MeterUnit(models.TextChoices):
    # Stripe meter values are integers: cost goes in micro-dollars.
    MICRO_USD = "micro_usd", "Cost in micro-dollars"
    TOKENS = "tokens", "Tokens"


class Tenant(models.Model):
    """A customer of the platform: one Langfuse project, one Stripe customer."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.ACTIVE
    )

    stripe_customer_id = models.CharField(
        max_length=64,
        blank=True,
        validators=[RegexValidator(r"^cus_\w+$", "A Stripe customer id: cus_...")],
        help_text="Empty: usage fills the ledger and is reported once this is set.",
    )
    stripe_meter_event_name = models.CharField(
        max_length=100, default=DEFAULT_METER_EVENT_NAME
    )
    meter_unit = models.CharField(
        max_length=16, choices=MeterUnit.choices, default=MeterUnit.MICRO_USD
    )

    langfuse_host = models.URLField(default="https://cloud.langfuse.com")
    langfuse_public_key = models.CharField(max_length=200, blank=True)
    langfuse_secret_key = EncryptedSecretField(blank=True, default="")

    sync_enabled = models.BooleanField(default=True)
    settle_seconds = models.PositiveIntegerField(
        default=DEFAULT_SETTLE_SECONDS, validators=[MinValueValidator(0)]
    )
    sync_concurrency = models.PositiveSmallIntegerField(
        default=DEFAULT_SYNC_CONCURRENCY,
        validators=[MinValueValidator(1), MaxValueValidator(32)],
        help_text="Parallel Stripe sends for this tenant.",
    )
    # Re-read this far behind the cursor: observations become readable after
    # their start time (SDK batching, Langfuse documents up to 15 minutes).
    overlap_seconds = models.PositiveIntegerField(
        default=DEFAULT_OVERLAP_SECONDS,
        help_text="How far each sync re-reads behind the last one, for late data.",
    )
    # Seed 002: a trace with a running observation is not settled until it
    # ends, or until it has run this long (a run that never ends).
    max_running_seconds = models.PositiveIntegerField(
        default=DEFAULT_MAX_RUNNING_SECONDS,
        validators=[MinValueValidator(60)],
        help_text="Bill a trace whose observations are still running after this.",
    )
    # Which observation field names each scope; {} keeps the defaults.
    scope_mapping = models.JSONField(
        default=dict,
        blank=True,
        validators=[validate_scope_mapping],
        help_text=SCOPE_MAPPING_HELP,
    )
    # Set when the provider rejects the tenant's credentials (401/403); the
    # scheduler skips the tenant until an operator resumes it.
    sync_paused_reason = models.TextField(blank=True)
    # What an operator must look at (runs failing the same way, reports
    # Stripe rejected for configuration); empty when the last run was clean.
    sync_problem = models.TextField(blank=True)
    sync_problem_since = models.DateTimeField(null=True, blank=True)
    # Cohort rule (seed 004): a scope costing more than high x, or less than
    # low x, the average of its peers that day is an anomaly.
    anomaly_high_ratio = models.DecimalField(
        max_digits=8, decimal_places=3, default=Decimal("3")
    )
    anomaly_low_ratio = models.DecimalField(
        max_digits=8, decimal_places=3, default=Decimal("0.1")
    )
    # Materiality: no rule flags a day that is off by less than this amount,
    # or by less than this share of the tenant's cost that day (the larger).
    anomaly_min_amount = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        default=Decimal("1.00"),
        help_text="Smallest change in USD worth an anomaly.",
    )
    anomaly_min_share = models.DecimalField(
        max_digits=6,
        decimal_places=4,
        default=Decimal("0.01"),
        help_text="Smallest change worth an anomaly, as a share of the "
        "tenant's cost that day (0.01 = 1%).",
    )
    # Expensive-trace rule: a trace costing more than this many times its
    # agent's recent 95th-percentile trace.
    anomaly_trace_factor = models.DecimalField(
        max_digits=8,
        decimal_places=2,
        default=Decimal("15"),
        help_text="Flag a single trace costing more than this many times its "
        "agent's recent 95th-percentile trace.",
    )
    sync_paused_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["active", "suspended"]),
                name="tenant_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(meter_unit__in=["micro_usd", "tokens"]),
                name="tenant_meter_unit_valid",
            ),
            models.CheckConstraint(
                condition=Q(anomaly_low_ratio__gt=0)
                & Q(anomaly_low_ratio__lt=1)
                & Q(anomaly_high_ratio__gt=1),
                name="tenant_anomaly_ratios_valid",
            ),
            models.CheckConstraint(
                condition=Q(anomaly_min_amount__gte=0)
                & Q(anomaly_min_share__gte=0)
                & Q(anomaly_min_share__lt=1)
                & Q(anomaly_trace_factor__gt=1),
                name="tenant_anomaly_floors_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<Tenant {self.pk} {self.slug}>"

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE

    @property
    def has_langfuse_credentials(self) -> bool:
        return bool(self.langfuse_public_key and self.langfuse_secret_key)


class Membership(TenantOwnedModel):
    """A user's role in one tenant; staff see only the tenants they belong to."""

    class Role(models.TextChoices):
        VIEWER = "viewer", "Viewer"
        OPERATOR = "operator", "Operator"
        ADMIN = "admin", "Admin"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "user"], name="membership_unique_user_tenant"
            ),
            models.CheckConstraint(
                condition=Q(role__in=["viewer", "operator", "admin"]),
                name="membership_role_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.tenant} ({self.role})"


class AuditLog(models.Model):
    """
    Append-only record of every state change, written by service functions only.

    ``tenant`` is nullable for platform-level actions; rows are never updated
    or deleted (the admin is read-only and Postgres rejects UPDATE/DELETE).
    """

    class ActorKind(models.TextChoices):
        STAFF = "staff", "Staff"
        API = "api", "API client"
        JOB = "job", "Job"
        SYSTEM = "system", "System"

    tenant = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    actor_kind = models.CharField(max_length=16, choices=ActorKind.choices)
    # The API client that acted, when actor_kind is "api" (tokens are
    # revoked, never deleted).
    api_token = models.ForeignKey(
        "billing.ApiToken",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    note = models.TextField(blank=True)
    correlation_id = models.CharField(
        max_length=64, blank=True, help_text="Request or job id."
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(actor_kind__in=["staff", "api", "job", "system"]),
                name="auditlog_actor_kind_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.object_type}:{self.object_id}"
