"""
Membership roles decide what a user may do in the admin (issue 12, item 2):
a viewer looks, an operator retries failed reports, a tenant admin also
suspends, activates and resumes the tenant. The actions check the role in
the selected rows' tenants, not only a Django model permission.
"""

from datetime import UTC, date, datetime

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from billing.models import StripeReport, Tenant
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

TENANT_PERMISSIONS = ["view_tenant", "change_tenant", "view_stripereport"]


@pytest.fixture
def user_with_role(tenant):
    def make(role):
        user = UserFactory()
        user.user_permissions.add(
            *Permission.objects.filter(codename__in=TENANT_PERMISSIONS)
        )
        MembershipFactory(user=user, tenant=tenant, role=role)
        return user

    return make


def _failed_report(tenant) -> StripeReport:
    return StripeReport.objects.create(
        tenant=tenant,
        identifier=f"lf-{tenant.pk}-20261120-x",
        event_name="llm_usage",
        stripe_customer_id="cus_old",
        unit="micro_usd",
        value=10,
        amount=10,
        day=date(2026, 11, 20),
        timestamp=datetime(2026, 11, 20, 12, tzinfo=UTC),
        status=StripeReport.Status.FAILED,
        last_error="stripe: HTTP 400 resource_missing",
    )


def _act(client, model, action, ids):
    url = reverse(f"admin:billing_{model}_changelist")
    return client.post(url, {"action": action, "_selected_action": ids}, follow=True)


def _offered(client, model) -> set[str]:
    response = client.get(reverse(f"admin:billing_{model}_changelist"))
    form = response.context["action_form"]  # None when none is offered
    if form is None:
        return set()
    return {value for value, _ in form.fields["action"].choices if value}


@pytest.mark.parametrize(
    ("role", "offered"),
    [
        ("viewer", set()),
        ("operator", set()),
        ("admin", {"suspend", "activate", "resume_sync"}),
    ],
)
def test_only_a_tenant_admin_manages_the_tenant(
    client, tenant, user_with_role, role, offered
):
    client.force_login(user_with_role(role))

    assert _offered(client, "tenant") == offered
    _act(client, "tenant", "suspend", [tenant.pk])

    suspended = Tenant.objects.get(pk=tenant.pk).status == Tenant.Status.SUSPENDED
    assert suspended == (role == "admin")


def test_an_admin_of_one_tenant_cannot_suspend_another(
    client, tenant, other_tenant, user_with_role
):
    admin = user_with_role("admin")
    MembershipFactory(user=admin, tenant=other_tenant, role="viewer")
    client.force_login(admin)

    response = _act(client, "tenant", "suspend", [tenant.pk, other_tenant.pk])

    assert response.status_code == 403
    assert set(Tenant.objects.values_list("status", flat=True)) == {"active"}


@pytest.mark.parametrize(
    ("role", "may_retry"), [("viewer", False), ("operator", True), ("admin", True)]
)
def test_only_operators_and_admins_retry_failed_reports(
    client, tenant, user_with_role, role, may_retry
):
    report = _failed_report(tenant)
    client.force_login(user_with_role(role))

    assert ("retry" in _offered(client, "stripereport")) == may_retry
    _act(client, "stripereport", "retry", [report.pk])

    report.refresh_from_db()
    assert report.status == ("pending" if may_retry else "failed")


def test_an_operator_of_one_tenant_cannot_retry_another_s_reports(
    client, tenant, other_tenant, user_with_role
):
    operator = user_with_role("operator")
    MembershipFactory(user=operator, tenant=other_tenant, role="viewer")
    theirs = _failed_report(other_tenant)
    client.force_login(operator)

    response = _act(client, "stripereport", "retry", [theirs.pk])

    assert response.status_code == 403
    theirs.refresh_from_db()
    assert theirs.status == "failed"
