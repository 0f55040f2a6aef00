"""
The two application roles (issue 11, item 3): the web role can never lift
RLS, not even by setting the bypass itself; the worker role can, and only
when it asks. Real Postgres roles, switched to with SET LOCAL ROLE inside
the test's transaction (the test connection is a superuser, which RLS skips).
"""

import importlib
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from billing.app_role import AppRoleError, app_role_ensure, app_roles_ensure
from billing.audit import Actor, audit_log_write
from billing.ledger import TraceUsage, ledger_merge
from billing.models import Membership, UsageRecord
from billing.rls import BYPASS_GROUP, POLICY_NAME, may_bypass_expression
from billing.rollup import rollup_day
from billing.tenancy import tenant_context
from tests.conftest import APP_ROLE
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

WORKER_ROLE = "billing_worker_test"
OWNER_ROLE = "billing_owner_test"
AT = datetime(2026, 11, 20, 9, tzinfo=UTC)
# Tables the seed below fills for both tenants, so "sees none of the other
# tenant's rows" is never vacuously true on them.
SEEDED = {
    "billing_membership",
    "billing_auditlog",
    "billing_usagerecord",
    "billing_dailyscopeusage",
    "billing_costsummary",
}


def rls_tables() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename FROM pg_policies WHERE policyname = %s "
            "AND schemaname = current_schema() ORDER BY tablename",
            [POLICY_NAME],
        )
        return [table for (table,) in cursor.fetchall()]


def tenants_seen(table: str) -> set[int]:
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT DISTINCT tenant_id FROM "{table}"')  # noqa: S608
        return {tenant_id for (tenant_id,) in cursor.fetchall()}


def execute(statement: str, params=None):
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else None


def own_table(table: str, role: str) -> None:
    # Deferred foreign key checks of the rows written so far must run before
    # Postgres lets a table change owner.
    execute("SET CONSTRAINTS ALL IMMEDIATE")
    execute(f"ALTER TABLE {table} OWNER TO {role}")


def set_role(role: str) -> None:
    execute(f"SET LOCAL ROLE {role}")


@pytest.fixture
def seeded(tenant, other_tenant):
    """Rows of both tenants in every table in SEEDED, written as the superuser."""
    for owner in (tenant, other_tenant):
        MembershipFactory(tenant=owner)
        audit_log_write(actor=Actor.system(), action="test", obj=owner, tenant=owner)
        usage = TraceUsage("t1", AT, AT, project_id="web", agent_id="bot")
        usage.entries = {"o1": ["gpt-4o", 1000, 100, 50, "0.0100", "price_table"]}
        with tenant_context([owner.pk]):
            ledger_merge(tenant=owner, traces={"t1": usage})
    rollup_day(day=AT.date())
    everyone = {tenant.pk, other_tenant.pk}
    for table in SEEDED:
        assert tenants_seen(table) == everyone, table
    return tenant, other_tenant


@pytest.fixture
def worker_role(db):
    app_role_ensure(role=WORKER_ROLE, bypass=True)
    return WORKER_ROLE


@pytest.fixture
def web_role(as_app_role):
    # as_app_role ensures the web role (no bypass); we switch explicitly.
    return APP_ROLE


@pytest.mark.parametrize("how", ["set", "set_config"])
def test_web_role_setting_the_bypass_sees_no_other_tenant(seeded, web_role, how):
    tenant, other = seeded
    tables = rls_tables()
    assert set(tables) >= SEEDED
    set_role(web_role)
    execute("SELECT set_config('app.tenant_ids', %s, true)", [str(tenant.pk)])
    if how == "set":
        execute("SET app.rls_bypass = 'on'")
    else:
        execute("SELECT set_config('app.rls_bypass', 'on', false)")
    assert execute("SHOW app.rls_bypass") == [("on",)]

    for table in tables:
        assert other.pk not in tenants_seen(table), table
    for table in SEEDED:
        assert tenants_seen(table) == {tenant.pk}, table


