"""
Postgres row-level security for tenant-owned tables.

Each tenant-owned table gets ``ENABLE`` and ``FORCE ROW LEVEL SECURITY`` and
one policy that admits a row only when its tenant is in the transaction-local
``app.tenant_ids`` list (set by ``billing.tenancy.tenant_context``) or when the
unit of work is explicitly cross-tenant (``app.rls_bypass = 'on'``). With no
setting at all, nothing is visible: forgetting the context fails closed.

The application must connect as a role that is neither superuser nor
``BYPASSRLS`` (``manage.py create_app_role``); superusers skip RLS entirely.
On SQLite these operations do nothing and the same code runs without RLS.
"""

from billing.table_operations import PostgresTableOperation
from billing.tenancy import BYPASS_SETTING, TENANT_IDS_SETTING

POLICY_NAME = "tenant_isolation"

POLICY_EXPRESSION = (
    f"current_setting('{BYPASS_SETTING}', true) = 'on' "
    f"OR tenant_id = ANY (string_to_array("
    f"NULLIF(current_setting('{TENANT_IDS_SETTING}', true), ''), ',')::bigint[])"
)


class EnableRowLevelSecurity(PostgresTableOperation):
    """Migration operation: RLS + FORCE + the tenant policy on a model's table."""

    def forwards_sql(self, table: str, quote) -> list[str]:
        table = quote(table)
        return [
            f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
            f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
            f"CREATE POLICY {POLICY_NAME} ON {table} "
            f"USING ({POLICY_EXPRESSION}) WITH CHECK ({POLICY_EXPRESSION})",
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
