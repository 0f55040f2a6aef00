"""
Membership roles decide what a user may do in the admin (issue 12, item 2):
a viewer looks, an operator retries failed reports, a tenant admin also
suspends, activates and resumes the tenant. The actions check the role in
the selected rows' tenants, not only a Django model permission.
"""

from datetime import UTC, date, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from billing.audit import Actor, audit_log_write
from billing.models import (
    AnalyticsRun,
    AuditLog,
    CostSummary,
    Membership,
    StripeReport,
    SyncCursor,
    SyncRun,
    Tenant,
    UsageAdjustment,
    UsageRecord,
)
from billing.services import STATUS_REASONS, TenantStatusReason
from tests.factories import (
    MembershipFactory,
    TenantFactory,
    UserFactory,
    tenant_form_data,
)
from tests.races import race_on_row

pytestmark = pytest.mark.django_db

TENANT_PERMISSIONS = ["view_tenant", "change_tenant", "view_stripereport"]


@pytest.fixture
def user_with_role(tenant):
    def make(role):
        user = UserFactory()
        user.user_permissions.add(
            *Permission.objects.filter(codename__in=TENANT_PERMISSIONS)
        )
        MembershipFactory(user=user, tenant=tenant, role=role)
        return user

    return make


def _failed_report(tenant) -> StripeReport:
    return StripeReport.objects.create(
        tenant=tenant,
        identifier=f"lf-{tenant.pk}-20261120-x",
        event_name="llm_usage",
        stripe_customer_id="cus_old",
        unit="micro_usd",
        value=10,
        amount=10,
        day=date(2026, 11, 20),
        timestamp=datetime(2026, 11, 20, 12, tzinfo=UTC),
        status=StripeReport.Status.FAILED,
        last_error="stripe: HTTP 400 resource_missing",
    )


def _act(client, model, action, ids):
    url = reverse(f"admin:billing_{model}_changelist")
    return client.post(url, {"action": action, "_selected_action": ids}, follow=True)


def _offered(client, model) -> set[str]:
    response = client.get(reverse(f"admin:billing_{model}_changelist"))
    form = response.context["action_form"]  # None when none is offered
    if form is None:
        return set()
    return {value for value, _ in form.fields["action"].choices if value}


@pytest.mark.parametrize(
    ("role", "offered"),
    [
        ("viewer", set()),
        ("operator", set()),
        ("admin", {"suspend", "activate", "resume_sync"}),
    ],
)
def test_only_a_tenant_admin_manages_the_tenant(
    client, tenant, user_with_role, role, offered
):
    client.force_login(user_with_role(role))

    # (Looking actions, such as an export, may be offered to anyone.)
    assert (
        _offered(client, "tenant") & {"suspend", "activate", "resume_sync"} == offered
    )
    _act(client, "tenant", "suspend", [tenant.pk])
    _confirm(client, "suspend", [tenant], reason="non_payment")

    suspended = Tenant.objects.get(pk=tenant.pk).status == Tenant.Status.SUSPENDED
    assert suspended == (role == "admin")


def test_an_admin_of_one_tenant_cannot_suspend_another(
    client, tenant, other_tenant, user_with_role
):
    admin = user_with_role("admin")
    MembershipFactory(user=admin, tenant=other_tenant, role="viewer")
    client.force_login(admin)

    response = _act(client, "tenant", "suspend", [tenant.pk, other_tenant.pk])

    assert response.status_code == 403
    assert set(Tenant.objects.values_list("status", flat=True)) == {"active"}


@pytest.mark.parametrize(
    ("role", "may_retry"), [("viewer", False), ("operator", True), ("admin", True)]
)
def test_only_operators_and_admins_retry_failed_reports(
    client, tenant, user_with_role, role, may_retry
):
    report = _failed_report(tenant)
    client.force_login(user_with_role(role))

    assert ("retry" in _offered(client, "stripereport")) == may_retry
    _act(client, "stripereport", "retry", [report.pk])

    report.refresh_from_db()
    assert report.status == ("pending" if may_retry else "failed")


def test_an_operator_of_one_tenant_cannot_retry_another_s_reports(
    client, tenant, other_tenant, user_with_role
):
    operator = user_with_role("operator")
    MembershipFactory(user=operator, tenant=other_tenant, role="viewer")
    theirs = _failed_report(other_tenant)
    client.force_login(operator)

    response = _act(client, "stripereport", "retry", [theirs.pk])

    assert response.status_code == 403
    theirs.refresh_from_db()
    assert theirs.status == "failed"


