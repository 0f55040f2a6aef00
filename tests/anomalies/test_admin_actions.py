"""
Review actions in the anomaly admin, through HTTP as each role would use them.

Roles: a viewer and an operator and an admin of the anomaly's tenant, a
superuser, and an operator of another tenant. Real Postgres, Django's test
client, the real services; no mocks.
"""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from anomalies.models import CostAnomaly, ResolutionReason
from anomalies.services import anomaly_assign, anomaly_resolve
from billing.audit import Actor
from billing.models import AuditLog, Membership
from tests.anomalies.conftest import TODAY
from tests.factories import MembershipFactory, TenantFactory, UserFactory
from tests.races import race_on_row

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:anomalies_costanomaly_changelist"
ROLES = ["viewer", "operator", "admin", "superuser", "other_tenant_operator"]
MAY_REVIEW = {"operator", "admin", "superuser"}
ACTIONS = ["acknowledge", "resolve", "reopen", "assign_to_me", "assign"]
# What each action needs on its intermediate page, and the status it needs.
CONFIRM = {
    "acknowledge": {"note": "looking"},
    "resolve": {"reason": "expected", "note": "launch day"},
    "reopen": {"note": "still happening"},
    "assign_to_me": {},
    "assign": {"note": "yours"},  # + the colleague, see confirm()
}
STARTS_FROM = {
    "acknowledge": "open",
    "resolve": "open",
    "reopen": "resolved",
    "assign_to_me": "open",
    "assign": "open",
}
ENDS_AS = {
    "acknowledge": "acknowledged",
    "resolve": "resolved",
    "reopen": "open",
    "assign_to_me": "open",
    "assign": "open",
}
AUDIT_ACTION = {
    "acknowledge": "anomaly.acknowledge",
    "resolve": "anomaly.resolve",
    "reopen": "anomaly.reopen",
    "assign_to_me": "anomaly.assign",
    "assign": "anomaly.assign",
}


def make_anomaly(tenant, scope="bot", status="open") -> CostAnomaly:
    anomaly = CostAnomaly.objects.create(
        tenant=tenant,
        scope_type="agent",
        project_id="web",
        scope_id=scope,
        period_start=TODAY,
        period_end=TODAY + timedelta(days=1),
        anomaly_type="high_cost",
        observed=Decimal("12.50"),
        expected=Decimal("2.50"),
        ratio=Decimal("5"),
        first_detected_at=timezone.now(),
        last_detected_at=timezone.now(),
    )
    if status == "resolved":
        anomaly = anomaly_resolve(
            anomaly_id=anomaly.pk, actor=Actor.job("setup"), reason="fixed"
        )
    return anomaly


def staff(tenant, role) -> object:
    """A staff user who may view anomalies, with a role in ``tenant``."""
    user = UserFactory()
    user.user_permissions.add(Permission.objects.get(codename="view_costanomaly"))
    MembershipFactory(user=user, tenant=tenant, role=role)
    return user


def colleague(tenant) -> object:
    """An operator of ``tenant`` to assign anomalies to (one per tenant)."""
    user = UserFactory(username=f"colleague-of-{tenant.pk}")
    MembershipFactory(user=user, tenant=tenant, role=Membership.Role.OPERATOR)
    return user


@pytest.fixture
def login(client, tenant, other_tenant, superuser):
    """Log the client in as one of ROLES, relative to ``tenant``."""

    def as_role(role):
        if role == "superuser":
            user = superuser
        elif role == "other_tenant_operator":
            user = staff(other_tenant, Membership.Role.OPERATOR)
        else:
            user = staff(tenant, role)
        client.force_login(user)
        return user

    return as_role


def post_action(client, action, anomalies, **data):
    return client.post(
        reverse(CHANGELIST),
        {
            "action": action,
            "_selected_action": [a.pk for a in anomalies],
            **data,
        },
    )


def confirm(client, action, anomalies, follow=True, **data):
    """The second POST: the one the intermediate page sends."""
    data = {**CONFIRM[action], **data, "post": "yes"}
    if action == "assign" and "assignee" not in data:
        data["assignee"] = colleague(anomalies[0].tenant).pk
    if action == "assign_to_me":
        data["index"] = 0  # no intermediate page: the changelist's own form
    return client.post(
        reverse(CHANGELIST),
        {"action": action, "_selected_action": [a.pk for a in anomalies], **data},
        follow=follow,
    )


