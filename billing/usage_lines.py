"""
Triggers that keep ``UsageLine`` rows in step with the ledger.

Whenever a usage record or adjustment is inserted, deleted, or updated in a
way that changes its lines (breakdown, day, scopes, or whether it is
billable), its lines are deleted and written again from its
``model_breakdown``, in the same statement. Marking rows reported changes
none of that, so the Stripe sender's updates fire nothing.

The SQL that writes an entry's lines is the same set-based ``INSERT ...
SELECT`` for one row (in a trigger) and for the whole ledger (filling the
table when it is created, and in ``bench/rollup.py``). Postgres and SQLite
(the embedded default) each get their own dialect of it.
"""

from __future__ import annotations

from django.db import migrations

from billing.table_operations import PostgresTableOperation

BILLABLE = "('pending', 'reported')"

LINE_COLUMNS = """tenant_id, usage_record_id, adjustment_id, trace_timestamp,
    project_id, agent_id, epic_id, user_id, model, counts_trace,
    input_tokens, output_tokens, cached_tokens, cost"""

# A breakdown member m as a line's model, and as its amounts, per dialect.
MODEL = "COALESCE(m.key, '')"
AMOUNTS = {
    "postgresql": """COALESCE((m.value->>'input')::bigint, 0),
        COALESCE((m.value->>'output')::bigint, 0),
        COALESCE((m.value->>'cached')::bigint, 0),
        COALESCE((m.value->>'cost')::numeric, 0)""",
    "sqlite": """COALESCE(CAST(json_extract(m.value, '$.input') AS INTEGER), 0),
        COALESCE(CAST(json_extract(m.value, '$.output') AS INTEGER), 0),
        COALESCE(CAST(json_extract(m.value, '$.cached') AS INTEGER), 0),
        COALESCE(CAST(json_extract(m.value, '$.cost') AS REAL), 0)""",
}
# Outer join of a record r with its breakdown's members m (one row of NULLs
# for an empty breakdown, so the trace still counts), and which member is
# the record's first: the line that counts the trace.
RECORD_MEMBERS = {
    "postgresql": (
        "LEFT JOIN LATERAL jsonb_each(r.model_breakdown) WITH ORDINALITY m ON true",
        "COALESCE(m.ordinality, 1) = 1",
    ),
    "sqlite": (
        "LEFT JOIN json_each(r.model_breakdown) m",
        "(m.key IS NULL OR m.key = "
        "(SELECT min(f.key) FROM json_each(r.model_breakdown) f))",
    ),
}
ADJUSTMENT_MEMBERS = {
    "postgresql": "jsonb_each(a.model_breakdown) m",
    "sqlite": "json_each(a.model_breakdown) m",
}


def record_lines_sql(vendor: str, where: str = "true") -> str:
    """INSERT the lines of the billable records matching ``where`` (alias r)."""
    join, first = RECORD_MEMBERS[vendor]
    return f"""
        INSERT INTO billing_usageline ({LINE_COLUMNS})
        SELECT r.tenant_id, r.id, NULL, r.trace_timestamp, r.project_id,
               r.agent_id, r.epic_id, r.user_id, {MODEL}, {first},
               {AMOUNTS[vendor]}
        FROM billing_usagerecord r {join}
        WHERE r.status IN {BILLABLE} AND {where}
    """


def adjustment_lines_sql(vendor: str, where: str = "true") -> str:
    """INSERT the lines of the billable adjustments matching ``where`` (alias a)."""
    return f"""
        INSERT INTO billing_usageline ({LINE_COLUMNS})
        SELECT a.tenant_id, a.usage_record_id, a.id, a.trace_timestamp,
               r.project_id, r.agent_id, r.epic_id, r.user_id, {MODEL},
               false, {AMOUNTS[vendor]}
        FROM billing_usageadjustment a
        JOIN billing_usagerecord r ON r.id = a.usage_record_id,
             {ADJUSTMENT_MEMBERS[vendor]}
        WHERE a.status IN {BILLABLE} AND {where}
    """


# Per ledger table: the SQL writing its rows' lines, the condition naming
# the triggering row, which lines are its own, and what they are made of.
SOURCES = {
    "billing_usagerecord": (
        record_lines_sql,
        "r.id = NEW.id",
        "usage_record_id = OLD.id AND adjustment_id IS NULL",
        (
            "model_breakdown",
            "trace_timestamp",
            "project_id",
            "agent_id",
            "epic_id",
            "user_id",
            "tenant_id",
        ),
    ),
    "billing_usageadjustment": (
        adjustment_lines_sql,
        "a.id = NEW.id",
        "adjustment_id = OLD.id",
        ("model_breakdown", "trace_timestamp", "usage_record_id", "tenant_id"),
    ),
}


