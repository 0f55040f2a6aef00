"""
The incident admin, through HTTP as each role would use it: anomalies that
share a cause are one incident, listed before the anomalies and reviewed
once; its actions change every member through the services and the audit
log.

Incidents are made as detection makes them: anomaly rows, then
``incidents_group`` over their day. Real Postgres, Django's test client, the
real services; no mocks.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from anomalies.incidents import incidents_group
from anomalies.models import CostAnomaly, Incident, ResolutionReason
from anomalies.services import anomaly_resolve, incident_resolve
from billing.audit import Actor
from billing.models import AuditLog, Membership
from tests.anomalies.conftest import TODAY
from tests.factories import (
    MembershipFactory,
    TenantFactory,
    staff_with_role,
)
from tests.races import race_on_row

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:anomalies_incident_changelist"
ANOMALIES = "admin:anomalies_costanomaly_changelist"
ROLES = ["viewer", "operator", "admin", "superuser", "other_tenant_operator"]
MAY_REVIEW = {"operator", "admin", "superuser"}
ACTIONS = ["acknowledge", "resolve", "reopen"]
CONFIRM = {
    "acknowledge": {"note": "looking"},
    "resolve": {"reason": "false_positive", "note": "load test"},
    "reopen": {"note": "still happening"},
}
STARTS_FROM = {"acknowledge": "open", "resolve": "open", "reopen": "resolved"}
ENDS_AS = {"acknowledge": "acknowledged", "resolve": "resolved", "reopen": "open"}


def anomaly(
    tenant,
    scope,
    *,
    scope_type="agent",
    project="web",
    anomaly_type="high_cost",
    cause="",
    observed="12.50",
    expected="2.50",
    day=TODAY,
) -> CostAnomaly:
    observed, expected = Decimal(observed), Decimal(expected)
    return CostAnomaly.objects.create(
        tenant=tenant,
        scope_type=scope_type,
        project_id=project,
        scope_id=scope,
        period_start=day,
        period_end=day + timedelta(days=1),
        anomaly_type=anomaly_type,
        observed=observed,
        expected=expected,
        ratio=observed / expected if expected else None,
        cause=cause,
        first_detected_at=timezone.now(),
        last_detected_at=timezone.now(),
    )


def grouped(*anomalies: CostAnomaly) -> Incident:
    """Group the anomalies' day as detection does; the first one's incident."""
    first = anomalies[0]
    incidents_group(period_start=first.period_start, tenant_ids=[first.tenant_id])
    return Incident.objects.get(anomalies=first)


def runaway(tenant, *, trace="runaway-trace", project="web", day=TODAY) -> Incident:
    """
    One runaway trace flagged four times: its agent by the cohort, baseline
    and expensive-trace rules, and its user by the cohort rule.
    """
    cause = f"trace:{trace}"
    members = [
        anomaly(tenant, "bot", project=project, cause=cause, observed="412.50",
                expected="2.50", day=day),
        anomaly(tenant, "bot", project=project, anomaly_type="spike_vs_baseline",
                cause=cause, observed="412.50", expected="3.00", day=day),
        anomaly(tenant, "bot", project=project, anomaly_type="expensive_trace",
                cause=cause, observed="400.00", expected="1.50", day=day),
        anomaly(tenant, f"ann-{project}", scope_type="user", project="",
                cause=cause, observed="402.00", expected="4.00", day=day),
    ]  # fmt: skip
    return grouped(*members)


@pytest.fixture
def login(client, tenant, other_tenant, superuser):
    """Log the client in as one of ROLES, relative to ``tenant``."""

    def as_role(role):
        if role == "superuser":
            user = superuser
        elif role == "other_tenant_operator":
            user = staff_with_role(other_tenant, Membership.Role.OPERATOR)
        else:
            user = staff_with_role(tenant, role)
        client.force_login(user)
        return user

    return as_role


def post_action(client, action, incidents, **data):
    return client.post(
        reverse(CHANGELIST),
        {"action": action, "_selected_action": [i.pk for i in incidents], **data},
    )


def confirm(client, action, incidents, follow=True, **data):
    """The second POST: the one the intermediate page sends."""
    return client.post(
        reverse(CHANGELIST),
        {
            "action": action,
            "_selected_action": [i.pk for i in incidents],
            **CONFIRM[action],
            **data,
            "post": "yes",
        },
        follow=follow,
    )


def message_texts(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def statuses(incident: Incident) -> set[str]:
    return set(incident.anomalies.values_list("status", flat=True))


def resolve_all(incident: Incident) -> None:
    incident_resolve(incident_id=incident.pk, actor=Actor.job("setup"), reason="fixed")


def staff_audits(**filters) -> list[AuditLog]:
    return list(
        AuditLog.objects.filter(actor_kind=AuditLog.ActorKind.STAFF, **filters)
        .order_by("id")
        .select_related("actor")
    )


# Incidents first -----------------------------------------------------------


def test_grouping_puts_the_anomalies_of_one_cause_in_one_incident(tenant):
    incident = runaway(tenant)

    assert incident.anomaly_count == 4 and incident.status == "open"
    # The largest member's money at stake: members overlap, never summed.
    assert incident.impact == Decimal("410.00")


@pytest.mark.parametrize("page", ["admin:index", "app_list"])
def test_incidents_are_listed_before_cost_anomalies(client, superuser, page):
    client.force_login(superuser)
    url = (
        reverse("admin:app_list", args=["anomalies"])
        if page == "app_list"
        else reverse(page)
    )

    response = client.get(url)

    [app] = [a for a in response.context["app_list"] if a["app_label"] == "anomalies"]
    assert [m["object_name"] for m in app["models"]] == ["Incident", "CostAnomaly"]
    html = response.content.decode()
    assert html.index('class="model-incident"') < html.index(
        'class="model-costanomaly"'
    )


def test_the_sidebar_lists_incidents_first_too(client, superuser, tenant):
    client.force_login(superuser)

    response = client.get(reverse("admin:billing_tenant_changelist"))

    [app] = [
        a for a in response.context["available_apps"] if a["app_label"] == "anomalies"
    ]
    assert [m["object_name"] for m in app["models"]] == ["Incident", "CostAnomaly"]


# The list ------------------------------------------------------------------


def test_a_row_reads_day_tenant_title_count_money_and_status(client, superuser, tenant):
    incident = runaway(tenant)
    client.force_login(superuser)

    response = client.get(reverse(CHANGELIST))

    assert [i.pk for i in response.context["cl"].result_list] == [incident.pk]
    row = re.search(r"<tbody>(.*?)</tbody>", response.content.decode(), re.S).group(1)
    cells = [
        re.sub(r"<[^>]+>", "", cell).strip()
        for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)
    ][1:]  # the checkbox
    assert cells == [
        f"{TODAY:%Y-%m-%d}",
        tenant.name,
        "trace runaway-trace: agent bot, user ann-web",
        "4",
        "$410.00",
        "Open",
    ]
    # The count opens the anomaly list filtered to the incident's members.
    link = re.search(r'<a href="([^"]+)">4</a>', row).group(1).replace("&amp;", "&")
    assert link == f"{reverse(ANOMALIES)}?incident__id__exact={incident.pk}"
    members = client.get(link)
    assert {a.pk for a in members.context["cl"].result_list} == set(
        incident.anomalies.values_list("pk", flat=True)
    )


def test_the_list_is_the_review_queue_open_first_most_money_first(
    client, superuser, tenant, other_tenant
):
    small = runaway(tenant, trace="small", project="p1")
    CostAnomaly.objects.filter(incident=small).update(observed=Decimal("30"))
    small = grouped(small.anomalies.first())
    big = runaway(other_tenant, trace="big", project="p2")
    done = runaway(tenant, trace="done", project="p3", day=TODAY - timedelta(days=1))
    CostAnomaly.objects.filter(incident=done).update(observed=Decimal("9000"))
    done = grouped(done.anomalies.first())
    resolve_all(done)
    client.force_login(superuser)

    listed = client.get(reverse(CHANGELIST)).context["cl"].result_list

    assert [i.pk for i in listed] == [big.pk, small.pk, done.pk]


def test_filters_and_search(client, tenant):
    today = runaway(tenant, trace="t-today", project="p1")
    earlier = runaway(
        tenant, trace="t-earlier", project="p2", day=TODAY - timedelta(days=3)
    )
    resolve_all(earlier)
    client.force_login(staff_with_role(tenant, Membership.Role.VIEWER))

    def listed(**params):
        response = client.get(reverse(CHANGELIST), params)
        assert response.status_code == 200
        return {i.pk for i in response.context["cl"].result_list}

    assert listed() == {today.pk, earlier.pk}
    assert listed(status__exact="open") == {today.pk}
    assert listed(status__exact="resolved") == {earlier.pk}
    day = f"{TODAY:%Y-%m-%d}"
    assert listed(period_start__range__gte=day, period_start__range__lte=day) == {
        today.pk
    }
    assert listed(tenant=tenant.pk) == {today.pk, earlier.pk}
    assert listed(q="t-earl") == {earlier.pk}
    assert listed(q="ann-p1") == {today.pk}


def test_staff_of_one_tenant_see_only_their_tenants_incidents(
    client, tenant, other_tenant
):
    other_tenant.name = "Initech Secret"
    other_tenant.save()
    own = runaway(tenant, trace="ours", project="p1")
    theirs = runaway(other_tenant, trace="theirs", project="p2")
    operator = staff_with_role(tenant, Membership.Role.OPERATOR)
    client.force_login(operator)

    page = client.get(reverse(CHANGELIST), {"_facets": "1"})
    change = client.get(reverse("admin:anomalies_incident_change", args=[theirs.pk]))
    review = client.get(
        reverse("admin:anomalies_incident_review", args=[theirs.pk, "resolve"])
    )
    members = client.get(reverse(ANOMALIES), {"incident__id__exact": theirs.pk})

    html = page.content.decode()
    assert [i.pk for i in page.context["cl"].result_list] == [own.pk]
    assert "Initech Secret" not in html and "theirs" not in html
    # Staff of one tenant would read its name on every row: no such column.
    assert "column-tenant" not in html
    # Not found, not forbidden: nothing says it exists.
    assert change.status_code == 302 and change.url == reverse("admin:index")
    assert review.status_code == 404
    assert list(members.context["cl"].result_list) == []


# Who may act ---------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_actions_are_offered_only_to_reviewers(client, login, tenant, role):
    incident = runaway(tenant)
    login(role)

    response = client.get(reverse(CHANGELIST))

    action_form = response.context["action_form"]
    offered = (
        [name for name, _ in action_form.fields["action"].choices if name]
        if action_form
        else []
    )
    assert offered == ([] if role == "viewer" else ACTIONS)
    listed = [i.pk for i in response.context["cl"].result_list]
    assert listed == ([] if role == "other_tenant_operator" else [incident.pk])


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("role", ROLES)
def test_each_role_against_each_action(client, login, tenant, role, action):
    incident = runaway(tenant)
    if STARTS_FROM[action] == "resolved":
        resolve_all(incident)
    user = login(role)

    response = confirm(client, action, [incident], follow=False)

    incident.refresh_from_db()
    audits = staff_audits()
    if role in MAY_REVIEW:
        assert response.status_code == 302
        assert incident.status == ENDS_AS[action]
        assert statuses(incident) == {ENDS_AS[action]}
        # One row for the incident, one for each member, all by the user.
        assert sorted(a.action for a in audits) == sorted(
            [f"incident.{action}"] + [f"anomaly.{action}"] * 4
        )
        assert {a.actor for a in audits} == {user}
    elif role == "viewer":
        # No action is offered to a viewer: a forged POST is refused outright.
        assert response.status_code == 403
        assert (incident.status, audits) == (STARTS_FROM[action], [])
    else:
        # Outside the user's tenants: not even selectable.
        assert response.status_code == 302
        assert (incident.status, audits) == (STARTS_FROM[action], [])


def test_an_operator_elsewhere_and_viewer_here_may_not_act_here(client, tenant):
    here = runaway(tenant, trace="here", project="p1")
    elsewhere_tenant = TenantFactory()
    elsewhere = runaway(elsewhere_tenant, trace="elsewhere", project="p2")
    user = staff_with_role(tenant, Membership.Role.VIEWER)
    MembershipFactory(user=user, tenant=elsewhere_tenant, role="operator")
    client.force_login(user)

    assert post_action(client, "resolve", [here, elsewhere]).status_code == 403
    assert confirm(client, "resolve", [here], follow=False).status_code == 403
    assert confirm(client, "resolve", [elsewhere]).status_code == 200

    here.refresh_from_db()
    elsewhere.refresh_from_db()
    assert (here.status, elsewhere.status) == ("open", "resolved")


@pytest.mark.parametrize(
    ("role", "status_code"), [("viewer", 403), ("other_tenant_operator", 404)]
)
def test_the_button_urls_refuse_who_may_not_review(
    client, login, tenant, role, status_code
):
    incident = runaway(tenant)
    login(role)
    url = reverse("admin:anomalies_incident_review", args=[incident.pk, "resolve"])

    assert client.get(url).status_code == status_code
    assert client.post(url, {"post": "yes", "reason": "expected"}).status_code == (
        status_code
    )
    assert statuses(incident) == {"open"}


# The intermediate page -----------------------------------------------------


def test_resolving_through_the_page_resolves_every_member_and_audits_each(
    client, login, tenant
):
    incident = runaway(tenant)
    other = runaway(tenant, trace="not-selected", project="p9")
    user = login("operator")

    page = post_action(client, "resolve", [incident])
    response = confirm(client, "resolve", [incident])

    # The page: the anomalies' own, listing the incident and its members' count.
    assert page.status_code == 200
    assert page.templates[0].name == (
        "admin/anomalies/incident/review_confirmation.html"
    )
    assert [i.pk for i in page.context["changeable"]] == [incident.pk]
    assert page.context["form"].fields["reason"].choices[1:] == list(
        ResolutionReason.choices
    )
    html = page.content.decode()
    assert "Resolve this incident:" in html and "<td>4 of 4</td>" in html
    assert "$410.00" in html and "not-selected" not in html
    assert 'name="post" value="yes"' in html
    assert 'value="Resolve 1 incident"' in html
    # The change: every member resolved, with the reason and the note.
    assert message_texts(response) == [
        "Resolved 1 incident and 4 anomalies in it (False positive)."
    ]
    incident.refresh_from_db()
    assert incident.status == "resolved"
    members = list(incident.anomalies.all())
    for member in members:
        assert (
            member.status,
            member.resolution_reason,
            member.resolution_note,
            member.resolved_by,
        ) == ("resolved", "false_positive", "load test", user)
    assert statuses(other) == {"open"}
    # The audit log: one row for the incident, one for each member.
    [incident_audit] = staff_audits(object_type="anomalies.incident")
    assert (incident_audit.action, incident_audit.object_id) == (
        "incident.resolve",
        str(incident.pk),
    )
    assert incident_audit.after["resolution_reason"] == "false_positive"
    assert sorted(incident_audit.after["changed"]) == sorted(m.pk for m in members)
    member_audits = staff_audits(object_type="anomalies.costanomaly")
    assert sorted((a.action, int(a.object_id)) for a in member_audits) == sorted(
        ("anomaly.resolve", m.pk) for m in members
    )
    assert {(a.actor, a.note) for a in member_audits} == {(user, "load test")}


def test_a_second_resolve_says_it_is_already_resolved(client, tenant):
    incident = runaway(tenant)
    first, second = Client(), Client()
    first.force_login(staff_with_role(tenant, "operator"))
    second.force_login(staff_with_role(tenant, "operator"))
    # Both opened the intermediate page while it was open.
    assert post_action(first, "resolve", [incident]).status_code == 200
    assert post_action(second, "resolve", [incident]).status_code == 200

    done = confirm(first, "resolve", [incident], note="first")
    late = confirm(second, "resolve", [incident], reason="fixed", note="second")

    assert message_texts(done) == [
        "Resolved 1 incident and 4 anomalies in it (False positive)."
    ]
    assert message_texts(late) == [f"“{incident}” is already resolved: left as it is."]
    assert len(staff_audits(action="incident.resolve")) == 1
    assert {a.note for a in staff_audits()} == {"first"}
    assert set(incident.anomalies.values_list("resolution_reason", flat=True)) == {
        "false_positive"
    }


@pytest.mark.django_db(transaction=True)
def test_two_operators_resolving_at_once_make_one_resolution():
    tenant = TenantFactory()
    incident = runaway(tenant)
    clients = []
    for _ in range(2):
        client = Client()
        client.force_login(staff_with_role(tenant, "operator"))
        clients.append(client)

    said = race_on_row(
        Incident.objects.filter(pk=incident.pk),
        [lambda c=c: confirm(c, "resolve", [incident]) for c in clients],
    )

    assert AuditLog.objects.filter(action="incident.resolve").count() == 1
    assert AuditLog.objects.filter(action="anomaly.resolve").count() == 4
    assert said == [
        "Resolved 1 incident and 4 anomalies in it (False positive).",
        f"“{incident}” is already resolved: left as it is.",
    ]


def test_members_already_resolved_are_left_as_they_are_and_named(client, login, tenant):
    incident = runaway(tenant)
    done = incident.anomalies.get(anomaly_type="expensive_trace")
    anomaly_resolve(anomaly_id=done.pk, actor=Actor.job("setup"), reason="fixed")
    login("admin")

    page = post_action(client, "resolve", [incident])
    response = confirm(client, "resolve", [incident])

    assert "<td>3 of 4</td>" in page.content.decode()
    assert message_texts(response) == [
        f"In “{incident}”, 1 anomaly left as it is: “{done}” (already resolved).",
        "Resolved 1 incident and 3 anomalies in it (False positive).",
    ]
    done.refresh_from_db()
    assert (done.resolution_reason, done.resolved_by) == ("fixed", None)
    assert staff_audits(object_id=str(done.pk)) == []


def test_a_mixed_selection_changes_what_it_can_and_says_what_it_left(
    client, login, tenant
):
    fresh = runaway(tenant, trace="fresh", project="p1")
    finished = runaway(tenant, trace="finished", project="p2")
    resolve_all(finished)
    login("operator")

    page = post_action(client, "resolve", [fresh, finished])
    response = confirm(client, "resolve", [fresh, finished])

    assert [i.pk for i in page.context["changeable"]] == [fresh.pk]
    assert [i.pk for i in page.context["unchanged"]] == [finished.pk]
    assert sorted(message_texts(response)) == sorted(
        [
            f"“{finished}” is already resolved: left as it is.",
            "Resolved 1 incident and 4 anomalies in it (False positive).",
        ]
    )


def test_resolving_needs_a_reason_and_reopening_a_note(client, login, tenant):
    incident = runaway(tenant)
    login("operator")

    no_reason = confirm(client, "resolve", [incident], reason="")
    unknown = confirm(client, "resolve", [incident], reason="because")
    acknowledged = confirm(client, "acknowledge", [incident])
    resolved = confirm(client, "resolve", [incident])
    no_note = confirm(client, "reopen", [incident], note="")
    reopened = confirm(client, "reopen", [incident], note="came back")

    for response in (no_reason, unknown):
        assert response.context["form"].errors["reason"]
    assert no_note.context["form"].errors["note"]
    assert message_texts(acknowledged) == [
        "Acknowledged 1 incident and 4 anomalies in it."
    ]
    assert message_texts(resolved) == [
        "Resolved 1 incident and 4 anomalies in it (False positive)."
    ]
    assert message_texts(reopened) == ["Reopened 1 incident and 4 anomalies in it."]
    assert statuses(incident) == {"open"}
    assert [a.action for a in staff_audits(object_type="anomalies.incident")] == [
        "incident.acknowledge",
        "incident.resolve",
        "incident.reopen",
    ]


def test_acknowledging_an_acknowledged_incident_is_refused_without_a_form(
    client, login, tenant
):
    incident = runaway(tenant)
    login("operator")
    confirm(client, "acknowledge", [incident])

    page = post_action(client, "acknowledge", [incident])

    assert page.context["changeable"] == [] and b'name="post"' not in page.content
    assert b"None of the selected incidents can be acknowledged" in page.content


def test_an_operator_resolves_under_the_web_roles_row_level_security(
    client, tenant, other_tenant, as_app_role
):
    incident = runaway(tenant, trace="ours", project="p1")
    runaway(other_tenant, trace="theirs", project="p2")
    client.force_login(staff_with_role(tenant, Membership.Role.OPERATOR))
    as_app_role()

    listed = client.get(reverse(CHANGELIST)).context["cl"].result_list
    response = confirm(client, "resolve", [incident])
    page = client.get(reverse("admin:anomalies_incident_change", args=[incident.pk]))

    assert [i.pk for i in listed] == [incident.pk]
    assert message_texts(response) == [
        "Resolved 1 incident and 4 anomalies in it (False positive)."
    ]
    assert [m["status"] for m in page.context["members"]] == ["Resolved"] * 4
    assert len(page.context["timeline"]) == 1


# The incident's page -------------------------------------------------------


def test_the_page_lists_the_members_and_the_incidents_timeline(client, login, tenant):
    incident = runaway(tenant)
    user = login("operator")
    confirm(client, "resolve", [incident], note="staging traffic")

    response = client.get(
        reverse("admin:anomalies_incident_change", args=[incident.pk])
    )

    assert response.status_code == 200
    html = response.content.decode()
    members = re.search(r'id="incident-members">(.*?)</div>', html, re.S).group(1)
    rows = [
        [
            re.sub(r"<[^>]+>", "", c).strip()
            for c in re.findall(r"<td[^>]*>(.*?)</td>", r)
        ]
        for r in re.findall(r"<tr class=\"member-[a-z]+\">(.*?)</tr>", members, re.S)
    ]
    # The review queue's order: the most money at stake first.
    assert rows == [
        ["High vs peers", "agent web/bot", "$412.50 vs $2.50 (165.0x)", "Resolved"],
        ["Spike vs own baseline", "agent web/bot", "$412.50 vs $3.00 (137.5x)",
         "Resolved"],
        ["Expensive trace", "agent web/bot", "$400.00 vs $1.50 (266.7x)",
         "Resolved"],
        ["High vs peers", "user ann-web", "$402.00 vs $4.00 (100.5x)", "Resolved"],
    ]  # fmt: skip
    for member in incident.anomalies.all():
        url = reverse("admin:anomalies_costanomaly_change", args=[member.pk])
        assert f'href="{url}"' in members
    timeline = re.findall(r"<strong>(.*?)</strong> by (\S+)\s*\((.*?)\)", html)
    assert timeline == [("Resolved", user.username, "open → resolved, 4 anomalies")]
    assert "reason: False positive" in html and "staging traffic" in html
    # The only review left is reopening it.
    assert [b["name"] for b in response.context["review_buttons"]] == ["reopen"]


@pytest.mark.parametrize(
    ("role", "expected"),
    [("viewer", []), ("operator", ["acknowledge", "resolve"]), ("admin", None)],
)
def test_the_page_offers_buttons_to_reviewers(client, login, tenant, role, expected):
    incident = runaway(tenant)
    login(role)

    response = client.get(
        reverse("admin:anomalies_incident_change", args=[incident.pk])
    )

    names = [b["name"] for b in response.context["review_buttons"]]
    assert names == (["acknowledge", "resolve"] if expected is None else expected)
    assert (b"review-button" in response.content) is bool(names)


def test_a_button_leads_to_the_same_form_and_back_to_the_incident(
    client, login, tenant
):
    incident = runaway(tenant)
    login("operator")
    url = reverse("admin:anomalies_incident_review", args=[incident.pk, "resolve"])

    page = client.get(url)
    response = client.post(
        url, {"post": "yes", "reason": "billing_adjusted", "note": "credited"}
    )

    assert page.status_code == 200
    assert [i.pk for i in page.context["changeable"]] == [incident.pk]
    assert response.status_code == 302
    assert response.url == reverse(
        "admin:anomalies_incident_change", args=[incident.pk]
    )
    assert set(incident.anomalies.values_list("resolution_note", flat=True)) == {
        "credited"
    }


def test_the_anomaly_page_names_its_incident_and_the_list_links_to_it(
    client, superuser, tenant
):
    incident = runaway(tenant)
    member = incident.anomalies.get(anomaly_type="expensive_trace")
    client.force_login(superuser)

    response = client.get(
        reverse("admin:anomalies_costanomaly_change", args=[member.pk])
    )
    listed = client.get(reverse(ANOMALIES)).content.decode()

    # The new rule's page renders, explanation included.
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="anomaly-explanation"' in page

    url = reverse("admin:anomalies_incident_change", args=[incident.pk])
    assert (
        f'Part of incident: <a href="{url}">{incident.title}</a> (4 anomalies)' in page
    )
    # Each member's "Related" is the three others, linked to the incident.
    assert listed.count(f'<a href="{url}" title="{incident.title}">+3</a>') == 4
    assert "Expensive trace" in listed


def test_history_is_the_audit_log_of_the_incident(client, login, tenant):
    incident = runaway(tenant)
    login("operator")
    confirm(client, "acknowledge", [incident])

    response = client.get(
        reverse("admin:anomalies_incident_history", args=[incident.pk]), follow=True
    )

    assert [(e.action, e.object_id) for e in response.context["cl"].result_list] == [
        ("incident.acknowledge", str(incident.pk))
    ]


# Cost ----------------------------------------------------------------------


def _incidents(tenant, n: int) -> None:
    """``n`` incidents of one day: one project, agent and cause each."""
    rows = [
        CostAnomaly(
            tenant=tenant, scope_type="agent", project_id=f"p{i}", scope_id="bot",
            period_start=TODAY, period_end=TODAY + timedelta(days=1),
            anomaly_type="high_cost", observed=Decimal(i + 5), expected=Decimal(1),
            ratio=Decimal(i + 5), cause=f"trace:t{i}",
            first_detected_at=TODAY, last_detected_at=TODAY,
        )
        for i in range(n)
    ]  # fmt: skip
    CostAnomaly.objects.bulk_create(rows)
    incidents_group(period_start=TODAY, tenant_ids=[tenant.pk])


@pytest.mark.parametrize("params", [{}, {"status__exact": "open", "q": "t1"}])
@pytest.mark.parametrize("who", ["superuser", "operator"])
def test_the_list_runs_the_same_queries_for_10_and_100_incidents(
    client, tenant, superuser, who, params
):
    user = (
        superuser
        if who == "superuser"
        else staff_with_role(tenant, Membership.Role.OPERATOR)
    )
    client.force_login(user)

    def queries(n: int) -> int:
        Incident.objects.all().delete()
        CostAnomaly.objects.all().delete()
        _incidents(tenant, n)
        assert Incident.objects.count() == n
        with CaptureQueriesContext(connection) as captured:
            response = client.get(reverse(CHANGELIST), params)
        assert response.status_code == 200
        assert params or len(response.context["cl"].result_list) == min(n, 100)
        return len(captured)

    assert queries(10) == queries(100)


def test_the_incident_page_runs_the_same_queries_for_2_and_20_members(
    client, superuser, tenant
):
    client.force_login(superuser)

    def queries(n: int) -> int:
        Incident.objects.all().delete()
        CostAnomaly.objects.all().delete()
        members = [anomaly(tenant, f"a{i}", cause="trace:shared") for i in range(n)]
        incident = grouped(*members)
        confirm(client, "acknowledge", [incident])
        with CaptureQueriesContext(connection) as captured:
            response = client.get(
                reverse("admin:anomalies_incident_change", args=[incident.pk])
            )
        assert len(response.context["members"]) == n
        return len(captured)

    assert queries(2) == queries(20)
