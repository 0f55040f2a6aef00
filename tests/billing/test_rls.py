"""
Row-level security, checked as the web role (not the superuser the tests
otherwise connect as, which bypasses RLS). The split between the web and the
worker role is tested in test_rls_roles.py.
"""

import psycopg
import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.urls import reverse

from billing.audit import Actor, audit_log_write
from billing.models import AuditLog, Membership
from billing.tenancy import tenant_context
from tests.billing.test_rls_roles import WORKER_ROLE
from tests.conftest import APP_ROLE
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_tenants(tenant, other_tenant):
    MembershipFactory.create_batch(2, tenant=tenant)
    MembershipFactory.create_batch(3, tenant=other_tenant)
    return tenant, other_tenant


def test_app_role_sees_only_the_context_tenant(two_tenants, as_app_role):
    tenant, _ = two_tenants
    as_app_role()
    with tenant_context([tenant.pk]):
        # Deliberately unfiltered: RLS, not the queryset, hides the other tenant.
        seen = list(Membership.objects.values_list("tenant_id", flat=True))
    assert seen == [tenant.pk, tenant.pk]


def test_app_role_without_a_context_sees_nothing(two_tenants, as_app_role):
    as_app_role()
    assert Membership.objects.count() == 0


def test_app_role_cannot_do_cross_tenant_work(two_tenants, as_app_role):
    """Only the worker role may (see test_rls_roles.py); the web role never."""
    as_app_role()
    with tenant_context(all_tenants=True):
        assert Membership.objects.count() == 0


def test_app_role_cannot_write_into_another_tenant(two_tenants, as_app_role):
    tenant, other = two_tenants
    user = UserFactory()
    as_app_role()
    with (
        pytest.raises(DatabaseError, match="row-level security"),
        tenant_context([tenant.pk]),
    ):
        Membership.objects.create(tenant=other, user=user)


def test_audit_log_is_append_only(tenant):
    entry = audit_log_write(actor=Actor.system(), action="x", obj=tenant, tenant=tenant)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditLog.objects.filter(pk=entry.pk).update(note="rewritten")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditLog.objects.filter(pk=entry.pk).delete()
    assert AuditLog.objects.get(pk=entry.pk).note == ""


@pytest.mark.django_db(transaction=True)
def test_a_real_login_as_the_app_role_is_isolated(two_tenants):
    """A separate connection logged in as the role made by create_app_role."""
    _, other = two_tenants
    call_command("create_app_role", role=APP_ROLE, worker_role=WORKER_ROLE)
    settings = connection.settings_dict
    with psycopg.connect(
        host=settings["HOST"],
        port=settings["PORT"] or 5432,
        dbname=settings["NAME"],
        user=APP_ROLE,
    ) as conn:
        cursor = conn.execute(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        )
        assert cursor.fetchone() == (False, False)
        assert conn.execute("SELECT count(*) FROM billing_membership").fetchone() == (
            0,
        )
        conn.execute("SELECT set_config('app.tenant_ids', %s, true)", [str(other.pk)])
        rows = conn.execute("SELECT DISTINCT tenant_id FROM billing_membership")
        assert rows.fetchall() == [(other.pk,)]


def test_a_request_runs_under_rls_scoped_to_the_users_tenants(
    client, two_tenants, as_app_role
):
    tenant, other = two_tenants
    user = UserFactory()
    user.user_permissions.add(Permission.objects.get(codename="view_tenant"))
    MembershipFactory(user=user, tenant=tenant)
    client.force_login(user)
    as_app_role()

    response = client.get(reverse("admin:billing_tenant_changelist"))

    assert response.status_code == 200
    html = response.content.decode()
    assert tenant.name in html
    assert other.name not in html