def message_texts(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def review_audits(anomaly) -> list[AuditLog]:
    return list(
        AuditLog.objects.filter(
            object_id=str(anomaly.pk), actor_kind=AuditLog.ActorKind.STAFF
        ).order_by("id")
    )


# Who is offered what -------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_actions_are_offered_only_to_reviewers(client, login, tenant, role):
    anomaly = make_anomaly(tenant)
    login(role)

    response = client.get(reverse(CHANGELIST))

    assert response.status_code == 200
    action_form = response.context["action_form"]
    offered = (
        [name for name, _ in action_form.fields["action"].choices if name]
        if action_form
        else []
    )
    listed = [a.pk for a in response.context["cl"].result_list]
    # Everyone who may look may export what they see; only reviewers act.
    if role == "viewer":
        assert offered == ["export_csv"]
    else:
        assert offered == [*ACTIONS, "export_csv"]
    # Staff of another tenant never see this tenant's anomalies.
    assert listed == ([] if role == "other_tenant_operator" else [anomaly.pk])


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("role", ROLES)
def test_each_role_against_each_action(client, login, tenant, role, action):
    anomaly = make_anomaly(tenant, status=STARTS_FROM[action])
    user = login(role)

    response = confirm(client, action, [anomaly], follow=False)

    anomaly.refresh_from_db()
    audits = review_audits(anomaly)
    if role in MAY_REVIEW:
        assert response.status_code == 302
        assert anomaly.status == ENDS_AS[action]
        assert [(a.action, a.actor) for a in audits] == [(AUDIT_ACTION[action], user)]
    elif role == "viewer":
        # No action is offered to a viewer: a forged POST is refused outright.
        assert response.status_code == 403
        assert (anomaly.status, audits) == (STARTS_FROM[action], [])
    else:
        # Outside the user's tenants: not even selectable.
        assert response.status_code == 302
        assert (anomaly.status, audits) == (STARTS_FROM[action], [])
    if action == "assign_to_me":
        assert (anomaly.assignee == user) is (role in MAY_REVIEW)
    if action == "assign":
        assigned = anomaly.assignee is not None
        assert assigned is (role in MAY_REVIEW)


def test_a_viewer_here_and_operator_elsewhere_may_not_act_here(client, tenant):
    here = make_anomaly(tenant, scope="here")
    elsewhere_tenant = TenantFactory()
    elsewhere = make_anomaly(elsewhere_tenant, scope="elsewhere")
    user = staff(tenant, Membership.Role.VIEWER)
    MembershipFactory(user=user, tenant=elsewhere_tenant, role="operator")
    client.force_login(user)

    assert post_action(client, "resolve", [here, elsewhere]).status_code == 403
    assert confirm(client, "resolve", [here], follow=False).status_code == 403
    assert confirm(client, "resolve", [elsewhere]).status_code == 200

    here.refresh_from_db()
    elsewhere.refresh_from_db()
    assert (here.status, elsewhere.status) == ("open", "resolved")


# The intermediate page -----------------------------------------------------


def test_the_intermediate_page_lists_the_selection_and_the_reasons(
    client, login, tenant
):
    chosen = [make_anomaly(tenant, scope="a"), make_anomaly(tenant, scope="b")]
    make_anomaly(tenant, scope="not-selected")
    login("operator")

    response = post_action(client, "resolve", chosen)

    assert response.status_code == 200
    assert response.templates[0].name == (
        "admin/anomalies/costanomaly/review_confirmation.html"
    )
    assert {a.pk for a in response.context["changeable"]} == {a.pk for a in chosen}
    assert response.context["form"].fields["reason"].choices[1:] == list(
        ResolutionReason.choices
    )
    page = response.content.decode()
    assert "agent web/a" in page and "agent web/b" in page
    assert "not-selected" not in page
    for value, label in ResolutionReason.choices:
        assert f'value="{value}"' in page and label in page
    assert 'name="post" value="yes"' in page
    assert CostAnomaly.objects.filter(status="open").count() == 3


def test_resolving_through_the_page_audits_each_with_reason_and_note(
    client, login, tenant
):
    chosen = [make_anomaly(tenant, scope="a"), make_anomaly(tenant, scope="b")]
    user = login("operator")

    response = confirm(
        client, "resolve", chosen, reason="false_positive", note="test traffic"
    )

    assert response.status_code == 200
    assert message_texts(response) == ["Resolved 2 anomalies (False positive)."]
    for anomaly in chosen:
        anomaly.refresh_from_db()
        assert (anomaly.status, anomaly.resolution_reason, anomaly.resolved_by) == (
            "resolved",
            "false_positive",
            user,
        )
        [audit] = review_audits(anomaly)
        assert (audit.action, audit.note) == ("anomaly.resolve", "test traffic")
        assert audit.after["resolution_reason"] == "false_positive"
        assert audit.before["status"] == "open"


def test_resolving_needs_a_reason_from_the_list(client, login, tenant):
    anomaly = make_anomaly(tenant)
    login("operator")

    missing = confirm(client, "resolve", [anomaly], reason="")
    unknown = confirm(client, "resolve", [anomaly], reason="because")

    for response in (missing, unknown):
        assert response.status_code == 200
        assert response.context["form"].errors["reason"]
    anomaly.refresh_from_db()
    assert (anomaly.status, review_audits(anomaly)) == ("open", [])


def test_a_second_resolve_is_one_resolution_and_an_already_resolved_message(
    client, tenant
):
    anomaly = make_anomaly(tenant)
    first, second = Client(), Client()
    first.force_login(staff(tenant, "operator"))
    second.force_login(staff(tenant, "operator"))
    # Both opened the intermediate page while it was open.
    assert post_action(first, "resolve", [anomaly]).status_code == 200
    assert post_action(second, "resolve", [anomaly]).status_code == 200

    done = confirm(first, "resolve", [anomaly], note="first")
    late = confirm(second, "resolve", [anomaly], reason="fixed", note="second")

    assert message_texts(done) == ["Resolved 1 anomaly (Expected usage)."]
    [warning] = message_texts(late)
    assert "already resolved" in warning and str(anomaly) in warning
    anomaly.refresh_from_db()
    assert (anomaly.resolution_reason, anomaly.resolution_note) == (
        "expected",
        "first",
    )
    assert [a.note for a in review_audits(anomaly)] == ["first"]


@pytest.mark.django_db(transaction=True)
def test_two_operators_resolving_at_once_make_one_transition():
    tenant = TenantFactory()
    anomaly = make_anomaly(tenant)
    clients = []
    for _ in range(2):
        client = Client()
        client.force_login(staff(tenant, "operator"))
        clients.append(client)

    said = race_on_row(
        CostAnomaly.objects.filter(pk=anomaly.pk),
        [lambda c=c: confirm(c, "resolve", [anomaly]) for c in clients],
    )

    assert AuditLog.objects.filter(action="anomaly.resolve").count() == 1
    assert CostAnomaly.objects.get().status == "resolved"
    assert said == [
        "Resolved 1 anomaly (Expected usage).",
        f"“{anomaly}” is already resolved: left as it is.",
    ]


def test_reopen_needs_a_resolved_anomaly_and_a_note(client, login, tenant):
    still_open = make_anomaly(tenant, scope="open")
    acknowledged = make_anomaly(tenant, scope="acknowledged")
    CostAnomaly.objects.filter(pk=acknowledged.pk).update(status="acknowledged")
    resolved = make_anomaly(tenant, scope="resolved", status="resolved")
    login("operator")

    page = post_action(client, "reopen", [still_open, acknowledged])
    refused = confirm(client, "reopen", [still_open, acknowledged])
    no_note = confirm(client, "reopen", [resolved], note="")
    reopened = confirm(client, "reopen", [resolved], note="came back")

    assert page.context["changeable"] == [] and b'name="post"' not in page.content
    assert b"None of the selected anomalies can be reopened" in page.content
    assert sorted(message_texts(refused)) == sorted(
        [
            f"“{still_open}” is already open: left as it is.",
            f"“{acknowledged}” is acknowledged: only an anomaly that is resolved "
            "can be reopened.",
        ]
    )
    assert no_note.context["form"].errors["note"]
    assert message_texts(reopened) == ["Reopened 1 anomaly."]
    resolved.refresh_from_db()
    assert (resolved.status, resolved.resolution_reason) == ("open", "")
    assert [(a.action, a.note) for a in review_audits(resolved)] == [
        ("anomaly.reopen", "came back")
    ]
    assert review_audits(still_open) == review_audits(acknowledged) == []


def test_a_mixed_selection_changes_what_it_can_and_says_what_it_left(
    client, login, tenant
):
    fresh = make_anomaly(tenant, scope="fresh")
    done = make_anomaly(tenant, scope="done", status="resolved")
    login("admin")

    page = post_action(client, "resolve", [fresh, done])
    response = confirm(client, "resolve", [fresh, done])

    assert [a.pk for a in page.context["changeable"]] == [fresh.pk]
    assert [a.pk for a in page.context["unchanged"]] == [done.pk]
    assert message_texts(response) == [
        f"“{done}” is already resolved: left as it is.",
        "Resolved 1 anomaly (Expected usage).",
    ]


# Assign to me --------------------------------------------------------------


def test_assign_to_me_acts_at_once_and_skips_resolved_ones(client, login, tenant):
    fresh = make_anomaly(tenant, scope="fresh")
    done = make_anomaly(tenant, scope="done", status="resolved")
    user = login("operator")

    response = confirm(client, "assign_to_me", [fresh, done])
    again = confirm(client, "assign_to_me", [fresh])

    assert message_texts(response) == [
        f"“{done}” is resolved: not assigned.",
        "1 anomaly assigned to you.",
    ]
    assert message_texts(again) == ["1 anomaly assigned to you."]
    fresh.refresh_from_db()
    assert fresh.assignee == user
    [audit] = review_audits(fresh)  # the repeat changed nothing
    assert (audit.action, audit.before["assignee"], audit.after["assignee"]) == (
        "anomaly.assign",
        None,
        user.pk,
    )


def test_anomalies_are_assigned_only_to_their_tenants_reviewers(tenant, superuser):
    anomaly = make_anomaly(tenant)
    viewer = staff(tenant, "viewer")
    stranger = staff(TenantFactory(), "operator")

    for user in (viewer, stranger):
        with pytest.raises(ValueError, match="cannot review"):
            anomaly_assign(
                anomaly_id=anomaly.pk, actor=Actor.staff(superuser), assignee=user
            )
    assert (
        anomaly_assign(
            anomaly_id=anomaly.pk, actor=Actor.staff(superuser), assignee=superuser
        ).assignee
        == superuser
    )


# Change page buttons -------------------------------------------------------


def buttons(client, anomaly) -> list[str]:
    response = client.get(
        reverse("admin:anomalies_costanomaly_change", args=[anomaly.pk])
    )
    assert response.status_code == 200
    return [b["name"] for b in response.context["review_buttons"]]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("open", ["acknowledge", "resolve", "assign"]),
        ("acknowledged", ["resolve", "assign"]),
        ("resolved", ["reopen"]),
    ],
)
def test_the_change_page_shows_the_buttons_valid_for_the_status(
    client, login, tenant, status, expected
):
    anomaly = make_anomaly(
        tenant, status="resolved" if status == "resolved" else "open"
    )
    CostAnomaly.objects.filter(pk=anomaly.pk, status="open").update(status=status)
    login("operator")

    response = client.get(
        reverse("admin:anomalies_costanomaly_change", args=[anomaly.pk])
    )

    assert [b["name"] for b in response.context["review_buttons"]] == expected
    page = response.content.decode()
    for name in ["acknowledge", "resolve", "reopen"]:
        url = reverse("admin:anomalies_costanomaly_review", args=[anomaly.pk, name])
        assert (f'href="{url}"' in page) is (name in expected)


