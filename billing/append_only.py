"""Postgres trigger that makes a table append-only (the audit log)."""

from django.db import migrations

FUNCTION_SQL = """
CREATE OR REPLACE FUNCTION billing_reject_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql
"""


class MakeAppendOnly(migrations.operations.base.Operation):
    """Reject UPDATE and DELETE on a model's table; SQLite relies on the code."""

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
        table = self._table(app_label, to_state)
        schema_editor.execute(FUNCTION_SQL, params=None)
        schema_editor.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON "
            f"{schema_editor.quote_name(table)} "
            f"FOR EACH ROW EXECUTE FUNCTION billing_reject_change()"
        )

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return
        table = self._table(app_label, from_state)
        schema_editor.execute(
            f"DROP TRIGGER IF EXISTS {table}_append_only ON "
            f"{schema_editor.quote_name(table)}"
        )

    def describe(self) -> str:
        return f"Make {self.model_name} append-only"

    def deconstruct(self):
        return (self.__class__.__name__, [self.model_name], {})
