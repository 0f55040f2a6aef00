"""
Admin for tenants, memberships and the audit log.

The admin only collects input and calls services. ``get_queryset`` is the one
place that scopes each page to the user's tenants (``request.tenant_ids``,
set by ``TenantRLSMiddleware``); filters and actions inherit it.
"""

from __future__ import annotations

from functools import partial

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.text import Truncator

from billing.audit import Actor
from billing.models import (
    AnalyticsRun,
    AuditLog,
    CostSummary,
    Membership,
    StripeReport,
    SyncCursor,
    SyncRun,
    Tenant,
    UsageAdjustment,
    UsageRecord,
)
from billing.models.ledger import BillingStatus
from billing.selectors import membership_role
from billing.services import (
    TENANT_FIELDS,
    InvalidTransition,
    membership_remove,
    membership_set,
    tenant_create,
    tenant_resume_sync,
    tenant_set_status,
    tenant_update,
)
from billing.stripe_sink import report_retry


def request_actor(request: HttpRequest) -> Actor:
    return Actor.staff(
        request.user, correlation_id=request.META.get("HTTP_X_REQUEST_ID", "")
    )


class TenantScopedAdminMixin:
    """Show staff only the rows of tenants they are members of."""

    tenant_field = "tenant_id"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        tenant_ids = getattr(request, "tenant_ids", [])
        if tenant_ids is None:
            return queryset
        return queryset.filter(**{f"{self.tenant_field}__in": tenant_ids})


# What a Membership role may do in the admin (superusers may do all): a
# viewer looks, an operator reviews anomalies and retries failed reports, a
# tenant admin also configures, suspends and resumes the tenant.
OPERATE_ROLES = (Membership.Role.OPERATOR, Membership.Role.ADMIN)
ADMIN_ROLES = (Membership.Role.ADMIN,)


def tenant_ids_acting_as(request: HttpRequest, roles: tuple) -> set[int] | None:
    """The user's tenants in which they hold one of ``roles``; None: every one."""
    if request.user.is_superuser:
        return None
    cache = request.__dict__.setdefault("_tenant_ids_by_roles", {})
    if roles not in cache:
        cache[roles] = set(
            Membership.objects.filter(
                user=request.user,
                role__in=roles,
                tenant_id__in=getattr(request, "tenant_ids", None) or [],
            ).values_list("tenant_id", flat=True)
        )
    return cache[roles]


def refuse_outside(
    request: HttpRequest, queryset: QuerySet, roles: tuple, field: str = "tenant_id"
) -> None:
    """Every selected row must belong to a tenant where the user holds a role."""
    tenant_ids = tenant_ids_acting_as(request, roles)
    outside = queryset.exclude(**{f"{field}__in": tenant_ids or ()})
    if tenant_ids is not None and outside.exists():
        raise PermissionDenied


class TenantAdminForm(forms.ModelForm):
    # Write-only: never rendered back, not even masked; empty keeps the old one.
    langfuse_secret_key = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Write-only. Leave empty to keep the stored key.",
    )

    class Meta:
        model = Tenant
        fields = TENANT_FIELDS
        # Django 6's default, adopted now: a URL typed without scheme is https.
        field_classes = {
            "langfuse_host": partial(forms.URLField, assume_scheme="https")
        }

    def clean_scope_mapping(self) -> dict:
        # An emptied box means the defaults, not a null.
        return self.cleaned_data.get("scope_mapping") or {}


