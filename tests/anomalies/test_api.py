"""The cost anomaly and incident endpoints: filters, paging, roles, isolation."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection

from anomalies.detectors import Finding
from anomalies.models import CostAnomaly, Incident
from anomalies.services import anomalies_record, anomaly_resolve
from billing.app_role import app_role_ensure
from billing.audit import Actor
from billing.models import AuditLog, Tenant
from tests.anomalies.conftest import TODAY
from tests.conftest import APP_ROLE

pytestmark = pytest.mark.django_db

DAY = TODAY.date()


def detect(tenant, *specs, day=DAY):
    """specs: (kind, scope_type, project, scope, observed, expected, top trace)."""
    findings = [
        Finding(
            kind, tenant.pk, scope_type, project, scope, None, Decimal(o), Decimal(e)
        )
        for kind, scope_type, project, scope, o, e in specs
    ]
    anomalies_record(day=day, findings=findings, actor=Actor.job())
    return CostAnomaly.objects.for_tenant(tenant).order_by("pk")


def high(scope, observed="40", *, scope_type="agent", project="web"):
    return ("high_cost", scope_type, project, scope, observed, "4")


@pytest.fixture
def anomalies(tenant):
    """Three days of a tenant's anomalies: 2 agents a day, and a project."""
    for back in range(3):
        detect(
            tenant,
            high("bot"),
            high("crawler", "30", project="api"),
            ("spike_vs_baseline", "project", "", "web", "90", "9"),
            day=DAY - timedelta(days=back),
        )
    return CostAnomaly.objects.for_tenant(tenant)


def ids(response):
    return [row["id"] for row in response.json()["results"]]


def test_the_list_is_the_token_s_tenant_s_newest_day_first(
    api, tenant, other_tenant, anomalies, make_token
):
    theirs = detect(other_tenant, high("bot")).get()
    response = api("get", "/cost-anomalies", make_token(tenant))
    assert response.status_code == 200
    rows = response.json()["results"]
    assert len(rows) == 9 and theirs.pk not in ids(response)
    days = [row["period_start"] for row in rows]
    assert days == sorted(days, reverse=True)
    first = anomalies.get(pk=rows[0]["id"])
    assert rows[0]["observed"] == str(first.observed)
    assert rows[0]["impact"] == str(first.impact)
    assert rows[0]["currency"] == "usd"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("anomaly_type=spike_vs_baseline", 3),
        ("scope_type=agent", 6),
        ("scope_id=crawler", 3),
        ("project_id=api", 3),
        ("status=open", 9),
        ("status=resolved", 0),
        (f"date_from={DAY}", 3),
        (f"date_to={DAY - timedelta(days=1)}", 6),
        (f"date_from={DAY - timedelta(days=1)}&date_to={DAY - timedelta(days=1)}", 3),
        ("scope_type=agent&project_id=web&date_from=2026-11-19", 2),
    ],
)
def test_filters(api, tenant, anomalies, make_token, query, expected):
    response = api("get", f"/cost-anomalies?{query}", make_token(tenant))
    assert response.status_code == 200
    assert len(response.json()["results"]) == expected


