import io
import logging
import os
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.db import connection
from django.urls import reverse

from billing.models import AuditLog, Tenant
from billing.secrets import Secret
from billing_project.logging import RedactSecretsFilter
from tests.factories import TenantFactory, tenant_form_data

CANARY = "sk-lf-canary-0123456789abcdef"

pytestmark = pytest.mark.django_db


@pytest.fixture
def canary_tenant():
    return TenantFactory(langfuse_secret_key=CANARY)


def test_secret_is_encrypted_in_the_database(canary_tenant):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT langfuse_secret_key FROM billing_tenant WHERE id = %s",
            [canary_tenant.pk],
        )
        stored = cursor.fetchone()[0]
    assert CANARY not in stored
    assert CANARY[-6:] not in stored
    loaded = Tenant.objects.get(pk=canary_tenant.pk).langfuse_secret_key
    assert isinstance(loaded, Secret)
    assert loaded.reveal() == CANARY


def test_secret_never_renders(canary_tenant):
    tenant = Tenant.objects.get(pk=canary_tenant.pk)
    rendered = " ".join(
        [
            repr(tenant),
            str(tenant),
            repr(tenant.langfuse_secret_key),
            f"{tenant.langfuse_secret_key}",
            repr(tenant.__dict__),
        ]
    )
    assert CANARY not in rendered


def test_dumpdata_holds_only_the_token(canary_tenant):
    out = io.StringIO()
    call_command("dumpdata", "billing.tenant", stdout=out)
    assert CANARY not in out.getvalue()


def _admin_change_page(client, user, tenant):
    client.force_login(user)
    return client.get(reverse("admin:billing_tenant_change", args=[tenant.pk]))


def test_admin_never_renders_the_secret(client, superuser, canary_tenant):
    response = _admin_change_page(client, superuser, canary_tenant)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="langfuse_secret_key"' in html
    assert CANARY not in html
    assert canary_tenant.langfuse_secret_key.token not in html


def _post_change(client, tenant, **overrides):
    data = tenant_form_data(
        tenant, **{"sync_enabled": "on", "scope_mapping": "{}", **overrides}
    )
    url = reverse("admin:billing_tenant_change", args=[tenant.pk])
    response = client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]


def test_admin_blank_secret_keeps_the_stored_one(client, superuser, canary_tenant):
    client.force_login(superuser)
    _post_change(client, canary_tenant, name="Renamed")
    tenant = Tenant.objects.get(pk=canary_tenant.pk)
    assert tenant.name == "Renamed"
    assert tenant.langfuse_secret_key.reveal() == CANARY


def test_admin_secret_change_is_audited_without_the_value(
    client, superuser, canary_tenant
):
    client.force_login(superuser)
    _post_change(client, canary_tenant, langfuse_secret_key="sk-lf-new-canary-42")
    assert (
        Tenant.objects.get(pk=canary_tenant.pk).langfuse_secret_key.reveal()
        == "sk-lf-new-canary-42"
    )
    entry = AuditLog.objects.get(action="tenant.update")
    assert entry.after == {"langfuse_secret_key": "changed"}
    assert entry.actor == superuser
    assert "canary" not in repr(entry.before) + repr(entry.after)


def _log_through_project_filter(logger_call) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecretsFilter())
    logger = logging.getLogger("tests.secrets")
    logger.addHandler(handler)
    try:
        logger_call(logger)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_logs_never_carry_a_key(canary_tenant):
    tenant = Tenant.objects.get(pk=canary_tenant.pk)

    def emit(logger):
        logger.warning("tenant %r secret %s", tenant, tenant.langfuse_secret_key)
        logger.warning("provider said: Invalid API Key provided: %s", CANARY)
        logger.warning("stripe said: Invalid API Key provided: sk_test_****abcd")
        try:
            raise RuntimeError(f"auth failed with {CANARY}")
        except RuntimeError:
            logger.exception("sync failed")

    output = _log_through_project_filter(emit)
    assert "sync failed" in output
    assert "RuntimeError" in output
    assert "canary" not in output
    assert "abcd" not in output


def test_production_start_fails_without_an_encryption_key(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("FIELD_ENCRYPTION_KEYS", "DEBUG")
    }
    env["DEBUG"] = "0"
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "FIELD_ENCRYPTION_KEYS must be set" in result.stderr


def test_admin_edits_the_scope_mapping_and_an_empty_box_means_the_defaults(
    client, superuser, canary_tenant
):
    client.force_login(superuser)

    _post_change(client, canary_tenant, scope_mapping='{"epic": ["metadata.ticket"]}')
    tenant = Tenant.objects.get(pk=canary_tenant.pk)
    assert tenant.scope_mapping == {"epic": ["metadata.ticket"]}
    entry = AuditLog.objects.filter(action="tenant.update").latest("id")
    assert entry.after["scope_mapping"] == {"epic": ["metadata.ticket"]}

    _post_change(client, canary_tenant, scope_mapping="")
    assert Tenant.objects.get(pk=canary_tenant.pk).scope_mapping == {}