@admin.register(Tenant)
class TenantAdmin(TenantScopedAdminMixin, admin.ModelAdmin):
    tenant_field = "pk"
    form = TenantAdminForm
    list_display = [
        "name",
        "slug",
        "status",
        "stripe_customer_id",
        "sync_enabled",
        "sync_health",
    ]
    list_filter = ["status", "sync_enabled"]
    search_fields = ["name", "slug", "stripe_customer_id"]
    readonly_fields = [
        "status",
        "secret_key_status",
        "sync_paused_reason",
        "sync_paused_at",
        "sync_problem",
        "sync_problem_since",
        "created_at",
        "updated_at",
    ]
    actions = ["suspend", "activate", "resume_sync"]
    fieldsets = [
        (None, {"fields": ["name", "slug", "status"]}),
        (
            "Stripe",
            {"fields": ["stripe_customer_id", "stripe_meter_event_name", "meter_unit"]},
        ),
        (
            "Langfuse",
            {
                "fields": [
                    "langfuse_host",
                    "langfuse_public_key",
                    "langfuse_secret_key",
                    "secret_key_status",
                ]
            },
        ),
        (
            "Sync",
            {
                "fields": [
                    "sync_enabled",
                    "settle_seconds",
                    "sync_concurrency",
                    "overlap_seconds",
                    "max_running_seconds",
                    "scope_mapping",
                    "sync_paused_reason",
                    "sync_paused_at",
                    "sync_problem",
                    "sync_problem_since",
                ]
            },
        ),
        (None, {"fields": ["created_at", "updated_at"]}),
    ]

    @admin.display(description="Sync health")
    def sync_health(self, obj: Tenant) -> str:
        if obj.sync_paused_reason:
            return f"paused: {obj.sync_paused_reason}"
        return obj.sync_problem or "ok"

    @admin.display(description="Secret key stored")
    def secret_key_status(self, obj: Tenant) -> str:
        return "yes" if obj.langfuse_secret_key else "no"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        # Tenants are suspended, never deleted: their ledger is revenue history.
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        if not super().has_change_permission(request, obj):
            return False
        if obj is None or request.user.is_superuser:
            return True
        return membership_role(user=request.user, tenant=obj) == Membership.Role.ADMIN

    def save_model(self, request, obj, form, change) -> None:
        data = {field: form.cleaned_data[field] for field in TENANT_FIELDS}
        secret = form.cleaned_data["langfuse_secret_key"]
        actor = request_actor(request)
        if change:
            tenant = tenant_update(
                tenant=obj, actor=actor, langfuse_secret_key=secret, **data
            )
        else:
            tenant = tenant_create(actor=actor, langfuse_secret_key=secret, **data)
        obj.pk = tenant.pk

    def _set_status(self, request, queryset, status: str) -> None:
        done = 0
        for tenant_id in queryset.values_list("pk", flat=True):
            try:
                tenant_set_status(
                    tenant_id=tenant_id, status=status, actor=request_actor(request)
                )
                done += 1
            except InvalidTransition as exc:
                self.message_user(request, str(exc), messages.WARNING)
        self.message_user(request, f"{done} tenant(s) now {status}.")

    def has_manage_permission(self, request: HttpRequest) -> bool:
        return super().has_change_permission(request) and (
            tenant_ids_acting_as(request, ADMIN_ROLES) is None
            or bool(tenant_ids_acting_as(request, ADMIN_ROLES))
        )

    @admin.action(description="Suspend selected tenants", permissions=["manage"])
    def suspend(self, request, queryset) -> None:
        refuse_outside(request, queryset, ADMIN_ROLES, field="pk")
        self._set_status(request, queryset, Tenant.Status.SUSPENDED)

    @admin.action(description="Activate selected tenants", permissions=["manage"])
    def activate(self, request, queryset) -> None:
        refuse_outside(request, queryset, ADMIN_ROLES, field="pk")
        self._set_status(request, queryset, Tenant.Status.ACTIVE)

    @admin.action(description="Resume paused sync", permissions=["manage"])
    def resume_sync(self, request, queryset) -> None:
        refuse_outside(request, queryset, ADMIN_ROLES, field="pk")
        resumed = 0
        for tenant_id in queryset.values_list("pk", flat=True):
            try:
                tenant_resume_sync(tenant_id=tenant_id, actor=request_actor(request))
                resumed += 1
            except InvalidTransition as exc:
                self.message_user(request, str(exc), messages.WARNING)
        self.message_user(request, f"Sync resumed for {resumed} tenant(s).")


@admin.register(Membership)
class MembershipAdmin(TenantScopedAdminMixin, admin.ModelAdmin):
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role", "tenant"]
    search_fields = ["user__username", "tenant__name"]
    autocomplete_fields = ["user", "tenant"]

    # Granting access is a platform decision: only superusers edit memberships.
    def has_add_permission(self, request) -> bool:
        return request.user.is_superuser

    def has_change_permission(self, request, obj=None) -> bool:
        return request.user.is_superuser

    def has_delete_permission(self, request, obj=None) -> bool:
        return request.user.is_superuser

    def save_model(self, request, obj, form, change) -> None:
        membership = membership_set(
            tenant=obj.tenant,
            user=obj.user,
            role=obj.role,
            actor=request_actor(request),
        )
        obj.pk = membership.pk

    def delete_model(self, request, obj) -> None:
        membership_remove(membership_id=obj.pk, actor=request_actor(request))

    def delete_queryset(self, request, queryset) -> None:
        for membership_id in queryset.values_list("pk", flat=True):
            membership_remove(membership_id=membership_id, actor=request_actor(request))


