"""
Postgres row-level security for tenant-owned tables.

Each tenant-owned table gets ``ENABLE`` and ``FORCE ROW LEVEL SECURITY`` and
one policy that admits a row only when its tenant is in the transaction-local
``app.tenant_ids`` list (set by ``billing.tenancy.tenant_context``) or when the
unit of work is explicitly cross-tenant (``app.rls_bypass = 'on'``). With no
setting at all, nothing is visible: forgetting the context fails closed.

Any role can set a custom setting, so the bypass alone would let a SQL
injection or a bug in the web process read every tenant (issue 11). The
policy honours it only for roles that are members of the ``NOLOGIN`` group
``billing_rls_bypass`` (the worker role that jobs and commands use, see
``billing.app_role``) or of the table's owner (migrations; the owner could
switch RLS off anyway). The web role is neither: the bypass does nothing for
it. Both checks look the roles up at run time, so the policy never fails when
the group does not exist yet (it then admits nobody), and each is an
uncorrelated sub-select, which Postgres runs once per query (an InitPlan),
not once per row.

Applications connect as roles that are neither superuser nor ``BYPASSRLS``
(``manage.py create_app_role``); superusers skip RLS entirely. On SQLite
these operations do nothing and the same code runs without RLS.
"""

from django.db import migrations

from billing.table_operations import PostgresTableOperation
from billing.tenancy import BYPASS_SETTING, TENANT_IDS_SETTING, USER_ID_SETTING

POLICY_NAME = "tenant_isolation"
# Members of this group may use the bypass; it has no privileges of its own.
BYPASS_GROUP = "billing_rls_bypass"

# The web process looks up the signed-in user's own memberships, in every
# tenant, before it knows which tenants to scope to; USER_ID_SETTING names
# that user for a SELECT-only policy on the membership table (migration 0011).
OWN_MEMBERSHIPS_POLICY = "own_memberships"
OWN_MEMBERSHIPS_EXPRESSION = (
    f"user_id = NULLIF(current_setting('{USER_ID_SETTING}', true), '')::bigint"
)

# Every setting is read in a scalar subquery: Postgres evaluates it once per
# query (an InitPlan) instead of once per row. Parsing the tenant list on
# every row cost a superuser's admin 4.4 s to count 1M anomalies of 200
# tenants (0.22 s this way). The outer cast, a no-op, makes ANY take the
# subquery's array rather than its rows.
TENANT_IDS_EXPRESSION = (
    f"tenant_id = ANY ((SELECT string_to_array(NULLIF("
    f"current_setting('{TENANT_IDS_SETTING}', true), ''), ',')::bigint[])::bigint[])"
)


def may_bypass_expression(table: str, quote, group: str = BYPASS_GROUP) -> str:
    """True when the current role may lift RLS on ``table``; never an error."""
    # to_regrole() is NULL for a missing role and pg_has_role() NULL for a
    # NULL role: no group yet means no bypass, not a failed query.
    relation = quote(table).replace("'", "''")
    of_group = f"pg_has_role(current_user, to_regrole('{group}'), 'MEMBER')"
    of_owner = "pg_has_role(current_user, relowner, 'MEMBER')"
    owner = f"{of_owner} FROM pg_class WHERE oid = '{relation}'::regclass"
    return f"((SELECT {of_group}) OR (SELECT {owner}))"


def policy_expression(table: str, quote) -> str:
    """The tenant policy of ``table``, for both USING and WITH CHECK."""
    return (
        f"((SELECT current_setting('{BYPASS_SETTING}', true) = 'on') "
        f"AND {may_bypass_expression(table, quote)}) "
        f"OR {TENANT_IDS_EXPRESSION}"
    )


