"""
What every billing admin shares: tenant scoping and Membership roles.

``get_queryset`` is the one place that scopes each page to the user's tenants
(``request.tenant_ids``, set by ``TenantRLSMiddleware``); filters and actions
inherit it. The admin only collects input and calls services.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest

from billing.audit import Actor
from billing.models import Membership, Tenant


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


def request_tenants(request: HttpRequest) -> QuerySet:
    """
    The tenants the request's user may see. The tenant table has no
    row-level security, so every list of tenant names starts here.
    """
    tenant_ids = getattr(request, "tenant_ids", [])
    if tenant_ids is None:
        return Tenant.objects.all()
    return Tenant.objects.filter(pk__in=tenant_ids)


class TenantFilter(admin.SimpleListFilter):
    """
    "By tenant", listing only the user's tenants.

    Django's related-field filter lists every row of the related table, and
    the tenant table has no row-level security: staff of one tenant would
    read every other tenant's name.
    """

    title = "tenant"
    parameter_name = "tenant"

    def __init__(self, request, params, model, model_admin) -> None:
        self.tenant_field = getattr(model_admin, "tenant_field", "tenant_id")
        super().__init__(request, params, model, model_admin)

    def lookups(self, request, model_admin) -> list[tuple[int, str]]:
        tenants = request_tenants(request).order_by("name")
        return list(tenants.values_list("pk", "name"))

    def queryset(self, request, queryset) -> QuerySet:
        if self.value() is None:
            return queryset
        # Facet counts pass the lookups' own (int) values; str.isdigit() alone
        # takes "²", which int() refuses.
        value = str(self.value())
        if not (value.isascii() and value.isdigit()):
            raise IncorrectLookupParameters(f"Not a tenant: {self.value()!r}")
        return queryset.filter(**{self.tenant_field: self.value()})


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


class OfferedActionsOnlyMixin:
    """
    Answer a POST of an action the user is not offered with a 403.

    Django ignores it instead (or says "No action selected"), which reads
    like a success to whoever forged it and hides a role check gone wrong.
    """

    def changelist_view(self, request: HttpRequest, extra_context=None):
        if request.method == "POST":
            requested = set(request.POST.getlist("action")) - {""}
            if requested - set(self.get_actions(request)):
                raise PermissionDenied
        return super().changelist_view(request, extra_context)


class ReadOnlyAdminMixin:
    """Ledger rows change only through the sync engine and its services."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
