"""
Staff see only their tenants, everywhere in the billing admin: rows, filter
choices, facet counts (``?_facets=1``), date hierarchies and autocomplete.

Another tenant, "Zebra Holdings", has five rows of everything, each naming
"zebra" and dated 2019; the staff user's tenant has one of each, dated
2026. No page and no autocomplete answer may say "zebra", link to 2019, or
count more rows than the user's own.
"""

import re
from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from django.apps import apps
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import models
from django.urls import reverse

from billing.models import (
    AuditLog,
    CostSummary,
    ModelPrice,
    StripeReport,
    SyncCursor,
    SyncRun,
    Tenant,
    UsageAdjustment,
    UsageRecord,
)
from tests.factories import MembershipFactory, TenantFactory, UserFactory

pytestmark = pytest.mark.django_db

User = get_user_model()

THEIR_ROWS = 5
# Our staff user's tenant holds one row of each, and three memberships (one
# from ``_rows``, the user's and a colleague's): no facet may count more.
OUR_MOST = 3

CHANGELISTS = [
    "tenant",
    "membership",
    "auditlog",
    "usagerecord",
    "usageadjustment",
    "stripereport",
    "syncrun",
    "synccursor",
    "costsummary",
]


def _rows(tenant: Tenant, marker: str, count: int, year: int) -> None:
    """``count`` rows of every billing model in ``tenant``, each naming ``marker``."""
    at = datetime(year, 11, 20, 12, tzinfo=UTC)
    for i in range(count):
        MembershipFactory(tenant=tenant, user=UserFactory(username=f"{marker}-m{i}"))
        record = UsageRecord.objects.create(
            tenant=tenant,
            trace_id=f"{marker}-trace-{i}",
            trace_timestamp=at,
            last_activity_at=at,
            project_id=f"{marker}-project",
            status="failed" if i else "pending",
            content_hash=f"{marker}{i}",
        )
        UsageAdjustment.objects.create(
            tenant=tenant,
            usage_record=record,
            trace_timestamp=at,
            content_hash=f"{marker}{i}",
        )
        StripeReport.objects.create(
            tenant=tenant,
            identifier=f"{marker}-report-{i}",
            event_name=f"{marker}_usage",
            stripe_customer_id=f"cus_{marker}",
            unit=f"{marker}_unit",
            value=i,
            amount=i,
            day=date(year, 11, 20),
            timestamp=at,
            status="failed",
        )
        SyncRun.objects.create(
            tenant=tenant, kind="sync", started_at=at, error=f"{marker} error"
        )
        CostSummary.objects.create(
            tenant=tenant,
            scope_type="project",
            scope_id=f"{marker}-scope-{i}",
            period_start=at,
            period_end=at + timedelta(days=1),
            computed_at=at,
        )
        # The audit log is append-only and stamps its own time: travel there.
        with time_machine.travel(at, tick=False):
            AuditLog.objects.create(
                tenant=tenant,
                actor=UserFactory(username=f"{marker}-actor-{i}"),
                actor_kind="staff",
                action=f"{marker}.action",
                object_type="billing.tenant",
                object_id=f"{marker}-object",
            )
    SyncCursor.objects.create(tenant=tenant, watermark=at)


@pytest.fixture
def ours():
    tenant = TenantFactory(name="Koala Corp", slug="koala-corp")
    _rows(tenant, "koala", 1, 2026)
    return tenant


@pytest.fixture
def theirs():
    tenant = TenantFactory(
        name="Zebra Holdings", slug="zebra-holdings", stripe_customer_id="cus_zebra"
    )
    _rows(tenant, "zebra", THEIR_ROWS, 2019)
    return tenant


@pytest.fixture
def staff(client, ours, theirs):
    """A tenant admin of Koala Corp who may view users, logged in."""
    user = UserFactory(username="koala-staff")
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="billing"),
        Permission.objects.get(codename="view_user"),
    )
    MembershipFactory(tenant=ours, user=user, role="admin")
    MembershipFactory(tenant=ours, user=UserFactory(username="koala-colleague"))
    client.force_login(user)
    return user