def test_pages_follow_next_links_without_repeats_or_gaps(
    api, client, tenant, anomalies, make_token
):
    token = make_token(tenant)
    response = api("get", "/cost-anomalies?limit=4&scope_type=agent", token)
    seen = ids(response)
    next_url = response.json()["next"]
    assert next_url.startswith("http://testserver/api/v1/cost-anomalies?")
    assert "scope_type=agent" in next_url  # the filters carry over
    # A new anomaly detected between two pages lands on no later page.
    detect(tenant, high("late"))
    while next_url:
        response = client.get(next_url, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
        seen += ids(response)
        next_url = response.json()["next"]
    expected = anomalies.filter(scope_type="agent").exclude(scope_id="late")
    assert sorted(seen) == sorted(expected.values_list("pk", flat=True))
    assert len(seen) == len(set(seen)) == 6


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("statuss=open", "query.statuss"),
        ("status=closed", "query.status"),
        ("anomaly_type=cheap", "query.anomaly_type"),
        ("scope_type=team", "query.scope_type"),
        ("date_from=2026-13-01", "query.date_from"),
        ("date_from=yesterday", "query.date_from"),
        ("date_to=0", "query.date_to"),  # pydantic alone reads it as 1970
        ("date_from=2026-11-20T00:00:00Z", "query.date_from"),
        ("date_from=2026-11-20&date_to=2026-11-19", "query.date_to"),
        ("limit=201", "query.limit"),
        ("limit=0", "query.limit"),
        ("cursor=not-a-cursor", "query.cursor"),
        ("scope_id=a%00b", "query.scope_id"),
    ],
)
def test_bad_filters_are_a_400_naming_the_field(
    api, tenant, anomalies, make_token, query, field
):
    response = api("get", f"/cost-anomalies?{query}", make_token(tenant))
    assert response.status_code == 400
    body = response.json()
    assert body["detail"] == "Invalid request."
    assert field in [error["field"] for error in body["errors"]]


def test_a_viewer_may_not_review_whatever_the_body(api, tenant, anomalies, make_token):
    # The role is checked before the input: a viewer learns nothing more.
    response = api(
        "patch",
        f"/cost-anomalies/{anomalies.first().pk}",
        make_token(tenant, "viewer"),
        data="{not json",
        content_type="application/json",
    )
    assert response.status_code == 403


def test_a_viewer_reads_but_may_not_review(api, tenant, anomalies, make_token):
    anomaly = anomalies.first()
    token = make_token(tenant, "viewer")
    assert api("get", f"/cost-anomalies/{anomaly.pk}", token).status_code == 200
    response = api(
        "patch", f"/cost-anomalies/{anomaly.pk}", token, json={"status": "acknowledged"}
    )
    assert response.status_code == 403
    assert "operator" in response.json()["detail"]
    anomaly.refresh_from_db()
    assert anomaly.status == "open"


def test_resolve_goes_through_the_service_and_audits_the_token(
    api, tenant, anomalies, make_token
):
    anomaly = anomalies.first()
    token = make_token(tenant, "operator", name="pager")
    response = api(
        "patch",
        f"/cost-anomalies/{anomaly.pk}",
        token,
        json={"status": "resolved", "resolution_reason": "expected", "note": "launch"},
        headers={"X-Request-Id": "req-7"},
    )
    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["resolution_reason"]) == (
        "resolved",
        "expected",
    )
    anomaly.refresh_from_db()
    assert (anomaly.status, anomaly.resolution_note) == ("resolved", "launch")
    entry = AuditLog.objects.get(action="anomaly.resolve", object_id=str(anomaly.pk))
    assert (entry.actor_kind, entry.actor, entry.api_token.name) == (
        "api",
        None,
        "pager",
    )
    assert (entry.before["status"], entry.after["status"], entry.note) == (
        "open",
        "resolved",
        "launch",
    )


def test_acknowledge_and_reopen(api, tenant, anomalies, make_token):
    anomaly = anomalies.first()
    token = make_token(tenant, "admin")
    path = f"/cost-anomalies/{anomaly.pk}"
    acknowledged = api("patch", path, token, json={"status": "acknowledged"})
    assert acknowledged.json()["status"] == "acknowledged"
    anomaly_resolve(anomaly_id=anomaly.pk, actor=Actor.system(), reason="fixed")
    reopened = api("patch", path, token, json={"status": "open", "note": "again"})
    assert reopened.status_code == 200
    anomaly.refresh_from_db()
    assert (anomaly.status, anomaly.resolution_reason) == ("open", "")
    actions = AuditLog.objects.filter(object_id=str(anomaly.pk)).values_list(
        "action", flat=True
    )
    assert {"anomaly.acknowledge", "anomaly.reopen"} <= set(actions)


