"""
The operator's workspace (issue 12, items 4, 5 and 7): the anomaly page
explains itself, the review queue lists and filters what an operator needs,
related anomalies read as one incident, and the list costs a constant number
of queries. Anomalies are recorded through the real detection write path
(``anomalies_record``) over ledger rows and summaries.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from anomalies.admin.cost_anomalies import CostAnomalyAdmin
from anomalies.admin.paging import CappedPaginator
from anomalies.detectors import Finding
from anomalies.incidents import incidents_group
from anomalies.models import CostAnomaly
from anomalies.services import anomalies_record, anomaly_assign, anomaly_resolve
from billing.audit import Actor
from billing.models import Membership, Tenant, UsageRecord
from tests.anomalies.conftest import TODAY
from tests.factories import (
    TenantFactory,
    UserFactory,
    staff_with_role,
)

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:anomalies_costanomaly_changelist"
DAY = TODAY.date()


def trace(tenant, trace_id, cost, *, agent="bot", user="ann", project="web"):
    now = timezone.now()
    return UsageRecord.objects.create(
        tenant=tenant,
        trace_id=trace_id,
        trace_timestamp=TODAY + timedelta(hours=3),
        last_activity_at=now,
        project_id=project,
        agent_id=agent,
        user_id=user,
        cost=Decimal(cost),
        content_hash="h",
    )


@pytest.fixture
def incident(tenant, summary):
    """One runaway trace flagged three times: agent, user and project."""
    for n in range(28):
        summary(
            tenant,
            "agent",
            "bot",
            "2.00",
            day=TODAY - timedelta(days=n + 1),
            project="web",
        )
    summary(tenant, "agent", "bot", "412.50", project="web")
    for peer, cost in [("helper", "3.00"), ("search", "2.00"), ("triage", "1.00")]:
        summary(tenant, "agent", peer, cost, project="web")
    trace(tenant, "runaway-trace", "400.00")
    trace(tenant, "ordinary-trace", "12.50")
    observed = Decimal("412.5")
    findings = [
        Finding("high_cost", tenant.pk, "agent", "web", "bot", None, observed, 2),
        Finding(
            "spike_vs_baseline", tenant.pk, "agent", "web", "bot", None, observed, 2
        ),
        Finding("high_cost", tenant.pk, "user", "", "ann", None, observed, 5),
    ]
    anomalies_record(day=DAY, findings=findings, actor=Actor.job("nightly"))
    return {(a.anomaly_type, a.scope_type): a for a in CostAnomaly.objects.all()}


def test_related_anomalies_share_the_runaway_trace_as_their_cause(incident):
    assert {a.cause for a in incident.values()} == {"trace:runaway-trace"}
    assert len({a.incident_id for a in incident.values()}) == 1


def test_the_change_page_explains_the_rule_and_shows_the_evidence(
    client, tenant, incident
):
    anomaly = incident[("high_cost", "agent")]
    operator = staff_with_role(tenant, Membership.Role.OPERATOR)
    anomaly_assign(
        anomaly_id=anomaly.pk, actor=Actor.staff(operator), assignee=operator
    )
    anomaly_resolve(
        anomaly_id=anomaly.pk,
        actor=Actor.staff(operator),
        reason="false_positive",
        note="load test",
    )
    client.force_login(operator)

    response = client.get(
        reverse("admin:anomalies_costanomaly_change", args=[anomaly.pk])
    )

    page = response.content.decode()
    assert response.status_code == 200
    # Money as money, and what "expected" is made of: the named peers.
    assert "$412.50" in page and "$2.00" in page
    assert (
        "The median daily cost of this agent and the other agents of project web "
        "that day (3 peers)" in page
    )
    assert "helper ($3.00), search ($2.00), triage ($1.00)" in page
    # The chart: 28 days of the scope, the anomaly's day marked.
    chart = re.search(
        r'<div class="module evidence" id="anomaly-chart">(.*?)</div>', page, re.S
    )
    assert chart and "<svg" in chart.group(1)
    assert f"{DAY:%Y-%m-%d}: $412.50" in chart.group(1)
    assert f"{DAY - timedelta(days=27):%Y-%m-%d}: $2.00" in chart.group(1)
    # Top traces link to their ledger rows.
    record = UsageRecord.objects.get(trace_id="runaway-trace")
    url = reverse("admin:billing_usagerecord_change", args=[record.pk])
    assert f'<a href="{url}">runaway-trace</a>' in page
    # Its incident, the other two anomalies of it, and the audit timeline in
    # order.
    incident_url = reverse(
        "admin:anomalies_incident_change", args=[anomaly.incident_id]
    )
    assert re.search(
        rf'Part of incident: <a href="{incident_url}">trace runaway-trace: [^<]+</a>'
        r" \(3 anomalies\)",
        page,
    )
    related = re.search(r'id="related-anomalies">(.*?)</div>', page, re.S).group(1)
    assert "Spike vs own baseline: agent web/bot" in related
    assert "High cost vs peers: user ann" in related
    timeline = re.findall(r"<strong>(.*?)</strong> by (\S+)", page)
    assert timeline == [
        ("Detected", "job"),
        ("Assigned", operator.username),
        ("Resolved", operator.username),
    ]
    assert "reason: False positive" in page and "load test" in page


def test_the_baseline_page_says_how_many_days_its_median_covers(
    client, superuser, incident
):
    anomaly = incident[("spike_vs_baseline", "agent")]
    client.force_login(superuser)

    page = client.get(
        reverse("admin:anomalies_costanomaly_change", args=[anomaly.pk])
    ).content.decode()

    assert (
        "median of this agent&#x27;s daily cost over the 28 days with cost "
        "in the 28 days before" in page
    )


def test_the_queue_lists_open_first_most_money_first(client, superuser, tenant):
    def make(scope, observed, status="open"):
        anomaly = CostAnomaly.objects.create(
            tenant=tenant, scope_type="agent", project_id="web", scope_id=scope,
            period_start=TODAY, period_end=TODAY + timedelta(days=1),
            anomaly_type="high_cost", observed=Decimal(observed), expected=Decimal("1"),
            ratio=Decimal(observed), first_detected_at=TODAY, last_detected_at=TODAY,
        )  # fmt: skip
        if status == "resolved":
            anomaly_resolve(anomaly_id=anomaly.pk, actor=Actor.job(), reason="fixed")
        return anomaly

    big_done = make("big-done", "900", status="resolved")
    small = make("small", "5")
    big = make("big", "300")
    client.force_login(superuser)

    response = client.get(reverse(CHANGELIST))

    assert [a.pk for a in response.context["cl"].result_list] == [
        big.pk,
        small.pk,
        big_done.pk,
    ]
    row = response.content.decode()
    assert "$300.00 vs $1.00 (300.0x)" in row and "+$299.00" in row


def test_one_line_per_incident_counts_its_relatives(client, superuser, incident):
    client.force_login(superuser)

    grouped = client.get(reverse(CHANGELIST), {"group": "incident"})

    rows = grouped.context["cl"].result_list
    assert len(rows) == 1
    # The lead is the one the queue puts first: the most money at stake.
    assert rows[0] == max(incident.values(), key=lambda a: (a.impact, a.pk))
    # The "+2" link opens the incident, which lists all three.
    link = re.search(
        r'<a href="([^"]+)" title="[^"]*">\+2</a>', grouped.content.decode()
    ).group(1)
    assert link == reverse(
        "admin:anomalies_incident_change", args=[rows[0].incident_id]
    )
    whole = client.get(link)
    assert {m["anomaly"].pk for m in whole.context["members"]} == {
        a.pk for a in incident.values()
    }


def test_filters_mine_date_range_and_tenant_name_search(client, tenant, incident):
    operator = staff_with_role(tenant, Membership.Role.OPERATOR)
    mine = incident[("high_cost", "user")]
    anomaly_assign(anomaly_id=mine.pk, actor=Actor.staff(operator), assignee=operator)
    client.force_login(operator)

    def listed(**params):
        response = client.get(reverse(CHANGELIST), params)
        assert response.status_code == 200
        return {a.pk for a in response.context["cl"].result_list}

    assert listed(assignee="mine") == {mine.pk}
    day = f"{DAY:%Y-%m-%d}"
    assert len(listed(period_start__range__gte=day, period_start__range__lte=day)) == 3
    later = f"{DAY + timedelta(days=1):%Y-%m-%d}"
    assert listed(period_start__range__gte=later) == set()
    assert len(listed(q=tenant.name)) == 3
    assert listed(q="ann") == {mine.pk}
    assert len(listed(status__exact="open", anomaly_type__exact="high_cost")) == 2


def test_staff_of_one_tenant_see_only_their_tenant_and_colleagues(
    client, tenant, incident
):
    other = TenantFactory(name="Initech Secret")
    stranger = staff_with_role(other, Membership.Role.OPERATOR, username="stranger")
    staff_with_role(tenant, Membership.Role.OPERATOR, username="colleague")
    staff_with_role(tenant, Membership.Role.VIEWER, username="onlooker")
    operator = staff_with_role(tenant, Membership.Role.OPERATOR)
    client.force_login(operator)

    page = client.get(reverse(CHANGELIST), {"_facets": "1"}).content.decode()
    anomaly = incident[("high_cost", "agent")]
    review = client.get(
        reverse("admin:anomalies_costanomaly_review", args=[anomaly.pk, "assign"])
    )

    assert "Initech Secret" not in page and tenant.name in page
    choices = [str(u) for u in review.context["form"].fields["assignee"].queryset]
    assert "colleague" in choices and operator.username in choices
    assert "onlooker" not in choices and stranger.username not in choices


def test_assigning_to_someone_outside_the_tenant_is_refused(client, tenant, incident):
    other = TenantFactory()
    stranger = staff_with_role(other, Membership.Role.OPERATOR)
    operator = staff_with_role(tenant, Membership.Role.OPERATOR)
    anomaly = incident[("high_cost", "agent")]
    client.force_login(operator)

    response = client.post(
        reverse("admin:anomalies_costanomaly_review", args=[anomaly.pk, "assign"]),
        {"assignee": stranger.pk, "post": "yes", "action": "assign",
         "_selected_action": [anomaly.pk]},
    )  # fmt: skip

    anomaly.refresh_from_db()
    assert response.status_code == 200  # the form again, with its error
    assert response.context["form"].errors["assignee"]
    assert anomaly.assignee is None


def _anomalies(tenant, n: int) -> None:
    user = UserFactory()
    CostAnomaly.objects.bulk_create(
        CostAnomaly(
            tenant=tenant, scope_type="agent", project_id="web", scope_id=f"a{i}",
            period_start=TODAY - timedelta(days=i % 30),
            period_end=TODAY + timedelta(days=1), anomaly_type="high_cost",
            observed=Decimal(i + 5), expected=Decimal("1"), ratio=Decimal(i + 5),
            cause=f"trace:t{i % 7}", assignee=user if i % 2 else None,
            first_detected_at=TODAY, last_detected_at=TODAY,
        )
        for i in range(n)
    )  # fmt: skip
    # As detection leaves them: the agents of a project's day are one incident.
    days = CostAnomaly.objects.filter(tenant=tenant).values_list(
        "period_start", flat=True
    )
    for day in set(days):
        incidents_group(period_start=day, tenant_ids=[tenant.pk])


@pytest.mark.parametrize(
    "params",
    [{}, {"group": "incident"}, {"status__exact": "open", "assignee": "someone"}],
)
@pytest.mark.parametrize("who", ["superuser", "operator"])
def test_the_changelist_runs_the_same_queries_for_10_and_100_rows(
    client, tenant, superuser, who, params
):
    user = (
        superuser
        if who == "superuser"
        else staff_with_role(tenant, Membership.Role.OPERATOR)
    )
    client.force_login(user)

    def queries(n: int) -> int:
        CostAnomaly.objects.all().delete()
        _anomalies(tenant, n)
        with CaptureQueriesContext(connection) as captured:
            response = client.get(reverse(CHANGELIST), params)
        assert response.status_code == 200
        assert len(response.context["cl"].result_list) == min(n, 100) or params
        return len(captured)

    assert queries(10) == queries(100)


def test_a_viewer_exports_the_listed_anomalies_of_their_tenant(
    client, tenant, incident
):
    theirs = TenantFactory(name="Initech Secret")
    CostAnomaly.objects.create(
        tenant=theirs, scope_type="user", scope_id="=HYPERLINK(evil)",
        period_start=TODAY, period_end=TODAY + timedelta(days=1),
        anomaly_type="high_cost", observed=Decimal(9), expected=Decimal(1),
        first_detected_at=TODAY, last_detected_at=TODAY,
    )  # fmt: skip
    client.force_login(staff_with_role(tenant, Membership.Role.VIEWER))
    ids = list(CostAnomaly.objects.values_list("pk", flat=True))

    response = client.post(
        reverse(CHANGELIST), {"action": "export_csv", "_selected_action": ids}
    )

    lines = b"".join(response.streaming_content).decode().splitlines()
    assert lines[0].startswith("id,tenant,day,anomaly_type,scope_type")
    assert len(lines) == 4  # the header and the tenant's three anomalies
    assert "Initech" not in "".join(lines) and "HYPERLINK" not in "".join(lines)
    agent = next(line for line in lines if ",agent,web,bot," in line)
    assert ",412.50,2.00,206.25,410.50,open," in agent


def test_history_is_the_audit_log_of_the_anomaly(client, superuser, incident):
    anomaly = incident[("high_cost", "agent")]
    client.force_login(superuser)

    response = client.get(
        reverse("admin:anomalies_costanomaly_history", args=[anomaly.pk]), follow=True
    )

    entries = response.context["cl"].result_list
    assert [(e.action, e.object_id) for e in entries] == [
        ("anomaly.detect", str(anomaly.pk))
    ]


def test_the_queue_counts_no_further_than_its_cap(
    client, superuser, tenant, monkeypatch
):
    monkeypatch.setattr(CappedPaginator, "cap", 5)
    monkeypatch.setattr(CostAnomalyAdmin, "list_per_page", 2)
    Tenant.objects.filter(pk=tenant.pk).update(name="Acme")  # no digit in it
    _anomalies(tenant, 12)
    client.force_login(superuser)

    everything = client.get(reverse(CHANGELIST)).content.decode()
    few = client.get(reverse(CHANGELIST), {"q": "1"}).content.decode()
    one = client.get(reverse(CHANGELIST), {"q": "a1"}).content.decode()

    assert "more than 5 cost anomalies: filter to narrow them down" in everything
    assert "Select all matching cost anomalies (more than 5)" in everything
    # a1, a10 and a11: counted exactly below the cap. A whole id is found
    # as itself, not as the start of others.
    assert "3 results" in few and "3 cost anomalies" in few
    assert "1 result" in one


def test_search_keeps_the_filters_and_names_only_the_users_tenants(
    client, tenant, incident
):
    TenantFactory(name=f"{tenant.name} Secret Twin")
    operator = staff_with_role(tenant, Membership.Role.OPERATOR)
    client.force_login(operator)

    def listed(**params):
        response = client.get(reverse(CHANGELIST), params)
        return {
            (a.anomaly_type, a.scope_type) for a in response.context["cl"].result_list
        }

    assert listed(q="bo") == {("high_cost", "agent"), ("spike_vs_baseline", "agent")}
    assert listed(q="WE", anomaly_type__exact="high_cost") == {("high_cost", "agent")}
    assert len(listed(q=tenant.name, scope_type__exact="user")) == 1
    assert listed(q="Secret Twin") == set()


@pytest.mark.parametrize("value", ["%C2%B2", "abc", "-1"])
def test_a_tenant_filter_value_that_is_not_an_id_is_an_error_not_a_crash(
    client, superuser, incident, value
):
    client.force_login(superuser)

    response = client.get(f"{reverse(CHANGELIST)}?tenant={value}")

    # Django's own answer to bad lookup parameters: the list, flagged ?e=1.
    assert response.status_code == 302 and response["Location"].endswith("?e=1")


def test_a_colleague_who_lost_the_reviewer_role_is_refused_by_the_form(
    client, tenant, incident
):
    operator = staff_with_role(tenant, Membership.Role.OPERATOR)
    leaving = staff_with_role(tenant, Membership.Role.OPERATOR)
    anomaly = incident[("high_cost", "agent")]
    client.force_login(operator)
    Membership.objects.filter(user=leaving).update(role=Membership.Role.VIEWER)

    response = client.post(
        reverse(CHANGELIST),
        {"action": "assign", "_selected_action": [anomaly.pk], "post": "yes",
         "assignee": leaving.pk},
        follow=True,
    )  # fmt: skip

    anomaly.refresh_from_db()
    assert response.status_code == 200 and anomaly.assignee is None
    assert response.context["form"].errors["assignee"]