@pytest.mark.parametrize("role", ["viewer", "superuser", "admin"])
def test_only_reviewers_see_buttons(client, login, tenant, role):
    anomaly = make_anomaly(tenant)
    login(role)

    assert buttons(client, anomaly) == (
        [] if role == "viewer" else ["acknowledge", "resolve", "assign"]
    )
    assert (
        b"review-button"
        not in client.get(reverse("admin:anomalies_costanomaly_changelist")).content
    )


def test_a_button_leads_to_the_same_form_and_back_to_the_anomaly(client, login, tenant):
    anomaly = make_anomaly(tenant)
    login("operator")
    url = reverse("admin:anomalies_costanomaly_review", args=[anomaly.pk, "resolve"])

    page = client.get(url)
    response = client.post(
        url, {"post": "yes", "reason": "billing_adjusted", "note": "credited"}
    )

    assert page.status_code == 200
    assert [a.pk for a in page.context["changeable"]] == [anomaly.pk]
    assert "reason" in page.context["form"].fields
    assert response.status_code == 302
    assert response.url == reverse(
        "admin:anomalies_costanomaly_change", args=[anomaly.pk]
    )
    anomaly.refresh_from_db()
    assert (anomaly.status, anomaly.resolution_note) == ("resolved", "credited")
    assert buttons(client, anomaly) == ["reopen"]


@pytest.mark.parametrize(
    ("role", "status_code"), [("viewer", 403), ("other_tenant_operator", 404)]
)
def test_the_button_urls_refuse_who_may_not_review(
    client, login, tenant, role, status_code
):
    anomaly = make_anomaly(tenant)
    login(role)
    url = reverse("admin:anomalies_costanomaly_review", args=[anomaly.pk, "resolve"])

    assert client.get(url).status_code == status_code
    assert client.post(url, {"post": "yes", "reason": "expected"}).status_code == (
        status_code
    )
    anomaly.refresh_from_db()
    assert anomaly.status == "open"
