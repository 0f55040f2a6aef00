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

from django.db import migrations

from billing.tenancy import BYPASS_SETTING, TENANT_IDS_SETTING

POLICY_NAME = "tenant_isolation"

POLICY_EXPRESSION = (
    f"current_setting('{BYPASS_SETTING}', true) = 'on' "
    f"OR tenant_id = ANY (string_to_array("
    f"NULLIF(current_setting('{TENANT_IDS_SETTING}', true), ''), ',')::bigint[])"
)


class EnableRowLevelSecurity(migrations.operations.base.Operation):
    """Migration operation: RLS + FORCE + the tenant policy on a model's table."""

    reversible = True
    reduces_to_sql = True

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name

    def state_forwards(self, app_label, state) -> None:
        pass

    def _table(self, app_label, state) -> str:
        return state.apps.get_model(app_label, self.model_name)._meta.db_table

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return
        table = schema_editor.quote_name(self._table(app_label, to_state))
        schema_editor.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        schema_editor.execute(
            f"CREATE POLICY {POLICY_NAME} ON {table} "
            f"USING ({POLICY_EXPRESSION}) WITH CHECK ({POLICY_EXPRESSION})"
        )

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return
        table = schema_editor.quote_name(self._table(app_label, from_state))
        schema_editor.execute(f"DROP POLICY IF EXISTS {POLICY_NAME} ON {table}")
        schema_editor.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")

    def describe(self) -> str:
        return f"Enable row-level security on {self.model_name}"

    def deconstruct(self):
        return (self.__class__.__name__, [self.model_name], {})
