"""
Tenant scoping: the queryset every tenant-owned model uses, and the unit of
work that tells Postgres row-level security which tenants it may see.

``Model.objects.for_tenant(tenant)`` is the application-level guard; RLS (see
``billing.rls``) is the defense in depth underneath it, so a forgotten filter
returns nothing instead of another tenant's rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from django.db import connections, models, transaction

if TYPE_CHECKING:
    from billing.models import Tenant

# Transaction-local settings read by the RLS policies in billing.rls.
TENANT_IDS_SETTING = "app.tenant_ids"
BYPASS_SETTING = "app.rls_bypass"
# Names the signed-in user for a SELECT-only policy on memberships, so the
# web role can find a user's tenants before it knows them (migration 0011).
USER_ID_SETTING = "app.user_id"


class TenantQuerySet(models.QuerySet):
    def for_tenant(self, tenant: Tenant | int) -> TenantQuerySet:
        tenant_id = tenant if isinstance(tenant, int) else tenant.pk
        return self.filter(tenant_id=tenant_id)

    def for_tenants(self, tenant_ids: Iterable[int]) -> TenantQuerySet:
        return self.filter(tenant_id__in=list(tenant_ids))


class TenantOwnedModel(models.Model):
    """Base for every row that belongs to one tenant; RLS is added per table."""

    tenant = models.ForeignKey("billing.Tenant", on_delete=models.CASCADE)

    objects = TenantQuerySet.as_manager()

    class Meta:
        abstract = True


def _set(cursor, name: str, value: str) -> None:
    # is_local=true: the value dies with the transaction, so a pooled
    # connection can never carry one request's tenant into the next.
    cursor.execute("SELECT set_config(%s, %s, true)", [name, value])


@contextmanager
def tenant_context(
    tenant_ids: Iterable[int] | None = None,
    *,
    all_tenants: bool = False,
    using: str = "default",
) -> Iterator[None]:
    """
    Run a unit of work in a transaction that RLS scopes to ``tenant_ids``.

    ``all_tenants=True`` is for system work that spans tenants (schedulers,
    migrations of data, superusers in the admin). Nested contexts restore the
    outer scope on exit. On databases without RLS this is just a transaction.
    """
    connection = connections[using]
    # The transaction's first scope needs no restoring: the settings are
    # transaction-local and end with it. One round trip instead of five,
    # on every request.
    outermost = not connection.in_atomic_block
    with transaction.atomic(using=using):
        if connection.vendor != "postgresql":
            yield
            return
        ids = ",".join(str(int(i)) for i in (tenant_ids or ()))
        bypass = "on" if all_tenants else "off"
        with connection.cursor() as cursor:
            if not outermost:
                cursor.execute(
                    "SELECT current_setting(%s, true), current_setting(%s, true)",
                    [TENANT_IDS_SETTING, BYPASS_SETTING],
                )
                previous_ids, previous_bypass = cursor.fetchone()
            cursor.execute(
                "SELECT set_config(%s, %s, true), set_config(%s, %s, true)",
                [TENANT_IDS_SETTING, ids, BYPASS_SETTING, bypass],
            )
        yield
        # Only on success: when the block raises or asked for a rollback, the
        # rollback of this atomic (a savepoint when nested) reverts both.
        if outermost or connection.needs_rollback:
            return
        with connection.cursor() as cursor:
            _set(cursor, TENANT_IDS_SETTING, previous_ids or "")
            _set(cursor, BYPASS_SETTING, previous_bypass or "off")


@contextmanager
def own_rows_context(user_id: int, *, using: str = "default") -> Iterator[None]:
    """
    A transaction in which the user's own memberships are visible, in every
    tenant, and nothing else: how the web role learns a user's tenants.
    """
    connection = connections[using]
    with transaction.atomic(using=using):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                _set(cursor, USER_ID_SETTING, str(int(user_id)))
        yield
