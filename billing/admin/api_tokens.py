"""
API tokens: tenant admins create and revoke their tenant's; nobody edits one.

The token is shown once, on the page that answers the add form, and never
again: only its digest is stored. That page is not a redirect with a message
(Django's message storage is a signed cookie, readable by anyone holding it)
and, as every admin page, is sent with ``Cache-Control: no-store``.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import formats

from billing.admin.base import (
    ADMIN_ROLES,
    OfferedActionsOnlyMixin,
    TenantFilter,
    refuse_outside,
    request_actor,
    request_tenants,
    tenant_ids_acting_as,
)
from billing.models import ApiToken
from billing.services import InvalidTransition, api_token_create, api_token_revoke


class ApiTokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ["tenant", "name", "role"]
        help_texts = {
            "role": "Viewer reads anomalies, incidents and usage; operator "
            "also acknowledges, resolves and reopens them.",
        }


class TokenStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin) -> list[tuple[str, str]]:
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() in ("active", "revoked"):
            return queryset.filter(revoked_at__isnull=self.value() == "active")
        return queryset


@admin.register(ApiToken)
class ApiTokenAdmin(OfferedActionsOnlyMixin, admin.ModelAdmin):
    form = ApiTokenForm
    list_display = [
        "name",
        "prefix",
        "tenant",
        "role",
        "created_at",
        "last_used_at",
        "status",
    ]
    list_filter = ["role", TokenStatusFilter, TenantFilter]
    # No search_fields: a tenant has a few tokens, and without them the
    # admin's autocomplete cannot be asked to list tokens either.
    list_select_related = ["tenant", "created_by"]
    readonly_fields = ["prefix", "created_by", "created_at", "last_used_at"]
    actions = ["revoke"]
    created_template = "admin/billing/apitoken/created.html"

    # Tokens are a tenant admin's business, in the tenants they administer.
    def get_queryset(self, request: HttpRequest):
        queryset = super().get_queryset(request)
        tenant_ids = tenant_ids_acting_as(request, ADMIN_ROLES)
        return (
            queryset
            if tenant_ids is None
            else queryset.filter(tenant_id__in=tenant_ids)
        )

    def _administers_a_tenant(self, request: HttpRequest) -> bool:
        tenant_ids = tenant_ids_acting_as(request, ADMIN_ROLES)
        return request.user.is_active and (tenant_ids is None or bool(tenant_ids))

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_staff and self._administers_a_tenant(request)

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        return self._administers_a_tenant(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self._administers_a_tenant(request)

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return self._administers_a_tenant(request)

    @admin.display(description="status", ordering="revoked_at")
    def status(self, token: ApiToken) -> str:
        if token.revoked_at is None:
            return "active"
        return f"revoked {formats.date_format(token.revoked_at, 'DATE_FORMAT')}"

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # revoked, never deleted: the audit log names it

    def get_fields(self, request: HttpRequest, obj=None) -> list[str]:
        if obj is None:
            return ["tenant", "name", "role"]
        return [
            "tenant",
            "name",
            "role",
            "prefix",
            "created_by",
            "created_at",
            "last_used_at",
            "revoked_at",
        ]

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "tenant":
            tenant_ids = tenant_ids_acting_as(request, ADMIN_ROLES)
            tenants = request_tenants(request)
            if tenant_ids is not None:
                tenants = tenants.filter(pk__in=tenant_ids)
            kwargs["queryset"] = tenants.order_by("name")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change) -> None:
        created = api_token_create(
            tenant=obj.tenant,
            name=obj.name,
            role=obj.role,
            actor=request_actor(request),
        )
        obj.pk = created.token.pk
        request._created_api_token = created

    def response_add(self, request, obj, post_url_continue=None) -> HttpResponse:
        created = request._created_api_token
        context = {
            **self.admin_site.each_context(request),
            "title": "API token created",
            "opts": self.opts,
            "token": created.token,
            "raw": created.raw,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.created_template, context)

    @admin.action(description="Revoke selected API tokens", permissions=["revoke"])
    def revoke(self, request, queryset) -> None:
        refuse_outside(request, queryset, ADMIN_ROLES)
        revoked = 0
        for token_id in queryset.values_list("pk", flat=True):
            try:
                api_token_revoke(token_id=token_id, actor=request_actor(request))
                revoked += 1
            except InvalidTransition as exc:
                self.message_user(request, str(exc), messages.WARNING)
        if revoked:
            self.message_user(request, f"Revoked {revoked} API token(s).")
