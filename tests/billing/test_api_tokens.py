"""API tokens: shown once, stored hashed, revoked for good, managed by tenant admins."""

import hashlib
import threading
import time
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connections, transaction
from django.urls import reverse
from django.utils import timezone

from billing.api_tokens import _lookup, api_token_authenticate, token_digest
from billing.audit import Actor
from billing.models import ApiToken, AuditLog, Membership, Tenant
from billing.services import (
    InvalidTransition,
    api_token_create,
    api_token_revoke,
    tenant_set_status,
)
from billing.tenancy import tenant_context
from tests.factories import staff_with_role

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:billing_apitoken_changelist")
ADD = reverse("admin:billing_apitoken_add")


def test_a_token_is_stored_as_its_digest_only(tenant):
    created = api_token_create(
        tenant=tenant, name="ci", role="operator", actor=Actor.system()
    )
    token = ApiToken.objects.get()
    assert created.raw.startswith(f"lbt_{tenant.pk}_")
    assert token.key_hash == hashlib.sha256(created.raw.encode()).hexdigest()
    assert created.raw.startswith(token.prefix) and len(token.prefix) < len(created.raw)
    stored = ApiToken.objects.values().get()
    assert not any(created.raw in str(value) for value in stored.values())
    entry = AuditLog.objects.get(action="api_token.create")
    assert entry.after == {"name": "ci", "role": "operator", "prefix": token.prefix}
    assert created.raw not in str(entry.after)


@pytest.mark.usefixtures("empty_cache")
def test_an_accepted_token_is_remembered_and_its_use_recorded_once_a_minute(
    tenant, time_machine, django_assert_num_queries
):
    raw = api_token_create(
        tenant=tenant, name="ci", role="viewer", actor=Actor.system()
    ).raw
    time_machine.move_to(timezone.now(), tick=False)
    client = api_token_authenticate(raw=raw)
    token = ApiToken.objects.get()
    assert (client.token_id, client.tenant_id, client.role, client.tenant_active) == (
        token.pk,
        tenant.pk,
        "viewer",
        True,
    )
    used = token.last_used_at
    assert used == timezone.now()
    with django_assert_num_queries(0):
        assert api_token_authenticate(raw=raw) == client
    # Once forgotten (REMEMBER_FOR on Redis's own clock), the database is
    # asked again, and records the use if a minute has passed.
    cache.clear()
    time_machine.shift(timedelta(seconds=30))
    api_token_authenticate(raw=raw)
    assert ApiToken.objects.get().last_used_at == used
    cache.clear()
    time_machine.shift(timedelta(seconds=31))
    api_token_authenticate(raw=raw)
    assert ApiToken.objects.get().last_used_at > used


def test_a_revoked_token_is_refused_and_revoking_twice_is_an_error(
    api, tenant, make_token
):
    raw = make_token(tenant)
    assert api("get", "/cost-anomalies", raw).status_code == 200
    token = ApiToken.objects.get()
    api_token_revoke(token_id=token.pk, actor=Actor.system(), note="leaked")
    response = api("get", "/cost-anomalies", raw)
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid or revoked API token."
    with pytest.raises(InvalidTransition):
        api_token_revoke(token_id=token.pk, actor=Actor.system())
    entry = AuditLog.objects.get(action="api_token.revoke")
    assert (entry.object_id, entry.note) == (str(token.pk), "leaked")


def test_the_web_role_finds_a_token_only_under_its_tenant(
    tenant, other_tenant, as_app_role
):
    raw = api_token_create(
        tenant=tenant, name="ci", role="viewer", actor=Actor.system()
    ).raw
    as_app_role()
    with tenant_context([tenant.pk]):
        assert _lookup(token_digest(raw)) is not None
    with tenant_context([other_tenant.pk]):
        assert _lookup(token_digest(raw)) is None


@pytest.mark.usefixtures("empty_cache")
def test_suspending_the_tenant_refuses_its_remembered_tokens(api, tenant, make_token):
    raw = make_token(tenant)
    assert api("get", "/cost-anomalies", raw).status_code == 200
    tenant_set_status(
        tenant_id=tenant.pk, status=Tenant.Status.SUSPENDED, actor=Actor.system()
    )
    response = api("get", "/cost-anomalies", raw)
    assert response.status_code == 403
    tenant_set_status(
        tenant_id=tenant.pk, status=Tenant.Status.ACTIVE, actor=Actor.system()
    )
    assert api("get", "/cost-anomalies", raw).status_code == 200


# The admin: tenant admins only, the token shown once.


@pytest.fixture
def tenant_admin(tenant):
    return staff_with_role(tenant, Membership.Role.ADMIN)


