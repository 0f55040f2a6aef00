"""Reads that decide what a user may see."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser

from billing.models import Membership, Tenant
from billing.tenancy import own_rows_context


def tenant_ids_for_user(*, user: AbstractBaseUser) -> list[int] | None:
    """
    The tenants a user may see: None means all (superusers), [] means none.

    Memberships are themselves tenant-owned: the lookup sees the user's own
    rows only (the web role cannot lift RLS to see more).
    """
    if not user.is_authenticated or not user.is_active:
        return []
    if user.is_superuser:
        return None
    with own_rows_context(user.pk):
        return list(
            Membership.objects.filter(user=user).values_list("tenant_id", flat=True)
        )


def tenant_list_for_user(*, user: AbstractBaseUser):
    ids = tenant_ids_for_user(user=user)
    tenants = Tenant.objects.all()
    return tenants if ids is None else tenants.filter(pk__in=ids)


def membership_role(*, user: AbstractBaseUser, tenant: Tenant) -> str | None:
    if user.is_superuser:
        return Membership.Role.ADMIN
    return (
        Membership.objects.filter(user=user, tenant=tenant)
        .values_list("role", flat=True)
        .first()
    )
