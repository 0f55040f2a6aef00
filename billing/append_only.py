"""Postgres trigger that makes a table append-only (the audit log)."""

from billing.table_operations import PostgresTableOperation

FUNCTION_SQL = """
CREATE OR REPLACE FUNCTION billing_reject_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql
"""


class MakeAppendOnly(PostgresTableOperation):
    """Reject UPDATE and DELETE on a model's table; SQLite relies on the code."""

    def forwards_sql(self, table: str, quote) -> list[str]:
        return [
            FUNCTION_SQL,
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON "
            f"{quote(table)} FOR EACH ROW EXECUTE FUNCTION billing_reject_change()",
        ]

    def backwards_sql(self, table: str, quote) -> list[str]:
        return [f"DROP TRIGGER IF EXISTS {table}_append_only ON {quote(table)}"]

    def describe(self) -> str:
        return f"Make {self.model_name} append-only"