# Every billing admin action and change form, through HTTP, for each role.
# The staff users hold every Django permission on the
# billing models, so what refuses them is the Membership role, not a
# missing model permission.

ROLES = ["viewer", "operator", "admin", "superuser"]
TENANT_ADMINS = {"admin", "superuser"}
OPERATORS = {"operator", "admin", "superuser"}
SECRET = "sk-lf-role-test-secret"


def _staff(tenant: Tenant, role: str):
    if role == "superuser":
        return UserFactory(is_superuser=True)
    user = UserFactory()
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="billing")
    )
    MembershipFactory(user=user, tenant=tenant, role=role)
    return user


@pytest.fixture
def login(client, tenant):
    def log_in(role: str):
        user = _staff(tenant, role)
        client.force_login(user)
        return user

    return log_in


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def _audit(action: str) -> list[AuditLog]:
    return list(AuditLog.objects.filter(action=action).order_by("id"))


def _confirm(client, action: str, tenants, **form):
    """The intermediate page's submit: back to the action, with post=yes."""
    return client.post(
        reverse("admin:billing_tenant_changelist"),
        {
            "action": action,
            "_selected_action": [t.pk for t in tenants],
            "post": "yes",
            **form,
        },
        follow=True,
    )


# The tenant change form ---------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_the_tenant_change_form_is_read_only_below_tenant_admin(
    client, tenant, login, role
):
    tenant.langfuse_secret_key = SECRET
    tenant.save()
    login(role)

    response = client.get(reverse("admin:billing_tenant_change", args=[tenant.pk]))

    assert response.status_code == 200
    html = response.content.decode()
    may_edit = role in TENANT_ADMINS
    assert response.context["has_change_permission"] == may_edit
    assert ('name="_save"' in html) == may_edit
    assert ('name="name"' in html) == may_edit
    # Whether a key is stored shows; the key, masked or not, never does.
    assert SECRET not in html
    assert "Secret key stored" in html
    assert ("Langfuse secret key" in html) == may_edit


@pytest.mark.parametrize("role", ROLES)
def test_only_a_tenant_admin_saves_thetenant_form_data(client, tenant, login, role):
    user = login(role)
    url = reverse("admin:billing_tenant_change", args=[tenant.pk])

    response = client.post(
        url, tenant_form_data(tenant, name="Renamed", settle_seconds=90)
    )

    tenant.refresh_from_db()
    updates = _audit("tenant.update")
    if role in TENANT_ADMINS:
        assert response.status_code == 302
        assert (tenant.name, tenant.settle_seconds) == ("Renamed", 90)
        [entry] = updates
        assert (entry.actor, entry.tenant_id) == (user, tenant.pk)
        assert entry.after == {"name": "Renamed", "settle_seconds": 90}
    else:
        assert response.status_code == 403
        assert tenant.name != "Renamed"
        assert updates == []


def test_a_tenant_admin_cannot_save_another_tenant_s_form(
    client, tenant, other_tenant, login
):
    login("admin")
    url = reverse("admin:billing_tenant_change", args=[other_tenant.pk])

    response = client.post(url, tenant_form_data(other_tenant, name="Renamed"))

    # Not theirs: it does not exist for them (back to the index).
    assert response.status_code == 302
    other_tenant.refresh_from_db()
    assert other_tenant.name != "Renamed"
    assert _audit("tenant.update") == []


# Suspend / activate, with the intermediate page ---------------------------

STATUS_ACTIONS = {
    # action: (status before, status after, a valid reason, audit action)
    "suspend": ("active", "suspended", "non_payment", "tenant.suspend"),
    "activate": ("suspended", "active", "payment_received", "tenant.activate"),
}