def test_a_tenant_admin_creates_a_token_and_sees_it_once(client, tenant, tenant_admin):
    client.force_login(tenant_admin)
    response = client.post(
        ADD, {"tenant": tenant.pk, "name": "nightly", "role": "operator"}
    )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    token = ApiToken.objects.get()
    raw = response.context["raw"]
    assert raw in response.content.decode()
    assert hashlib.sha256(raw.encode()).hexdigest() == token.key_hash
    assert (token.name, token.role, token.created_by) == (
        "nightly",
        "operator",
        tenant_admin,
    )
    # Never again: not on its page, not in the list.
    for url in (CHANGELIST, reverse("admin:billing_apitoken_change", args=[token.pk])):
        page = client.get(url)
        assert page.status_code == 200
        assert token.prefix in page.content.decode()
        assert raw not in page.content.decode()
    entry = AuditLog.objects.get(action="api_token.create")
    assert (entry.actor, entry.actor_kind) == (tenant_admin, "staff")


def test_a_tenant_admin_cannot_create_a_token_for_another_tenant(
    client, tenant, other_tenant, tenant_admin
):
    client.force_login(tenant_admin)
    response = client.post(
        ADD, {"tenant": other_tenant.pk, "name": "x", "role": "admin"}
    )
    assert response.status_code == 200
    assert "tenant" in response.context["adminform"].form.errors
    assert not ApiToken.objects.exists()


@pytest.mark.parametrize("role", [Membership.Role.VIEWER, Membership.Role.OPERATOR])
def test_below_tenant_admin_the_tokens_are_out_of_sight(client, tenant, role):
    api_token_create(tenant=tenant, name="ci", role="viewer", actor=Actor.system())
    client.force_login(staff_with_role(tenant, role))
    assert client.get(CHANGELIST).status_code == 403
    assert client.get(ADD).status_code == 403
    assert "API tokens" not in client.get(reverse("admin:index")).content.decode()


def test_an_admin_sees_only_the_tokens_of_tenants_they_administer(
    client, tenant, other_tenant, tenant_admin
):
    Membership.objects.create(user=tenant_admin, tenant=other_tenant, role="viewer")
    api_token_create(tenant=tenant, name="mine", role="viewer", actor=Actor.system())
    api_token_create(
        tenant=other_tenant, name="theirs", role="viewer", actor=Actor.system()
    )
    client.force_login(tenant_admin)
    page = client.get(CHANGELIST).content.decode()
    assert "mine" in page and "theirs" not in page


def test_revoke_action_revokes_and_audits(client, tenant, tenant_admin):
    api_token_create(tenant=tenant, name="ci", role="viewer", actor=Actor.system())
    token = ApiToken.objects.get()
    client.force_login(tenant_admin)
    response = client.post(
        CHANGELIST, {"action": "revoke", "_selected_action": [token.pk]}, follow=True
    )
    assert "Revoked 1 API token(s)." in response.content.decode()
    token.refresh_from_db()
    assert token.revoked_at is not None
    entry = AuditLog.objects.get(action="api_token.revoke")
    assert entry.actor == tenant_admin


def test_an_admin_cannot_revoke_another_tenant_s_token(
    client, tenant, other_tenant, tenant_admin
):
    api_token_create(tenant=other_tenant, name="x", role="viewer", actor=Actor.system())
    token = ApiToken.objects.get()
    client.force_login(tenant_admin)
    client.post(CHANGELIST, {"action": "revoke", "_selected_action": [token.pk]})
    token.refresh_from_db()
    assert token.revoked_at is None


def test_the_list_filters_active_and_revoked_tokens(client, tenant, tenant_admin):
    for name in ("kept", "gone"):
        api_token_create(tenant=tenant, name=name, role="viewer", actor=Actor.system())
    api_token_revoke(
        token_id=ApiToken.objects.get(name="gone").pk, actor=Actor.system()
    )
    client.force_login(tenant_admin)
    active = client.get(CHANGELIST, {"status": "active"}).content.decode()
    revoked = client.get(CHANGELIST, {"status": "revoked"}).content.decode()
    assert "kept" in active and "gone" not in active
    assert "gone" in revoked and "kept" not in revoked and "revoked " in revoked


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("empty_cache")
def test_a_request_during_a_revocation_cannot_bring_the_token_back(api, tenant):
    raw = api_token_create(
        tenant=tenant, name="ci", role="viewer", actor=Actor.system()
    ).raw
    token = ApiToken.objects.get()
    # Due a touch of its last use: the request's UPDATE waits on the row the
    # revocation holds, then finishes after the revocation committed.
    ApiToken.objects.filter(pk=token.pk).update(
        last_used_at=timezone.now() - timedelta(minutes=5)
    )
    during = {}

    def request():
        during["client"] = api_token_authenticate(raw=raw)
        connections.close_all()

    with transaction.atomic():  # the admin's request of the Revoke action
        api_token_revoke(token_id=token.pk, actor=Actor.system())
        thread = threading.Thread(target=request)
        thread.start()
        time.sleep(0.5)
    thread.join()
    assert during["client"] is None
    assert api("get", "/cost-anomalies", raw).status_code == 401