def test_an_invalid_transition_is_a_409_and_changes_nothing(
    api, tenant, anomalies, make_token
):
    anomaly = anomalies.first()
    response = api(
        "patch",
        f"/cost-anomalies/{anomaly.pk}",
        make_token(tenant, "operator"),
        json={"status": "open"},
    )
    assert response.status_code == 409
    assert response.json()["detail"] == "Cannot reopen an anomaly that is open."
    assert not AuditLog.objects.filter(action="anomaly.reopen").exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "resolved"}, "body.resolution_reason"),  # required
        (
            {"status": "acknowledged", "resolution_reason": "fixed"},
            "body.resolution_reason",
        ),
        ({"status": "done"}, "body.status"),
        (
            {"status": "resolved", "resolution_reason": "bored"},
            "body.resolution_reason",
        ),
        ({"status": "acknowledged", "assignee": 1}, "body.assignee"),
        ({"status": "acknowledged", "note": "x" * 2001}, "body.note"),
        ({}, "body.status"),
    ],
)
def test_bad_review_bodies_are_a_400_and_change_nothing(
    api, tenant, anomalies, make_token, body, field
):
    anomaly = anomalies.first()
    response = api(
        "patch",
        f"/cost-anomalies/{anomaly.pk}",
        make_token(tenant, "operator"),
        json=body,
    )
    assert response.status_code == 400
    assert field in [error["field"] for error in response.json()["errors"]]
    anomaly.refresh_from_db()
    assert anomaly.status == "open"