@pytest.mark.parametrize("action", list(STATUS_ACTIONS))
@pytest.mark.parametrize("role", ROLES)
def test_suspend_and_activate_ask_why_then_audit_it(
    client, tenant, login, role, action
):
    before, after, reason, audit_action = STATUS_ACTIONS[action]
    Tenant.objects.filter(pk=tenant.pk).update(status=before)
    user = login(role)

    page = client.post(
        reverse("admin:billing_tenant_changelist"),
        {"action": action, "_selected_action": [tenant.pk]},
    )
    done = _confirm(client, action, [tenant], reason=reason, note="ticket 42")

    tenant.refresh_from_db()
    if role not in TENANT_ADMINS:
        assert (page.status_code, done.status_code) == (403, 403)
        assert tenant.status == before
        assert _audit(audit_action) == []
        return
    # The first POST only asks: the page lists the tenant, with the reasons
    # that fit this change and nothing else.
    assert page.status_code == 200
    assert page.templates[0].name == "admin/billing/tenant/status_confirmation.html"
    assert tenant.name in page.content.decode()
    choices = {v for v, _ in page.context["form"].fields["reason"].choices if v}
    assert choices == set(STATUS_REASONS[after])
    assert b'name="post" value="yes"' in page.content
    # The second one changes it, once, with the reason and the note audited.
    assert tenant.status == after
    [entry] = _audit(audit_action)
    assert (entry.actor, entry.tenant_id, entry.note) == (user, tenant.pk, "ticket 42")
    assert entry.after == {"status": after, "reason": reason}
    verb = "Suspended" if action == "suspend" else "Activated"
    label = TenantStatusReason(reason).label
    assert _messages(done) == [f"{verb} 1 tenant ({label})."]


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"note": "why not"}, "This field is required."),
        ({"reason": "payment_received"}, "Select a valid choice."),
        ({"reason": "other", "note": "  "}, "Say why"),
    ],
    ids=["no-reason", "reason-of-the-other-way", "other-without-note"],
)
def test_suspend_without_a_valid_reason_changes_nothing(
    client, tenant, login, form, error
):
    login("admin")

    page = _confirm(client, "suspend", [tenant], **form)

    assert page.status_code == 200
    assert error in page.content.decode()
    assert Tenant.objects.get(pk=tenant.pk).status == "active"
    assert _audit("tenant.suspend") == []


def test_the_page_says_which_tenants_are_already_suspended(
    client, tenant, other_tenant, login
):
    user = login("admin")
    MembershipFactory(user=user, tenant=other_tenant, role="admin")
    Tenant.objects.filter(pk=other_tenant.pk).update(status="suspended")

    page = client.post(
        reverse("admin:billing_tenant_changelist"),
        {"action": "suspend", "_selected_action": [tenant.pk, other_tenant.pk]},
    )
    done = _confirm(
        client, "suspend", [tenant, other_tenant], reason="other", note="audit"
    )

    assert [t.pk for t in page.context["changeable"]] == [tenant.pk]
    assert [t.pk for t in page.context["unchanged"]] == [other_tenant.pk]
    assert 'value="Suspend 1 tenant"' in page.content.decode()
    assert sorted(_messages(done)) == sorted(
        [
            "Suspended 1 tenant (Other (say why in the note)).",
            f"Tenant {other_tenant.name} ({other_tenant.slug}) is already "
            "suspended: left as it is.",
        ]
    )
    assert len(_audit("tenant.suspend")) == 1


def test_the_confirmation_is_refused_outside_the_user_s_admin_tenants(
    client, tenant, other_tenant, login
):
    user = login("admin")
    MembershipFactory(user=user, tenant=other_tenant, role="operator")

    # Straight to the second step, as a forged form would.
    response = _confirm(
        client, "suspend", [tenant, other_tenant], reason="abuse", note="x"
    )

    assert response.status_code == 403
    assert set(Tenant.objects.values_list("status", flat=True)) == {"active"}
    assert _audit("tenant.suspend") == []


def test_a_tenant_the_admin_does_not_see_is_not_suspended(
    client, tenant, other_tenant, login
):
    login("admin")

    response = _confirm(client, "suspend", [other_tenant], reason="abuse", note="x")

    # It does not exist for them, as on its change page.
    assert _messages(response) == ["None of the selected tenants is yours."]
    assert Tenant.objects.get(pk=other_tenant.pk).status == "active"


def test_a_second_admin_confirming_later_gets_told_and_changes_nothing(
    client, tenant, login
):
    login("admin")
    colleague = Client()
    colleague.force_login(_staff(tenant, "admin"))

    # Both opened the page while the tenant was active; one confirms first.
    first = _confirm(client, "suspend", [tenant], reason="abuse", note="first")
    second = _confirm(colleague, "suspend", [tenant], reason="abuse", note="second")

    assert _messages(first) == ["Suspended 1 tenant (Abuse or security concern)."]
    assert _messages(second) == [
        f"Tenant {tenant.name} ({tenant.slug}) is already suspended: left as it is."
    ]
    assert [e.note for e in _audit("tenant.suspend")] == ["first"]


