import pytest

from billing.audit import Actor
from billing.models import AuditLog, Membership, Tenant
from billing.services import (
    InvalidTransition,
    membership_remove,
    membership_set,
    tenant_create,
    tenant_set_status,
    tenant_update,
)

pytestmark = pytest.mark.django_db


def test_tenant_create_audits_without_the_secret(superuser):
    tenant = tenant_create(
        actor=Actor.staff(superuser),
        name="Acme",
        slug="acme",
        langfuse_public_key="pk-lf-acme",
        langfuse_secret_key="sk-lf-acme-secret",
    )
    entry = AuditLog.objects.get(action="tenant.create")
    assert entry.tenant == tenant
    assert entry.after["slug"] == "acme"
    assert entry.after["langfuse_secret_key"] == "set"
    assert "sk-lf-acme-secret" not in repr(entry.after)


def test_tenant_update_audits_only_what_changed(tenant):
    tenant_update(
        tenant=tenant, actor=Actor.system(), name="New name", settle_seconds=90
    )
    entry = AuditLog.objects.get(action="tenant.update")
    assert entry.before == {"name": tenant.name, "settle_seconds": 60}
    assert entry.after == {"name": "New name", "settle_seconds": 90}


def test_tenant_update_without_changes_writes_no_audit(tenant):
    tenant_update(tenant=tenant, actor=Actor.system(), name=tenant.name)
    assert not AuditLog.objects.exists()


def test_tenant_update_rejects_unknown_fields(tenant):
    with pytest.raises(TypeError, match="status"):
        tenant_update(tenant=tenant, actor=Actor.system(), status="suspended")


def test_suspend_then_activate_is_audited_once_each(tenant, superuser):
    actor = Actor.staff(superuser)
    tenant_set_status(
        tenant_id=tenant.pk, status="suspended", actor=actor, note="fraud"
    )
    with pytest.raises(InvalidTransition):
        tenant_set_status(tenant_id=tenant.pk, status="suspended", actor=actor)
    tenant_set_status(tenant_id=tenant.pk, status="active", actor=actor)

    assert Tenant.objects.get(pk=tenant.pk).status == "active"
    actions = list(
        AuditLog.objects.order_by("id").values_list("action", "before", "after", "note")
    )
    assert actions == [
        ("tenant.suspend", {"status": "active"}, {"status": "suspended"}, "fraud"),
        ("tenant.activate", {"status": "suspended"}, {"status": "active"}, ""),
    ]


def test_membership_set_and_remove_are_audited(tenant, staff_user):
    actor = Actor.system()
    membership_set(tenant=tenant, user=staff_user, role="viewer", actor=actor)
    membership = membership_set(
        tenant=tenant, user=staff_user, role="admin", actor=actor
    )
    membership_set(tenant=tenant, user=staff_user, role="admin", actor=actor)
    membership_remove(membership_id=membership.pk, actor=actor)

    assert not Membership.objects.exists()
    assert list(AuditLog.objects.order_by("id").values_list("action", flat=True)) == [
        "membership.create",
        "membership.update",
        "membership.delete",
    ]
