"""
"Export selected as CSV" (issue 12, item 6): streamed, explicit columns,
money as plain decimals named with the currency, ISO 8601 times, formulas
neutralised, scoped to the user's tenants and allowed for viewers.
"""

import csv
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.http import StreamingHttpResponse
from django.urls import reverse

from billing.admin.exports import csv_cell, plain_decimal
from billing.models import CostSummary, StripeReport
from tests.conftest import APP_ROLE
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

START = datetime(2026, 11, 20, tzinfo=UTC)
HOSTILE = [
    "=1+1",
    "+SUM(A1:A9)",
    "-2+3",
    "@cmd",
    "\t=evil",
    "\r=evil",
    '=HYPERLINK("http://evil","x")',
]


def summary(tenant, scope_id, cost="1.5", **fields) -> CostSummary:
    fields.setdefault("scope_type", "project")
    return CostSummary.objects.create(
        tenant=tenant,
        scope_id=scope_id,
        period_start=START,
        period_end=START + timedelta(days=1),
        trace_count=3,
        cost=Decimal(cost),
        computed_at=START + timedelta(days=1, hours=2),
        **fields,
    )


def report(tenant, identifier, **fields) -> StripeReport:
    return StripeReport.objects.create(
        tenant=tenant,
        identifier=identifier,
        event_name="llm_usage",
        stripe_customer_id="cus_1",
        unit="micro_usd",
        value=1500000,
        amount=Decimal("1500000.25"),
        day=date(2026, 11, 20),
        timestamp=START,
        **fields,
    )


@pytest.fixture
def viewer(tenant):
    user = UserFactory()
    user.user_permissions.add(
        *Permission.objects.filter(
            codename__in=["view_costsummary", "view_stripereport"]
        )
    )
    MembershipFactory(user=user, tenant=tenant, role="viewer")
    return user


def export(client, model, ids=(), *, select_across=False):
    data = {"action": "export_csv", "_selected_action": list(ids)}
    if select_across:
        data["select_across"] = "1"
    response = client.post(reverse(f"admin:billing_{model}_changelist"), data)
    assert isinstance(response, StreamingHttpResponse), response.status_code
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith("attachment; filename=")
    text = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(text)))


def offered(client, model) -> set[str]:
    response = client.get(reverse(f"admin:billing_{model}_changelist"))
    form = response.context["action_form"]
    return {value for value, _ in form.fields["action"].choices if value}


def test_a_viewer_is_offered_the_export_and_nothing_else(client, viewer):
    client.force_login(viewer)
    assert offered(client, "costsummary") == {"export_csv"}
    assert offered(client, "stripereport") == {"export_csv"}


def test_cost_summaries_export_with_their_columns(client, viewer, tenant):
    row = summary(tenant, "web", cost="1.2345")
    client.force_login(viewer)

    (exported,) = export(client, "costsummary", [row.pk])

    assert list(exported) == [
        "id",
        "tenant_id",
        "tenant",
        "scope_type",
        "project_id",
        "scope_id",
        "period_start",
        "period_end",
        "trace_count",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "cost_usd",
        "computed_at",
    ]
    assert exported["cost_usd"] == "1.2345"  # exact, not 1.2345000000
    assert exported["period_start"] == "2026-11-20T00:00:00+00:00"
    assert exported["computed_at"] == "2026-11-21T02:00:00+00:00"
    assert (exported["tenant"], exported["scope_id"]) == (tenant.name, "web")
    assert exported["trace_count"] == "3"


def test_the_export_keeps_to_the_users_tenants(client, viewer, tenant, other_tenant):
    mine = summary(tenant, "mine")
    theirs = summary(other_tenant, "theirs")
    client.force_login(viewer)

    everything = export(client, "costsummary", [mine.pk], select_across=True)
    assert [r["scope_id"] for r in everything] == ["mine"]

    # Naming another tenant's row exports nothing of it.
    picked = export(client, "costsummary", [mine.pk, theirs.pk])
    assert [r["scope_id"] for r in picked] == ["mine"]
    assert other_tenant.name not in str(picked)


def test_the_export_follows_the_changelist_filters(client, superuser, tenant):
    summary(tenant, "web")
    bot = summary(tenant, "bot", scope_type="agent", project_id="web")
    client.force_login(superuser)

    response = client.post(
        reverse("admin:billing_costsummary_changelist") + "?scope_type__exact=agent",
        {"action": "export_csv", "_selected_action": [bot.pk], "select_across": "1"},
    )

    text = b"".join(response.streaming_content).decode()
    assert [r["scope_id"] for r in csv.DictReader(io.StringIO(text))] == ["bot"]


def test_formulas_from_provider_data_are_neutralised(client, superuser, tenant):
    ids = [summary(tenant, value).pk for value in HOSTILE]
    failed = report(
        tenant,
        "r-1",
        status="failed",
        last_error="=cmd|' /C calc'!A0",
    )
    client.force_login(superuser)

    exported = export(client, "costsummary", ids)
    assert sorted(r["scope_id"] for r in exported) == sorted(
        "'" + value for value in HOSTILE
    )
    (stripe,) = export(client, "stripereport", [failed.pk])
    assert stripe["last_error"] == "'=cmd|' /C calc'!A0"
    # Numbers are ours, not text: they keep their sign and digits.
    assert stripe["amount_in_unit"] == "1500000.25"
    assert stripe["value"] == "1500000"
    assert stripe["day"] == "2026-11-20"
    assert stripe["sent_at"] == ""


def test_the_stream_reads_under_the_web_roles_row_level_security(
    client, viewer, tenant, other_tenant, as_app_role
):
    """
    The rows are read while the response streams, after the request's
    tenant transaction ended: the stream sets its own tenants, or RLS would
    hide every row from the web role.
    """
    mine = summary(tenant, "mine")
    summary(other_tenant, "theirs")
    client.force_login(viewer)
    as_app_role()

    exported = export(client, "costsummary", [mine.pk], select_across=True)

    assert [r["scope_id"] for r in exported] == ["mine"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        assert cursor.fetchone() == (APP_ROLE,)


def test_cells():
    assert csv_cell(None) == ""
    assert csv_cell(True) == "true"
    assert csv_cell(12) == 12
    assert csv_cell(Decimal("-0.5000000000")) == "-0.50"
    assert csv_cell(date(2026, 11, 20)) == "2026-11-20"
    assert csv_cell(datetime(2026, 11, 20, 9, 30, tzinfo=UTC)) == (
        "2026-11-20T09:30:00+00:00"
    )
    assert csv_cell("safe text") == "safe text"
    assert csv_cell("nul\x00byte") == "nul\ufffdbyte"
    assert csv_cell("a=b") == "a=b"  # only a leading formula character counts
    assert plain_decimal(Decimal("12")) == "12.00"
    assert plain_decimal(Decimal("0.0105000000")) == "0.0105"
    assert plain_decimal(Decimal("1E+3")) == "1000.00"