class EnableRowLevelSecurity(PostgresTableOperation):
    """Migration operation: RLS + FORCE + the tenant policy on a model's table."""

    def forwards_sql(self, table: str, quote) -> list[str]:
        expression = policy_expression(table, quote)
        table = quote(table)
        return [
            f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
            f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
            f"CREATE POLICY {POLICY_NAME} ON {table} "
            f"USING ({expression}) WITH CHECK ({expression})",
        ]

    def backwards_sql(self, table: str, quote) -> list[str]:
        table = quote(table)
        return [
            f"DROP POLICY IF EXISTS {POLICY_NAME} ON {table}",
            f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY",
            f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY",
        ]

    def describe(self) -> str:
        return f"Enable row-level security on {self.model_name}"


class RenewTenantPolicies(migrations.operations.base.Operation):
    """
    Migration operation: set the tenant policy of every table that has one
    (in any app: found in ``pg_policies``) to ``policy_expression``, or back
    to ``previous`` (the expression the policies had, the same for every
    table) when unapplied. Postgres only.
    """

    reversible = True
    reduces_to_sql = True

    def __init__(self, *, previous: str | None) -> None:
        # None: the previous expressions meant the same (only faster or
        # slower); unapplying leaves the current one.
        self.previous = previous

    def state_forwards(self, app_label, state) -> None:
        pass

    def _tables(self, schema_editor) -> list[str]:
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                "SELECT tablename FROM pg_policies WHERE policyname = %s "
                "AND schemaname = current_schema() ORDER BY tablename",
                [POLICY_NAME],
            )
            return [table for (table,) in cursor.fetchall()]

    def _alter(self, schema_editor, expression_of) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return
        quote = schema_editor.quote_name
        for table in self._tables(schema_editor):
            expression = expression_of(table, quote)
            schema_editor.execute(
                f"ALTER POLICY {POLICY_NAME} ON {quote(table)} "
                f"USING ({expression}) WITH CHECK ({expression})",
                params=None,
            )

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        self._alter(schema_editor, policy_expression)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if self.previous is not None:
            self._alter(schema_editor, lambda table, quote: self.previous)

    def deconstruct(self):
        return (self.__class__.__name__, [], {"previous": self.previous})

    def describe(self) -> str:
        return "Set every tenant policy to billing.rls.policy_expression"


class CreateOwnMembershipsPolicy(PostgresTableOperation):
    """Migration operation: a user may read their own memberships (SELECT)."""

    def forwards_sql(self, table: str, quote) -> list[str]:
        return [
            f"CREATE POLICY {OWN_MEMBERSHIPS_POLICY} ON {quote(table)} "
            f"FOR SELECT USING ({OWN_MEMBERSHIPS_EXPRESSION})"
        ]

    def backwards_sql(self, table: str, quote) -> list[str]:
        return [f"DROP POLICY IF EXISTS {OWN_MEMBERSHIPS_POLICY} ON {quote(table)}"]

    def describe(self) -> str:
        return f"Let a user read their own {self.model_name} rows"


PLATFORM_ROWS_POLICY = "platform_rows"


class AllowPlatformRows(PostgresTableOperation):
    """
    Policies on a tenant-owned table for rows of no tenant (platform data,
    such as the audit of the global price table): every role may read and
    insert them, never change them. Policies are permissive: a row passes
    the tenant policy or these.
    """

    def forwards_sql(self, table: str, quote) -> list[str]:
        return [
            f"CREATE POLICY {PLATFORM_ROWS_POLICY}_read ON {quote(table)} "
            "FOR SELECT USING (tenant_id IS NULL)",
            f"CREATE POLICY {PLATFORM_ROWS_POLICY}_insert ON {quote(table)} "
            "FOR INSERT WITH CHECK (tenant_id IS NULL)",
        ]

    def backwards_sql(self, table: str, quote) -> list[str]:
        return [
            f"DROP POLICY IF EXISTS {PLATFORM_ROWS_POLICY}_{verb} ON {quote(table)}"
            for verb in ("read", "insert")
        ]

    def describe(self) -> str:
        return f"Let every role read and add rows of no tenant in {self.model_name}"
