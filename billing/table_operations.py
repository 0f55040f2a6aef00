"""Migration operations that act on one model's table, on Postgres only."""

from django.db import migrations


class PostgresTableOperation(migrations.operations.base.Operation):
    """
    Base for SQL a migration runs against a model's table. SQLite (the
    embedded default) has no RLS or triggers of this kind, so it skips them.
    """

    reversible = True
    reduces_to_sql = True

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name

    def state_forwards(self, app_label, state) -> None:
        pass

    def table(self, app_label, state) -> str:
        return state.apps.get_model(app_label, self.model_name)._meta.db_table

    def forwards_sql(self, table: str, quote) -> list[str]:
        raise NotImplementedError

    def backwards_sql(self, table: str, quote) -> list[str]:
        raise NotImplementedError

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            table = self.table(app_label, to_state)
            for sql in self.forwards_sql(table, schema_editor.quote_name):
                schema_editor.execute(sql, params=None)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            table = self.table(app_label, from_state)
            for sql in self.backwards_sql(table, schema_editor.quote_name):
                schema_editor.execute(sql, params=None)

    def deconstruct(self):
        return (self.__class__.__name__, [self.model_name], {})


class ExcludeOverlappingPeriods(PostgresTableOperation):
    """
    Rows with the same ``key`` never overlap in time: an exclusion constraint
    over ``[valid_from, valid_to)``, where NULL is unbounded. Needs the
    ``btree_gist`` extension (trusted since Postgres 13: the database owner
    may create it). SQLite relies on the service's check.
    """

    def __init__(self, model_name: str, key: str = "model_name") -> None:
        super().__init__(model_name)
        self.key = key

    def name(self, table: str) -> str:
        return f"{table}_no_overlap"

    def forwards_sql(self, table: str, quote) -> list[str]:
        return [
            "CREATE EXTENSION IF NOT EXISTS btree_gist",
            f"ALTER TABLE {quote(table)} ADD CONSTRAINT {quote(self.name(table))} "
            f"EXCLUDE USING gist ({quote(self.key)} WITH =, "
            "tstzrange(valid_from, valid_to) WITH &&)",
        ]

    def backwards_sql(self, table: str, quote) -> list[str]:
        return [
            f"ALTER TABLE {quote(table)} DROP CONSTRAINT IF EXISTS "
            f"{quote(self.name(table))}"
        ]

    def deconstruct(self):
        return (self.__class__.__name__, [self.model_name], {"key": self.key})

    def describe(self) -> str:
        return f"Keep the periods of one {self.key} of {self.model_name} apart"