def test_web_role_asking_for_all_tenants_sees_nothing(seeded, web_role):
    set_role(web_role)
    with tenant_context(all_tenants=True):
        for table in rls_tables():
            assert tenants_seen(table) == set(), table


def test_web_role_cannot_write_into_another_tenant_with_the_bypass(seeded, web_role):
    tenant, other = seeded
    user = UserFactory()
    set_role(web_role)
    execute("SELECT set_config('app.tenant_ids', %s, true)", [str(tenant.pk)])
    execute("SET app.rls_bypass = 'on'")
    with pytest.raises(DatabaseError, match="row-level security"):
        Membership.objects.create(tenant=other, user=user)


def test_web_role_with_its_tenant_sees_only_that_tenant(seeded, web_role):
    tenant, _ = seeded
    set_role(web_role)
    with tenant_context([tenant.pk]):
        for table in SEEDED:
            assert tenants_seen(table) == {tenant.pk}, table


def test_worker_role_with_the_bypass_sees_every_tenant(seeded, worker_role):
    everyone = {tenant.pk for tenant in seeded}
    set_role(worker_role)
    with tenant_context(all_tenants=True):
        for table in SEEDED:
            assert tenants_seen(table) == everyone, table


def test_worker_role_without_a_context_sees_nothing(seeded, worker_role):
    set_role(worker_role)
    for table in rls_tables():
        assert tenants_seen(table) == set(), table
    with tenant_context([]):
        assert tenants_seen("billing_membership") == set()


def test_worker_role_with_one_tenant_sees_only_that_tenant(seeded, worker_role):
    tenant, _ = seeded
    set_role(worker_role)
    with tenant_context([tenant.pk]):
        for table in SEEDED:
            assert tenants_seen(table) == {tenant.pk}, table


def test_worker_role_writes_a_page_of_records_in_one_statement(seeded, worker_role):
    """New records go in by one INSERT and changed ones by one UPDATE, under
    the tenant's policy (billing.ledger_batch)."""
    tenant, other = seeded
    set_role(worker_role)
    gpt = ["gpt-4o", 1000, 100, 50, "0.0100", "price_table"]
    traces = {}
    for trace_id, observation in (("t1", "o9"), ("t2", "o1"), ("t3", "o1")):
        # t1 is pending: it absorbs a new observation.
        traces[trace_id] = TraceUsage(trace_id, AT, AT, project_id="web")
        traces[trace_id].entries = {observation: gpt}
    with tenant_context([tenant.pk]), CaptureQueriesContext(connection) as queries:
        ledger_merge(tenant=tenant, traces=traces)
        costs = dict(UsageRecord.objects.values_list("trace_id", "cost"))
    writes = [q["sql"].split()[0] for q in queries if "usagerecord" in q["sql"]]
    assert writes.count("INSERT") == 1
    assert writes.count("UPDATE") == 1
    assert costs == {
        "t1": Decimal("0.02"),
        "t2": Decimal("0.01"),
        "t3": Decimal("0.01"),
    }
    with tenant_context([other.pk]):
        assert dict(UsageRecord.objects.values_list("trace_id", "cost")) == {
            "t1": Decimal("0.01")
        }


def test_the_table_owner_may_bypass_as_migrations_do(seeded):
    """A non-superuser owner is bound by FORCE RLS, but may use the bypass."""
    everyone = {tenant.pk for tenant in seeded}
    execute(f"CREATE ROLE {OWNER_ROLE} NOLOGIN")
    own_table("billing_membership", OWNER_ROLE)
    set_role(OWNER_ROLE)
    assert tenants_seen("billing_membership") == set()
    with tenant_context(all_tenants=True):
        assert tenants_seen("billing_membership") == everyone


