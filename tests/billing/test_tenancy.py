import pytest
from django.db import connection

from billing.models import Membership
from billing.tenancy import tenant_context
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db


def test_for_tenant_returns_only_that_tenants_rows(tenant, other_tenant):
    mine = MembershipFactory.create_batch(2, tenant=tenant)
    MembershipFactory(tenant=other_tenant)

    assert set(Membership.objects.for_tenant(tenant)) == set(mine)
    assert Membership.objects.for_tenant(tenant.pk).count() == 2
    assert Membership.objects.for_tenants([tenant.pk, other_tenant.pk]).count() == 3


def _settings():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('app.tenant_ids', true), "
            "current_setting('app.rls_bypass', true)"
        )
        return cursor.fetchone()


def test_nested_tenant_context_restores_the_outer_scope():
    with tenant_context([1, 2]):
        assert _settings() == ("1,2", "off")
        with tenant_context(all_tenants=True):
            assert _settings() == ("", "on")
        assert _settings() == ("1,2", "off")


def test_tenant_context_scope_is_rolled_back_with_a_failed_block():
    with tenant_context([7]):
        with pytest.raises(RuntimeError), tenant_context([8]):
            assert _settings() == ("8", "off")
            raise RuntimeError
        assert _settings() == ("7", "off")


@pytest.mark.django_db(transaction=True)
def test_an_outermost_scope_ends_with_its_transaction():
    # Outside any transaction: the scope is set in one statement and not
    # restored, as the settings are local to the transaction that ends.
    assert not connection.in_atomic_block
    with tenant_context([3]):
        assert _settings() == ("3", "off")
        with tenant_context(all_tenants=True):
            assert _settings() == ("", "on")
        assert _settings() == ("3", "off")
    assert _settings() in ((None, None), ("", ""))
    with pytest.raises(RuntimeError), tenant_context([4]):
        raise RuntimeError
    assert _settings() in ((None, None), ("", ""))