def test_malformed_json_is_a_400(api, tenant, anomalies, make_token):
    anomaly = anomalies.first()
    response = api(
        "patch",
        f"/cost-anomalies/{anomaly.pk}",
        make_token(tenant, "operator"),
        data='{"status": "resol',
        content_type="application/json",
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "body"


def test_another_tenant_s_anomaly_is_a_404(api, tenant, other_tenant, make_token):
    theirs = detect(other_tenant, high("bot")).get()
    token = make_token(tenant, "admin")
    for method, kwargs in [
        ("get", {}),
        ("patch", {"json": {"status": "acknowledged"}}),
    ]:
        response = api(method, f"/cost-anomalies/{theirs.pk}", token, **kwargs)
        assert response.status_code == 404
        assert response.json()["detail"] == "Not found."
    theirs.refresh_from_db()
    assert theirs.status == "open"


@pytest.mark.django_db(transaction=True)
def test_as_the_web_role_outside_any_transaction_the_token_s_tenant_only(
    api, tenant, other_tenant, make_token, empty_cache
):
    # The production path: API requests run in no transaction, as a role
    # that cannot lift row-level security; each view scopes its own work.
    mine = detect(tenant, high("bot")).get()
    theirs = detect(other_tenant, high("bot")).get()
    token = make_token(tenant, "operator")
    app_role_ensure(role=APP_ROLE)
    with connection.cursor() as cursor:
        cursor.execute(f"SET ROLE {APP_ROLE}")
    try:
        assert not connection.in_atomic_block
        assert ids(api("get", "/cost-anomalies", token)) == [mine.pk]
        assert api("get", f"/cost-anomalies/{theirs.pk}", token).status_code == 404
        resolved = api(
            "patch",
            f"/cost-anomalies/{mine.pk}",
            token,
            json={"status": "resolved", "resolution_reason": "fixed"},
        )
        assert resolved.status_code == 200
        assert api("get", "/usage?period=2026-11", token).status_code == 200
        # Outside a view's scope the role sees no tenant's rows at all.
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM anomalies_costanomaly")
            assert cursor.fetchone() == (0,)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET ROLE")
    entry = AuditLog.objects.get(action="anomaly.resolve")
    assert (entry.actor_kind, entry.object_id) == ("api", str(mine.pk))


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "Authentication credentials were not provided"),
        ("Basic dXNlcjpwYXNz", "Authentication credentials were not provided"),
        ("Bearer nonsense", "Invalid or revoked API token."),
        ("Bearer lbt_99999999999999999999_x", "Invalid or revoked API token."),
    ],
)
def test_missing_or_bad_credentials_are_a_401(client, tenant, header, message):
    headers = {"Authorization": header} if header else {}
    response = client.get("/api/v1/cost-anomalies", headers=headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert response.json()["detail"].startswith(message)


def test_a_token_claiming_another_tenant_is_refused(
    api, tenant, other_tenant, make_token
):
    detect(other_tenant, high("bot"))
    raw = make_token(tenant)
    secret = raw.split("_", 2)[2]
    forged = f"lbt_{other_tenant.pk}_{secret}"
    assert api("get", "/cost-anomalies", forged).status_code == 401


def test_a_suspended_tenant_s_token_is_a_403(api, tenant, anomalies, make_token):
    token = make_token(tenant)
    Tenant.objects.filter(pk=tenant.pk).update(status=Tenant.Status.SUSPENDED)
    response = api("get", "/cost-anomalies", token)
    assert response.status_code == 403
    assert response.json()["detail"] == "The tenant of this token is suspended."


# Incidents: listed and reviewed the same way, each member audited.


@pytest.fixture
def incident(tenant):
    # One runaway trace flags its agent and its project: one incident.
    findings = [
        Finding(
            "high_cost", tenant.pk, "agent", "web", "bot", None, Decimal(40), Decimal(4)
        ),
        Finding(
            "spike_vs_baseline",
            tenant.pk,
            "project",
            "",
            "web",
            None,
            Decimal(90),
            Decimal(9),
        ),
    ]
    anomalies_record(day=DAY, findings=findings, actor=Actor.job())
    return Incident.objects.for_tenant(tenant).get()


def test_incidents_are_listed_with_their_members(api, tenant, incident, make_token):
    response = api("get", "/incidents?status=open", make_token(tenant))
    assert response.status_code == 200
    [row] = response.json()["results"]
    members = CostAnomaly.objects.filter(incident=incident)
    assert row["id"] == incident.pk
    assert row["anomaly_ids"] == sorted(members.values_list("pk", flat=True))
    assert row["anomaly_count"] == 2


def test_resolving_an_incident_resolves_and_audits_every_member(
    api, tenant, incident, make_token
):
    response = api(
        "patch",
        f"/incidents/{incident.pk}",
        make_token(tenant, "operator"),
        json={"status": "resolved", "resolution_reason": "fixed"},
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["incident"]["status"] == "resolved"
    assert len(body["changed"]) == 2 and body["unchanged"] == []
    assert set(
        CostAnomaly.objects.filter(incident=incident).values_list("status", flat=True)
    ) == {"resolved"}
    kinds = AuditLog.objects.filter(action__endswith=".resolve").values_list(
        "action", "actor_kind"
    )
    assert sorted(kinds) == [
        ("anomaly.resolve", "api"),
        ("anomaly.resolve", "api"),
        ("incident.resolve", "api"),
    ]
    again = api(
        "patch",
        f"/incidents/{incident.pk}",
        make_token(tenant, "operator"),
        json={"status": "acknowledged"},
    )
    assert again.status_code == 409


def test_another_tenant_s_incident_is_a_404(
    api, other_tenant, tenant, incident, make_token
):
    token = make_token(other_tenant, "admin")
    assert api("get", f"/incidents/{incident.pk}", token).status_code == 404
    response = api(
        "patch", f"/incidents/{incident.pk}", token, json={"status": "acknowledged"}
    )
    assert response.status_code == 404
    assert api("get", "/incidents", token).json()["results"] == []


def test_decimals_are_plain_strings_even_when_zero(api, tenant, make_token):
    # Missing data observes nothing: str(Decimal) would say "0E-10".
    anomaly = detect(tenant, ("missing_data", "agent", "web", "bot", "0", "12.5")).get()
    response = api("get", f"/cost-anomalies/{anomaly.pk}", make_token(tenant))
    body = response.json()
    assert (body["observed"], body["expected"], body["ratio"]) == (
        "0.0000000000",
        "12.5000000000",
        "0.000000",
    )
