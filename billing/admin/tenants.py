"""Admin for tenants (configuration, suspend / activate) and memberships."""

from __future__ import annotations

from functools import partial

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest

from billing.admin.base import (
    ADMIN_ROLES,
    TenantFilter,
    TenantScopedAdminMixin,
    refuse_outside,
    request_actor,
    tenant_ids_acting_as,
)
from billing.models import (
    Membership,
    Tenant,
)
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
    list_filter = ["role", TenantFilter]
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