def _facet_counts(html: str) -> list[int]:
    filters = re.search(r'<nav id="changelist-filter".*?</nav>', html, re.S)
    assert filters, "no filters on the page"
    return [int(n) for n in re.findall(r"\((\d+)\)", filters.group(0))]


@pytest.mark.parametrize("model", CHANGELISTS)
def test_a_changelist_shows_nothing_of_another_tenant(client, staff, model):
    response = client.get(
        reverse(f"admin:billing_{model}_changelist"), {"_facets": "1"}
    )

    assert response.status_code == 200
    html = response.content.decode()
    assert "koala" in html.lower()  # our rows are listed
    assert "zebra" not in html.lower()
    # The date hierarchy offers our dates only.
    assert "__year=2019" not in html
    if response.context["cl"].has_filters:
        assert max(_facet_counts(html), default=0) <= OUR_MOST


def test_facets_count_our_rows_only(client, staff):
    html = client.get(
        reverse("admin:billing_usagerecord_changelist"), {"_facets": "1"}
    ).content.decode()

    # Theirs: 1 pending and 4 failed; ours: 1 pending.
    assert "Pending (1)" in html
    assert "Failed (0)" in html


def test_the_audit_log_offers_our_actors_only(client, staff):
    response = client.get(reverse("admin:billing_auditlog_changelist"))

    [actors] = [
        spec for spec in response.context["cl"].filter_specs if spec.title == "actor"
    ]
    assert [name for _, name in actors.lookup_choices] == ["koala-actor-0"]


def _autocomplete_fields() -> list[tuple[str, str]]:
    """Every foreign key of a billing model that the autocomplete can answer."""
    found = []
    for model in apps.get_app_config("billing").get_models():
        for field in model._meta.get_fields():
            if not isinstance(field, models.ForeignKey):
                continue
            if field.remote_field.model is ModelPrice:
                continue  # platform data: the same prices for every tenant
            remote = admin.site._registry.get(field.remote_field.model)
            if remote is not None and remote.search_fields:
                found.append((model._meta.model_name, field.name))
    return found


AUTOCOMPLETE_FIELDS = _autocomplete_fields()


def test_the_autocomplete_list_covers_users_tenants_records_and_reports():
    remotes = {
        apps.get_model("billing", model)._meta.get_field(field).remote_field.model
        for model, field in AUTOCOMPLETE_FIELDS
    }
    assert remotes == {User, Tenant, UsageRecord, StripeReport}


@pytest.mark.parametrize(("model", "field"), AUTOCOMPLETE_FIELDS)
def test_autocomplete_answers_with_our_tenants_rows_only(client, staff, model, field):
    response = client.get(
        reverse("admin:autocomplete"),
        {"app_label": "billing", "model_name": model, "field_name": field},
    )

    assert response.status_code == 200
    texts = [result["text"] for result in response.json()["results"]]
    assert texts, "our own rows are offered"
    assert all("koala" in text.lower() for text in texts), texts


@pytest.mark.parametrize("term", ["zebra", "Zebra Holdings", "cus_zebra"])
def test_searching_the_autocomplete_for_another_tenant_finds_nothing(
    client, staff, term
):
    for model, field in AUTOCOMPLETE_FIELDS:
        response = client.get(
            reverse("admin:autocomplete"),
            {
                "app_label": "billing",
                "model_name": model,
                "field_name": field,
                "term": term,
            },
        )
        assert response.json()["results"] == [], (model, field)


def test_a_superuser_sees_every_tenant_in_the_autocomplete(client, ours, theirs):
    client.force_login(UserFactory(is_superuser=True))

    response = client.get(
        reverse("admin:autocomplete"),
        {"app_label": "billing", "model_name": "auditlog", "field_name": "tenant"},
    )

    texts = {result["text"] for result in response.json()["results"]}
    assert {"Koala Corp", "Zebra Holdings"} <= texts