def test_the_bypass_check_never_fails_without_the_group(seeded, web_role):
    """Before create_app_role has run, the group does not exist: no bypass."""
    missing = may_bypass_expression(
        "billing_membership", connection.ops.quote_name, group="no_such_role_xyz"
    )
    set_role(web_role)
    assert execute(f"SELECT {missing}") == [(None,)]


def test_the_settings_and_role_checks_run_once_per_query(seeded, web_role):
    # Per row, parsing a superuser's list of 200 tenants cost 4.4 s on a
    # count of 1M rows: the bypass setting, the two role checks and the
    # tenant list are each evaluated once (an InitPlan), never per row.
    set_role(web_role)
    execute("SET app.rls_bypass = 'on'")
    plan = "\n".join(
        line for (line,) in execute("EXPLAIN SELECT * FROM billing_usagerecord")
    )
    assert plan.count("InitPlan") == 4, plan
    assert "SubPlan" not in plan, plan
    assert "OR (tenant_id = ANY ($3)))" in plan, plan


def test_a_user_reads_their_own_memberships_in_every_tenant(seeded, web_role):
    """The web process's lookup of which tenants a user belongs to."""
    tenant, other = seeded
    user = UserFactory()
    mine = {
        MembershipFactory(user=user, tenant=tenant).pk,
        MembershipFactory(user=user, tenant=other).pk,
    }
    set_role(web_role)
    execute("SELECT set_config('app.user_id', %s, true)", [str(user.pk)])
    assert set(Membership.objects.values_list("pk", flat=True)) == mine
    # Reading only: the rows stay out of reach of UPDATE and DELETE.
    assert Membership.objects.filter(pk__in=mine).update(role="admin") == 0
    assert Membership.objects.filter(pk__in=mine).delete()[0] == 0


def test_unapplying_0011_restores_the_old_policy(seeded, web_role):
    migration = importlib.import_module(
        "billing.migrations.0011_rls_bypass_worker_only"
    ).Migration
    renew = migration.operations[0]
    everyone = {tenant.pk for tenant in seeded}

    def web_with_bypass_sees():
        set_role(web_role)
        with tenant_context(all_tenants=True):
            seen = tenants_seen("billing_usagerecord")
        execute("RESET ROLE")
        return seen

    with connection.schema_editor() as editor:
        renew.database_backwards("billing", editor, None, None)
    assert web_with_bypass_sees() == everyone
    with connection.schema_editor() as editor:
        renew.database_forwards("billing", editor, None, None)
    assert web_with_bypass_sees() == set()


def role_state(role: str):
    rows = execute(
        "SELECT rolcanlogin, rolsuper, rolbypassrls, rolcreatedb, rolcreaterole, "
        "rolreplication, pg_has_role(rolname, to_regrole(%s), 'MEMBER') "
        "FROM pg_roles WHERE rolname = %s",
        [BYPASS_GROUP, role],
    )
    return rows[0] if rows else None


def privileges(role: str, table: str) -> set[str]:
    return {
        privilege
        for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
        if execute("SELECT has_table_privilege(%s, %s, %s)", [role, table, privilege])[
            0
        ][0]
    }


def test_create_app_role_makes_both_roles_and_is_idempotent(db):
    web, worker = "billing_app_idem_test", "billing_worker_idem_test"
    # A web role that could lift RLS and log in as a superuser: tightened.
    execute(f"CREATE ROLE {web} SUPERUSER BYPASSRLS")
    if role_state(BYPASS_GROUP) is None:
        execute(f"CREATE ROLE {BYPASS_GROUP} NOLOGIN")
    execute(f"GRANT {BYPASS_GROUP} TO {web}")

    call_command("create_app_role", role=web, worker_role=worker)
    with CaptureQueriesContext(connection) as queries:
        call_command("create_app_role", role=web, worker_role=worker)

    assert role_state(web) == (True, False, False, False, False, False, False)
    assert role_state(worker) == (True, False, False, False, False, False, True)
    group = role_state(BYPASS_GROUP)
    assert group[:6] == (False, False, False, False, False, False)
    for role in (web, worker):
        assert privileges(role, "billing_usagerecord") == {
            "SELECT",
            "INSERT",
            "UPDATE",
            "DELETE",
        }
        assert privileges(role, "billing_auditlog") == {"SELECT", "INSERT"}
    # The second run found nothing to change in the roles themselves.
    role_changes = [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].startswith(("CREATE ROLE", "ALTER ROLE", 'GRANT "', 'REVOKE "'))
    ]
    assert role_changes == []