def _changed(vendor: str, columns: tuple[str, ...]) -> str:
    """Whether an UPDATE changed what the row's lines are made of."""
    if vendor == "postgresql":
        old = ", ".join(f"OLD.{c}" for c in columns)
        new = ", ".join(f"NEW.{c}" for c in columns)
        return (
            f"(({old}, OLD.status IN {BILLABLE}) "
            f"IS DISTINCT FROM ({new}, NEW.status IN {BILLABLE}))"
        )
    changed = [f"OLD.{c} IS NOT NEW.{c}" for c in columns]
    changed.append(f"(OLD.status IN {BILLABLE}) IS NOT (NEW.status IN {BILLABLE})")
    return " OR ".join(changed)


def postgres_sql(table: str) -> list[str]:
    lines_of, one_row, delete, columns = SOURCES[table]
    function = f"{table}_lines"
    return [
        f"""
        CREATE OR REPLACE FUNCTION {function}() RETURNS trigger AS $$
        BEGIN
            IF TG_OP <> 'INSERT' THEN
                DELETE FROM billing_usageline WHERE {delete};
            END IF;
            IF TG_OP <> 'DELETE' THEN
                {lines_of("postgresql", one_row)};
            END IF;
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql
        """,
        f"""CREATE TRIGGER {table}_lines AFTER INSERT OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION {function}()""",
        f"""CREATE TRIGGER {table}_lines_update AFTER UPDATE ON {table}
            FOR EACH ROW WHEN {_changed("postgresql", columns)}
            EXECUTE FUNCTION {function}()""",
    ]


def sqlite_sql(table: str) -> list[str]:
    lines_of, one_row, delete, columns = SOURCES[table]
    return [
        f"""CREATE TRIGGER {table}_lines_insert AFTER INSERT ON {table}
            BEGIN {lines_of("sqlite", one_row)}; END""",
        f"""CREATE TRIGGER {table}_lines_update AFTER UPDATE ON {table}
            WHEN {_changed("sqlite", columns)}
            BEGIN DELETE FROM billing_usageline WHERE {delete};
                  {lines_of("sqlite", one_row)}; END""",
        f"""CREATE TRIGGER {table}_lines_delete AFTER DELETE ON {table}
            BEGIN DELETE FROM billing_usageline WHERE {delete}; END""",
    ]


def drop_sql(vendor: str, table: str) -> list[str]:
    if vendor == "postgresql":
        return [
            f"DROP TRIGGER IF EXISTS {table}_lines ON {table}",
            f"DROP TRIGGER IF EXISTS {table}_lines_update ON {table}",
            f"DROP FUNCTION IF EXISTS {table}_lines()",
        ]
    return [
        f"DROP TRIGGER IF EXISTS {table}_lines_{op}"
        for op in ("insert", "update", "delete")
    ]


class MaintainUsageLines(migrations.operations.base.Operation):
    """Create the triggers on both ledger tables and write the existing lines."""

    reversible = True
    reduces_to_sql = True

    def state_forwards(self, app_label, state) -> None:
        pass

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        # Here, not at the top: bench/rollup.py uses the SQL above without
        # setting Django up, and billing.tenancy defines a model.
        from billing.tenancy import BYPASS_SETTING

        vendor = schema_editor.connection.vendor
        build = postgres_sql if vendor == "postgresql" else sqlite_sql
        for table in SOURCES:
            for sql in build(table):
                schema_editor.execute(sql, params=None)
        if vendor == "postgresql":
            # All tenants' rows, also when the migrating role is subject to RLS.
            schema_editor.execute(
                f"SELECT set_config('{BYPASS_SETTING}', 'on', true)", params=None
            )
        schema_editor.execute("DELETE FROM billing_usageline", params=None)
        schema_editor.execute(record_lines_sql(vendor), params=None)
        schema_editor.execute(adjustment_lines_sql(vendor), params=None)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        for table in SOURCES:
            for sql in drop_sql(schema_editor.connection.vendor, table):
                schema_editor.execute(sql, params=None)

    def describe(self) -> str:
        return "Keep usage lines in step with the ledger (triggers)"


class CreateDayIndex(PostgresTableOperation):
    """
    A BRIN index on the lines' trace time: the rollup reads one day of a
    table that grows by millions of lines a day, written roughly in time
    order, which a BRIN index narrows to the day's blocks at a tiny fraction
    of a B-tree's size and write cost. SQLite (small ledgers) scans.
    """

    def forwards_sql(self, table: str, quote) -> list[str]:
        return [
            f"CREATE INDEX {table}_day ON {quote(table)} USING brin (trace_timestamp)"
        ]

    def backwards_sql(self, table: str, quote) -> list[str]:
        return [f"DROP INDEX IF EXISTS {table}_day"]

    def describe(self) -> str:
        return f"Create a BRIN index on {self.model_name}.trace_timestamp"