@pytest.mark.django_db(transaction=True)
def test_two_admins_suspending_at_once_make_one_transition():
    tenant = TenantFactory()
    clients = []
    for _ in range(2):
        client = Client()
        client.force_login(_staff(tenant, "admin"))
        clients.append(client)

    said = race_on_row(
        Tenant.objects.filter(pk=tenant.pk),
        [
            lambda c=c: _confirm(c, "suspend", [tenant], reason="abuse", note="x")
            for c in clients
        ],
    )

    assert Tenant.objects.get(pk=tenant.pk).status == "suspended"
    assert AuditLog.objects.filter(action="tenant.suspend").count() == 1
    assert said == [
        "Suspended 1 tenant (Abuse or security concern).",
        f"Tenant {tenant.name} ({tenant.slug}) is already suspended: left as it is.",
    ]


# Resume sync ---------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_only_a_tenant_admin_resumes_a_paused_sync(client, tenant, login, role):
    Tenant.objects.filter(pk=tenant.pk).update(sync_paused_reason="langfuse: HTTP 401")
    user = login(role)

    response = _act(client, "tenant", "resume_sync", [tenant.pk])

    tenant.refresh_from_db()
    entries = _audit("tenant.resume_sync")
    if role in TENANT_ADMINS:
        assert response.status_code == 200
        assert _messages(response) == ["Sync resumed for 1 tenant(s)."]
        assert tenant.sync_paused_reason == ""
        assert [(e.actor, e.tenant_id) for e in entries] == [(user, tenant.pk)]
    else:
        assert response.status_code == 403
        assert tenant.sync_paused_reason == "langfuse: HTTP 401"
        assert entries == []


# Retry of failed Stripe reports -------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_retrying_a_failed_report_is_refused_to_viewers_and_audited(
    client, tenant, login, role
):
    report = _failed_report(tenant)
    user = login(role)

    response = _act(client, "stripereport", "retry", [report.pk])

    report.refresh_from_db()
    entries = _audit("report.retry")
    if role in OPERATORS:
        assert response.status_code == 200
        assert report.status == "pending"
        assert [(e.actor, e.object_id) for e in entries] == [(user, str(report.pk))]
    else:
        assert response.status_code == 403
        assert report.status == "failed"
        assert entries == []


# Memberships: granting access is for superusers ---------------------------


@pytest.mark.parametrize("role", ROLES)
def test_only_a_superuser_adds_a_membership(client, tenant, login, role):
    login(role)
    newcomer = UserFactory()
    url = reverse("admin:billing_membership_add")

    page = client.get(url)
    response = client.post(
        url, {"user": newcomer.pk, "tenant": tenant.pk, "role": "operator"}
    )

    added = Membership.objects.filter(user=newcomer, tenant=tenant)
    if role == "superuser":
        assert (page.status_code, response.status_code) == (200, 302)
        assert added.get().role == "operator"
        [entry] = _audit("membership.create")
        assert entry.after == {"user": newcomer.username, "role": "operator"}
    else:
        assert (page.status_code, response.status_code) == (403, 403)
        assert not added.exists()
        assert _audit("membership.create") == []


@pytest.mark.parametrize("role", ROLES)
def test_only_a_superuser_changes_or_removes_a_membership(client, tenant, login, role):
    login(role)
    member = MembershipFactory(tenant=tenant, user=UserFactory(), role="viewer")
    change = reverse("admin:billing_membership_change", args=[member.pk])
    delete = reverse("admin:billing_membership_delete", args=[member.pk])

    page = client.get(change)
    changed = client.post(change, {"role": "admin"})

    member.refresh_from_db()
    if role == "superuser":
        # One user in one tenant: the role is what changes.
        assert page.context["adminform"].readonly_fields == ["user", "tenant"]
        assert changed.status_code == 302
        assert member.role == "admin"
        [entry] = _audit("membership.update")
        assert (entry.before, entry.after["role"]) == ({"role": "viewer"}, "admin")
        assert client.post(delete, {"post": "yes"}).status_code == 302
        assert not Membership.objects.filter(pk=member.pk).exists()
        assert len(_audit("membership.delete")) == 1
    else:
        # Staff look at their tenants' members, read-only.
        assert page.status_code == 200
        assert not page.context["has_change_permission"]
        assert changed.status_code == 403
        assert member.role == "viewer"
        assert client.post(delete, {"post": "yes"}).status_code == 403
        assert Membership.objects.filter(pk=member.pk).exists()
        assert AuditLog.objects.filter(action__startswith="membership.").count() == 0