def test_create_app_role_takes_passwords_from_the_environment(db, monkeypatch):
    web, worker = "billing_app_pw_test", "billing_worker_pw_test"
    monkeypatch.setenv("APP_ROLE_PASSWORD", "web-secret")
    monkeypatch.setenv("WORKER_ROLE_PASSWORD", "worker-secret")

    call_command("create_app_role", role=web, worker_role=worker)

    rows = execute(
        "SELECT rolname, rolpassword IS NOT NULL FROM pg_authid "
        "WHERE rolname IN (%s, %s) ORDER BY rolname",
        [web, worker],
    )
    assert rows == [(web, True), (worker, True)]


def test_app_roles_refuse_what_could_lift_rls(db):
    with pytest.raises(AppRoleError, match="different"):
        app_roles_ensure(web_role="billing_same_test", worker_role="billing_same_test")
    owner = execute("SELECT current_user")[0][0]
    with pytest.raises(AppRoleError, match="owner"):
        app_role_ensure(role=owner)
    execute("CREATE ROLE billing_owners_test NOLOGIN")
    execute("CREATE ROLE billing_app_owner_test LOGIN")
    execute("GRANT billing_owners_test TO billing_app_owner_test")
    own_table("billing_membership", "billing_owners_test")
    with pytest.raises(AppRoleError, match="billing_membership"):
        app_role_ensure(role="billing_app_owner_test")


@pytest.mark.django_db(transaction=True)
def test_real_logins_as_both_roles(seeded):
    """Separate connections logged in as the roles create_app_role made."""
    call_command("create_app_role", role=APP_ROLE, worker_role=WORKER_ROLE)
    settings = connection.settings_dict

    def login(role):
        return psycopg.connect(
            host=settings["HOST"],
            port=settings["PORT"] or 5432,
            dbname=settings["NAME"],
            user=role,
        )

    count = "SELECT count(DISTINCT tenant_id) FROM billing_usagerecord"
    bypass = "SELECT set_config('app.rls_bypass', 'on', false)"
    with login(APP_ROLE) as web, login(WORKER_ROLE) as worker:
        for conn in (web, worker):
            assert conn.execute(
                "SELECT rolsuper, rolbypassrls FROM pg_roles "
                "WHERE rolname = current_user"
            ).fetchone() == (False, False)
            assert conn.execute(count).fetchone() == (0,)
            conn.execute(bypass)
        assert web.execute(count).fetchone() == (0,)
        assert worker.execute(count).fetchone() == (2,)


def test_a_staff_request_as_the_web_role_sees_its_tenants(client, seeded, web_role):
    tenant, _ = seeded
    user = UserFactory()
    user.user_permissions.add(Permission.objects.get(codename="view_membership"))
    MembershipFactory(user=user, tenant=tenant)
    client.force_login(user)
    set_role(web_role)

    response = client.get(reverse("admin:billing_membership_changelist"))

    assert response.status_code == 200
    assert response.context["cl"].result_count == 2


def test_a_superuser_request_as_the_web_role_sees_every_tenant(
    client, seeded, superuser, web_role
):
    client.force_login(superuser)
    set_role(web_role)

    response = client.get(reverse("admin:billing_membership_changelist"))

    assert response.status_code == 200
    assert response.context["cl"].result_count == 2
