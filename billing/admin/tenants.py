"""
Admin for tenants (configuration, suspend / activate) and memberships.

Suspend and activate are bulk actions with an intermediate page, as Django's
``delete_selected`` is: the action renders a form listing the selected
tenants with a reason from a fixed list and a note, the form posts back to
the same action with ``post=yes``, and the action calls ``tenant_set_status``
once per tenant, which writes the audit row. Only a tenant admin of every
selected tenant (or a superuser) may; anyone else gets a 403.
"""

from __future__ import annotations

from functools import partial

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from billing.admin.base import (
    ADMIN_ROLES,
    OfferedActionsOnlyMixin,
    TenantFilter,
    TenantScopedAdminMixin,
    refuse_outside,
    request_actor,
    tenant_ids_acting_as,
)
from billing.admin.costs import cost_over_time_link
from billing.models import (
    Membership,
    Tenant,
)
from billing.selectors import membership_role
from billing.services import (
    STATUS_REASONS,
    TENANT_FIELDS,
    InvalidTransition,
    TenantStatusReason,
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


class TenantStatusForm(forms.Form):
    """The intermediate page of suspend / activate: why, for the audit log."""

    reason = forms.ChoiceField(choices=())
    note = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        required=False,
        help_text="Kept in the audit log with the change.",
    )

    def __init__(self, *args, status: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["reason"].choices = [
            ("", "---------"),
            *((r.value, r.label) for r in STATUS_REASONS[status]),
        ]

    def clean(self) -> dict:
        cleaned = super().clean()
        # The service refuses it too; here it is an error on the page.
        if cleaned.get("reason") == TenantStatusReason.OTHER and not cleaned.get(
            "note", ""
        ):
            self.add_error("note", "Say why: the reason is “other”.")
        return cleaned


# What each status change is called on the page and in messages.
STATUS_VERBS = {
    Tenant.Status.SUSPENDED: ("Suspend", "suspended"),
    Tenant.Status.ACTIVE: ("Activate", "activated"),
}


def tenant_count(n: int) -> str:
    return f"{n} tenant" if n == 1 else f"{n} tenants"


@admin.register(Tenant)
class TenantAdmin(OfferedActionsOnlyMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    tenant_field = "pk"
    form = TenantAdminForm
    list_display = [
        "name",
        "slug",
        "status",
        "stripe_customer_id",
        "sync_enabled",
        "sync_health",
        "cost_over_time",
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
    status_template = "admin/billing/tenant/status_confirmation.html"
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
        (
            "Anomaly detection",
            {
                "fields": [
                    "anomaly_high_ratio",
                    "anomaly_low_ratio",
                    "anomaly_min_amount",
                    "anomaly_min_share",
                    "anomaly_trace_factor",
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

    @admin.display(description="Costs")
    def cost_over_time(self, obj: Tenant) -> str:
        return cost_over_time_link(obj)

    @admin.display(description="Secret key stored")
    def secret_key_status(self, obj: Tenant) -> str:
        return "yes" if obj.langfuse_secret_key else "no"

    def get_fieldsets(self, request: HttpRequest, obj=None) -> list:
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or self.has_change_permission(request, obj):
            return fieldsets
        # The read-only view would show the field's masked value: whether a
        # key is stored is all a viewer may know, and the status line says it.
        return [
            (
                name,
                {
                    **options,
                    "fields": [
                        f for f in options["fields"] if f != "langfuse_secret_key"
                    ],
                },
            )
            for name, options in fieldsets
        ]

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

    def _set_status(
        self, request: HttpRequest, queryset: QuerySet, status: str
    ) -> HttpResponse | None:
        """The intermediate page on the first POST, the changes on the second."""
        refuse_outside(request, queryset, ADMIN_ROLES, field="pk")
        tenants = list(queryset)
        if not tenants:
            # Ids of tenants the user does not see: nothing to ask about.
            self.message_user(
                request, "None of the selected tenants is yours.", messages.WARNING
            )
            return None
        form = TenantStatusForm(
            request.POST if request.POST.get("post") == "yes" else None,
            status=status,
        )
        if not form.is_valid():
            return self._render_status_page(request, status, tenants, form)
        reason = form.cleaned_data["reason"]
        done = 0
        for tenant in tenants:
            try:
                tenant_set_status(
                    tenant_id=tenant.pk,
                    status=status,
                    actor=request_actor(request),
                    reason=reason,
                    note=form.cleaned_data["note"],
                )
                done += 1
            except InvalidTransition as exc:
                # Someone else got there first (or it already was): the
                # service's conditional UPDATE changed nothing.
                self.message_user(request, str(exc), messages.WARNING)
        if done:
            past = STATUS_VERBS[status][1]
            why = TenantStatusReason(reason).label
            self.message_user(
                request,
                f"{past.capitalize()} {tenant_count(done)} ({why}).",
                messages.SUCCESS,
            )
        return None

    def _render_status_page(
        self, request: HttpRequest, status: str, tenants: list, form: TenantStatusForm
    ) -> HttpResponse:
        verb, past = STATUS_VERBS[status]
        changeable = [t for t in tenants if t.status != status]
        context = {
            **self.admin_site.each_context(request),
            "title": f"{verb} tenants",
            "opts": self.opts,
            "action": "suspend" if status == Tenant.Status.SUSPENDED else "activate",
            "verb": verb,
            "past": past,
            "suspending": status == Tenant.Status.SUSPENDED,
            "form": form,
            "tenants": tenants,
            "changeable": changeable,
            "unchanged": [t for t in tenants if t.status == status],
            "submit_label": f"{verb} {tenant_count(len(changeable))}",
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media + form.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.status_template, context)

    def has_manage_permission(self, request: HttpRequest) -> bool:
        return super().has_change_permission(request) and (
            tenant_ids_acting_as(request, ADMIN_ROLES) is None
            or bool(tenant_ids_acting_as(request, ADMIN_ROLES))
        )

    @admin.action(description="Suspend selected tenants", permissions=["manage"])
    def suspend(self, request, queryset) -> HttpResponse | None:
        return self._set_status(request, queryset, Tenant.Status.SUSPENDED)

    @admin.action(description="Activate selected tenants", permissions=["manage"])
    def activate(self, request, queryset) -> HttpResponse | None:
        return self._set_status(request, queryset, Tenant.Status.ACTIVE)

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
        if resumed:
            self.message_user(request, f"Sync resumed for {resumed} tenant(s).")


@admin.register(Membership)
class MembershipAdmin(
    OfferedActionsOnlyMixin, TenantScopedAdminMixin, admin.ModelAdmin
):
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role", TenantFilter]
    search_fields = ["user__username", "tenant__name"]
    autocomplete_fields = ["user", "tenant"]
    list_select_related = ["user", "tenant"]

    def get_readonly_fields(self, request, obj=None) -> list[str]:
        # A membership is one user in one tenant: changing it changes the
        # role. Another user or tenant is another membership (added anew).
        return ["user", "tenant"] if obj is not None else []

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


User = get_user_model()


class MemberUserAdmin(UserAdmin):
    """
    Django's user admin, showing staff only the members of their tenants.

    It answers the user autocomplete of memberships
    (``/admin/autocomplete/?...&field_name=user``), which would otherwise
    list every user of the platform to any staff user allowed to view users.
    """

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        tenant_ids = getattr(request, "tenant_ids", [])
        if tenant_ids is None:
            return queryset
        members = Membership.objects.filter(tenant_id__in=tenant_ids)
        return queryset.filter(pk__in=members.values("user_id"))


# Registered by django.contrib.auth, which is installed (and so loaded) first.
if admin.site.is_registered(User):
    admin.site.unregister(User)
admin.site.register(User, MemberUserAdmin)