# What nobody changes in the admin -----------------------------------------


def _read_only_rows(tenant: Tenant) -> dict[str, object]:
    at = datetime(2026, 11, 20, 12, tzinfo=UTC)
    record = UsageRecord.objects.create(
        tenant=tenant,
        trace_id="t-1",
        trace_timestamp=at,
        last_activity_at=at,
        content_hash="h",
    )
    return {
        "auditlog": audit_log_write(
            actor=Actor.system(), action="tenant.update", obj=tenant, tenant=tenant
        ),
        "usagerecord": record,
        "usageadjustment": UsageAdjustment.objects.create(
            tenant=tenant, usage_record=record, trace_timestamp=at, content_hash="a"
        ),
        "stripereport": _failed_report(tenant),
        "syncrun": SyncRun.objects.create(tenant=tenant, kind="sync", started_at=at),
        "synccursor": SyncCursor.objects.create(tenant=tenant, watermark=at),
        "costsummary": CostSummary.objects.create(
            tenant=tenant,
            scope_type="project",
            scope_id="web",
            period_start=at,
            period_end=at + timedelta(days=1),
            computed_at=at,
        ),
    }


@pytest.mark.parametrize(
    "model",
    [
        "auditlog",
        "usagerecord",
        "usageadjustment",
        "stripereport",
        "syncrun",
        "synccursor",
        "costsummary",
    ],
)
@pytest.mark.parametrize("role", ROLES)
def test_the_ledger_and_audit_log_are_read_only_for_everyone(
    client, tenant, login, role, model
):
    obj = _read_only_rows(tenant)[model]
    login(role)
    manager = type(obj)._default_manager
    before = manager.values().get(pk=obj.pk)

    page = client.get(reverse(f"admin:billing_{model}_change", args=[obj.pk]))
    add = client.get(reverse(f"admin:billing_{model}_add"))
    changed = client.post(
        reverse(f"admin:billing_{model}_change", args=[obj.pk]), {"note": "edited"}
    )
    deleted = client.post(
        reverse(f"admin:billing_{model}_delete", args=[obj.pk]), {"post": "yes"}
    )
    bulk_deleted = _act(client, model, "delete_selected", [obj.pk])

    assert page.status_code == 200
    assert not page.context["has_change_permission"]
    assert b'name="_save"' not in page.content
    assert add.status_code == 403
    assert changed.status_code == 403
    assert deleted.status_code == 403
    assert bulk_deleted.status_code == 403
    assert manager.values().get(pk=obj.pk) == before


@pytest.mark.parametrize("role", ROLES)
def test_analytics_runs_are_for_superusers_and_read_only(client, login, role):
    at = datetime(2026, 11, 20, tzinfo=UTC)
    run = AnalyticsRun.objects.create(
        kind="rollup",
        period_start=at,
        period_end=at + timedelta(days=1),
        started_at=at,
    )
    login(role)

    listed = client.get(reverse("admin:billing_analyticsrun_changelist"))
    page = client.get(reverse("admin:billing_analyticsrun_change", args=[run.pk]))
    changed = client.post(
        reverse("admin:billing_analyticsrun_change", args=[run.pk]), {"error": "x"}
    )

    expected = 200 if role == "superuser" else 403
    assert (listed.status_code, page.status_code) == (expected, expected)
    assert changed.status_code == 403
    assert AnalyticsRun.objects.get(pk=run.pk).error == ""


# The RQ dashboard ----------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_only_superusers_see_and_reach_the_rq_dashboard(client, login, role, queue):
    login(role)

    index = client.get(reverse("admin:index")).content.decode()
    dashboard = client.get(reverse("django_rq:home"))
    queue_page = client.get(reverse("django_rq:jobs", args=[0]))
    stats = client.get(reverse("django_rq:home_json"))
    in_admin = client.get("/admin/django_rq/dashboard/")

    link = f'href="{reverse("django_rq:home")}"'
    if role == "superuser":
        assert link in index
        assert (dashboard.status_code, queue_page.status_code) == (200, 200)
        assert stats.status_code == 200
    else:
        assert link not in index
        assert (dashboard.status_code, queue_page.status_code) == (403, 403)
        assert stats.status_code == 403
    # One dashboard, at /django-rq/: django-rq's copy in the admin is gone.
    assert in_admin.status_code == 404


def test_the_rq_dashboard_sends_the_signed_out_to_the_admin_login(client):
    response = client.get(reverse("django_rq:home"))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
