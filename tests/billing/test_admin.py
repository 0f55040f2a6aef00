import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from billing.models import AuditLog, Tenant
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_of(staff_user):
    def make(tenant, role="viewer"):
        staff_user.user_permissions.add(
            *Permission.objects.filter(codename__in=["view_tenant", "change_tenant"])
        )
        MembershipFactory(user=staff_user, tenant=tenant, role=role)
        return staff_user

    return make


def test_staff_see_only_their_tenants(client, tenant, other_tenant, staff_of):
    client.force_login(staff_of(tenant))
    html = client.get(reverse("admin:billing_tenant_changelist")).content.decode()
    assert tenant.name in html
    assert other_tenant.name not in html
    response = client.get(
        reverse("admin:billing_tenant_change", args=[other_tenant.pk])
    )
    assert response.status_code == 302  # "does not exist", back to the index


def test_superuser_sees_every_tenant(client, superuser, tenant, other_tenant):
    client.force_login(superuser)
    html = client.get(reverse("admin:billing_tenant_changelist")).content.decode()
    assert tenant.name in html
    assert other_tenant.name in html


def test_a_viewer_cannot_change_a_tenant(client, tenant, staff_of):
    client.force_login(staff_of(tenant, role="viewer"))
    url = reverse("admin:billing_tenant_change", args=[tenant.pk])
    response = client.post(url, {"name": "Hijacked"})
    assert response.status_code == 403
    assert Tenant.objects.get(pk=tenant.pk).name != "Hijacked"


def test_suspend_action_goes_through_the_service(client, tenant, staff_of):
    user = staff_of(tenant, role="admin")
    client.force_login(user)
    response = client.post(
        reverse("admin:billing_tenant_changelist"),
        {
            "action": "suspend",
            "_selected_action": [tenant.pk],
            "post": "yes",
            "reason": "non_payment",
        },
    )
    assert response.status_code == 302
    assert Tenant.objects.get(pk=tenant.pk).status == "suspended"
    entry = AuditLog.objects.get(action="tenant.suspend")
    assert (entry.actor, entry.actor_kind) == (user, "staff")


def test_audit_log_admin_is_read_only(client, superuser, tenant):
    client.force_login(superuser)
    assert client.get(reverse("admin:billing_auditlog_changelist")).status_code == 200
    assert client.get(reverse("admin:billing_auditlog_add")).status_code == 403


def test_held_usage_shows_as_held_with_its_reason(client, superuser, tenant):
    from datetime import UTC, datetime
    from decimal import Decimal

    from billing.models import UsageRecord

    at = datetime(2026, 11, 20, 12, tzinfo=UTC)
    UsageRecord.objects.create(
        tenant=tenant,
        trace_id="held-1",
        trace_timestamp=at,
        last_activity_at=at,
        cost=Decimal("0.0021"),
        status="unpriced",
        skip_reason="observation o1: unknown model 'local-llama' and no Langfuse cost",
        content_hash="x",
    )
    client.force_login(superuser)

    html = client.get(
        reverse("admin:billing_usagerecord_changelist") + "?status__exact=unpriced"
    ).content.decode()

    assert "held ($0.002100 priced so far)" in html
    assert "unknown model &#x27;local-llama&#x27; and no Langfuse cost" in html
