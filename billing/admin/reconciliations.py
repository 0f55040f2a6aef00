"""
Stripe reconciliations: each tenant-day's check, read-only, and a warning on
the admin index while any day the user may see drifts from Stripe.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib import admin
from django.http import HttpRequest, HttpResponse

from billing.admin.base import (
    OfferedActionsOnlyMixin,
    ReadOnlyAdminMixin,
    TenantFilter,
    TenantScopedAdminMixin,
)
from billing.models import StripeReconciliation


@admin.register(StripeReconciliation)
class StripeReconciliationAdmin(
    OfferedActionsOnlyMixin,
    ReadOnlyAdminMixin,
    TenantScopedAdminMixin,
    admin.ModelAdmin,
):
    list_display = [
        "day",
        "tenant",
        "status",
        "sent_value",
        "stripe_value",
        "drift",
        "unreported_amount",
        "checked_at",
    ]
    list_filter = ["status", TenantFilter]
    date_hierarchy = "day"
    list_select_related = ["tenant"]
    readonly_fields = [
        "tenant",
        "day",
        "status",
        "checked_at",
        "ledger_amount",
        "reported_amount",
        "unreported_amount",
        "sent_value",
        "stripe_value",
        "details",
    ]

    @admin.display(description="Stripe - sent")
    def drift(self, reconciliation: StripeReconciliation) -> int:
        return reconciliation.drift_value


def drift_count(request: HttpRequest) -> int:
    """Tenant-days the user may see that drift from Stripe."""
    model_admin = admin.site._registry[StripeReconciliation]
    if not model_admin.has_view_permission(request):
        return 0
    queryset = model_admin.get_queryset(request)
    return queryset.filter(status=StripeReconciliation.Status.DRIFT).count()


def with_drift_warning(index: Callable[..., HttpResponse]) -> Callable:
    """Wrap an admin site's ``index`` to tell it how many tenant-days drift."""

    @wraps(index)
    def index_view(request: HttpRequest, extra_context=None) -> HttpResponse:
        context = {"stripe_drift": drift_count(request), **(extra_context or {})}
        return index(request, context)

    return index_view


admin.site.index = with_drift_warning(admin.site.index)