@admin.register(AuditLog)
class AuditLogAdmin(TenantScopedAdminMixin, admin.ModelAdmin):
    list_display = [
        "created_at",
        "tenant",
        "actor",
        "actor_kind",
        "action",
        "object_type",
        "object_id",
    ]
    list_filter = ["action", "actor_kind", "tenant"]
    search_fields = ["object_id", "note", "correlation_id"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class ReadOnlyAdminMixin:
    """Ledger rows change only through the sync engine and its services."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


# A reason in a list row; the whole one is on the record's page.
REASON_CHARS = 80


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdminMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    list_display = [
        "trace_id",
        "tenant",
        "trace_timestamp",
        "status",
        "billed_cost",
        "total_tokens",
        "reason",
    ]
    list_filter = ["status", "price_source", "tenant"]
    search_fields = ["trace_id", "user_id", "agent_id", "project_id", "epic_id"]
    date_hierarchy = "trace_timestamp"
    list_select_related = ["tenant"]
    show_full_result_count = False

    @admin.display(description="Cost", ordering="cost")
    def billed_cost(self, obj: UsageRecord) -> str:
        if obj.status == BillingStatus.UNPRICED:
            # Only the priced part is known: the rest waits for a price.
            return f"held (${obj.cost:.6f} priced so far)"
        return f"${obj.cost:.6f}"

    @admin.display(description="Why skipped or held")
    def reason(self, obj: UsageRecord) -> str:
        return Truncator(obj.skip_reason).chars(REASON_CHARS)


@admin.register(UsageAdjustment)
class UsageAdjustmentAdmin(
    ReadOnlyAdminMixin, TenantScopedAdminMixin, admin.ModelAdmin
):
    list_display = [
        "usage_record",
        "tenant",
        "status",
        "cost",
        "created_at",
        "skip_reason",
    ]
    list_filter = ["status", "tenant"]
    search_fields = ["usage_record__trace_id"]
    list_select_related = ["tenant", "usage_record"]


@admin.register(StripeReport)
class StripeReportAdmin(ReadOnlyAdminMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    list_display = [
        "identifier",
        "tenant",
        "day",
        "value",
        "unit",
        "record_count",
        "adjustment_count",
        "status",
        "attempts",
        "last_error",
    ]
    list_filter = ["status", "unit", "tenant"]
    search_fields = ["identifier", "stripe_customer_id"]
    date_hierarchy = "day"
    list_select_related = ["tenant"]
    actions = ["retry"]

    def has_retry_permission(self, request) -> bool:
        tenant_ids = tenant_ids_acting_as(request, OPERATE_ROLES)
        return request.user.has_perm("billing.view_stripereport") and (
            tenant_ids is None or bool(tenant_ids)
        )

    @admin.action(description="Retry selected failed reports", permissions=["retry"])
    def retry(self, request, queryset) -> None:
        refuse_outside(request, queryset, OPERATE_ROLES)
        retried = 0
        failed = queryset.filter(status=StripeReport.Status.FAILED)
        for report_id in failed.values_list("pk", flat=True):
            try:
                retried += report_retry(
                    report_id=report_id, actor=request_actor(request)
                )
            except InvalidTransition as exc:
                self.message_user(request, str(exc), messages.WARNING)
        self.message_user(
            request,
            f"{retried} report(s) queued again for the tenant's current Stripe "
            "customer and meter; the next sync sends them.",
        )


@admin.register(SyncRun)
class SyncRunAdmin(ReadOnlyAdminMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    # What fits a 1400 px screen; every counter is on the run's page.
    list_display = [
        "started_at",
        "tenant",
        "kind",
        "outcome",
        "traces_fetched",
        "billed",
        "skipped",
        "langfuse_calls",
        "stripe_calls",
        "error",
    ]
    list_filter = ["status", "kind", "tenant"]
    date_hierarchy = "started_at"
    list_select_related = ["tenant"]

    @admin.display(description="Status", ordering="status")
    def outcome(self, obj: SyncRun) -> str:
        status = obj.get_status_display()
        if obj.consecutive_failures >= SyncRun.STUCK_AFTER:
            return f"{status}: stuck ({obj.consecutive_failures} in a row)"
        if obj.consecutive_failures > 1:
            return f"{status} ({obj.consecutive_failures} in a row)"
        return status


@admin.register(SyncCursor)
class SyncCursorAdmin(ReadOnlyAdminMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    list_display = [
        "tenant",
        "watermark",
        "billed_amount",
        "billed_units",
        "updated_at",
    ]


@admin.register(CostSummary)
class CostSummaryAdmin(ReadOnlyAdminMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    list_display = [
        "period_start",
        "tenant",
        "scope_type",
        "project_id",
        "scope_id",
        "trace_count",
        "cost",
        "computed_at",
    ]
    list_filter = ["scope_type", "tenant"]
    search_fields = ["scope_id", "project_id"]
    date_hierarchy = "period_start"
    list_select_related = ["tenant"]


@admin.register(AnalyticsRun)
class AnalyticsRunAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "started_at",
        "kind",
        "status",
        "period_start",
        "period_end",
        "tenant",
        "duration_ms",
        "summaries_written",
        "scopes_examined",
        "anomalies_created",
        "anomalies_updated",
        "anomalies_reopened",
        "error",
    ]
    list_filter = ["kind", "status"]
    date_hierarchy = "started_at"

    def has_view_permission(self, request, obj=None) -> bool:
        # Runs span tenants: platform operators only.
        return request.user.is_superuser
