"""
Triggers that keep ``DailyScopeUsage`` equal to the ledger's per-scope sums.

Every statement that inserts, updates or deletes usage records or
adjustments adds its net change to the rows of the days, scopes and models
it touches: new rows count in, old rows count out, so an update that changes
nothing billable (marking rows reported) nets to zero and writes nothing.
Only billable rows (pending or reported) count; adjustments count on their
trace's day under its record's scopes, and add no traces.

On Postgres these are statement-level triggers over transition tables: a
page of a thousand traces becomes one grouped upsert, not a thousand. SQLite
(the embedded default) has only row-level triggers, which run the same SQL
on a one-row source.

The SQL that adds a set of ledger rows is the same for a trigger and for the
whole ledger (filling the table when it is created, and in
``bench/rollup.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.db import migrations

BILLABLE = "('pending', 'reported')"
SOURCE_COLUMNS = ("tenant_id", "trace_timestamp", "model_breakdown", "status")
SCOPE_COLUMNS = ("project_id", "agent_id", "epic_id", "user_id")
AMOUNTS = ("input", "output", "cached")
USAGE_COLUMNS = """day, tenant_id, scope_type, project_id, scope_id, model,
    trace_count, model_trace_count, input_tokens, output_tokens,
    cached_tokens, cost"""
ADDED = ("trace_count", "model_trace_count", "input_tokens", "output_tokens")
ADDED += ("cached_tokens", "cost")


@dataclass(frozen=True)
class Dialect:
    day: str  # the UTC day of timestamp column {0}
    members: str  # outer join of entry e with its breakdown's members m
    first: str  # m is e's first member, or e has none
    amount: str  # member m's token count {0} as an integer
    cost: str  # member m's cost as a number


POSTGRES = Dialect(
    day="CAST(timezone('UTC', {0}) AS date)",
    members="LEFT JOIN LATERAL jsonb_each(e.model_breakdown) WITH ORDINALITY m ON true",
    first="COALESCE(m.ordinality, 1) = 1",
    amount="COALESCE(CAST(m.value->>'{0}' AS bigint), 0)",
    cost="COALESCE(CAST(m.value->>'cost' AS numeric), 0)",
)
SQLITE = Dialect(
    day="date({0})",
    members="LEFT JOIN json_each(e.model_breakdown) m",
    first="""(m.key IS NULL
        OR m.key = (SELECT min(f.key) FROM json_each(e.model_breakdown) f))""",
    amount="COALESCE(CAST(json_extract(m.value, '$.{0}') AS INTEGER), 0)",
    cost="COALESCE(CAST(json_extract(m.value, '$.cost') AS REAL), 0)",
)
DIALECTS = {"postgresql": POSTGRES, "sqlite": SQLITE}


def records(table: str, where: str = "true") -> str:
    """Billable usage records of ``table`` (alias r), as entries counting a trace."""
    columns = ", ".join(f"r.{c}" for c in (*SOURCE_COLUMNS, *SCOPE_COLUMNS))
    return f"""SELECT {columns}, 1 AS traces FROM {table} r
        WHERE r.status IN {BILLABLE} AND {where}"""


def adjustments(table: str, where: str = "true") -> str:
    """Billable adjustments of ``table`` (alias a) under their records' scopes."""
    own = ", ".join(f"a.{c}" for c in SOURCE_COLUMNS)
    scopes = ", ".join(f"r.{c}" for c in SCOPE_COLUMNS)
    return f"""SELECT {own}, {scopes}, 0 AS traces FROM {table} a
        JOIN billing_usagerecord r ON r.id = a.usage_record_id
        WHERE a.status IN {BILLABLE} AND {where}"""


def add_sql(vendor: str, entries: list[tuple[str, int]]) -> str:
    """
    Add ``entries`` (SQL of ledger entries, sign: 1 to count in, -1 to count
    out) to the daily scope usage, one row per day, scope and model.
    """
    sql = DIALECTS[vendor]
    signed = " UNION ALL ".join(
        f"SELECT e.*, {sign} AS sign FROM ({source}) e" for source, sign in entries
    )
    amounts = ", ".join(
        f"e.sign * {sql.amount.format(amount)} AS {amount}" for amount in AMOUNTS
    )
    sums = ", ".join(f"sum({c})" for c in ("traces", "model_traces", *AMOUNTS))
    nonzero = " OR ".join(
        f"sum({c}) <> 0" for c in ("traces", "model_traces", *AMOUNTS, "cost")
    )
    added = ", ".join(
        f"{c} = billing_dailyscopeusage.{c} + excluded.{c}" for c in ADDED
    )
    return f"""
        INSERT INTO billing_dailyscopeusage ({USAGE_COLUMNS})
        SELECT day, tenant_id, scope_type, project_id, scope_id, model, {sums},
               sum(cost)
        FROM (
            SELECT x.day, x.tenant_id, k.scope_type,
                   CASE WHEN k.scope_type IN ('agent', 'epic') THEN x.project_id
                        ELSE '' END AS project_id,
                   CASE k.scope_type WHEN 'project' THEN x.project_id
                        WHEN 'agent' THEN x.agent_id WHEN 'epic' THEN x.epic_id
                        ELSE x.user_id END AS scope_id,
                   x.model, x.traces, x.model_traces, x.input, x.output,
                   x.cached, x.cost
            FROM (
                SELECT {sql.day.format("e.trace_timestamp")} AS day, e.tenant_id,
                       e.project_id, e.agent_id, e.epic_id, e.user_id,
                       COALESCE(m.key, '') AS model,
                       e.sign * e.traces * CAST({sql.first} AS INTEGER) AS traces,
                       e.sign * e.traces * CAST(m.key IS NOT NULL AS INTEGER)
                           AS model_traces,
                       {amounts}, e.sign * {sql.cost} AS cost
                FROM ({signed}) e {sql.members}
            ) x
            CROSS JOIN (
                SELECT 'project' AS scope_type UNION ALL SELECT 'agent'
                UNION ALL SELECT 'epic' UNION ALL SELECT 'user'
            ) k
        ) scoped
        WHERE scope_id <> ''
        GROUP BY day, tenant_id, scope_type, project_id, scope_id, model
        HAVING {nonzero}
        ON CONFLICT (day, tenant_id, scope_type, project_id, scope_id, model)
        DO UPDATE SET {added}
    """


def fill_sql(vendor: str, where: str = "true") -> str:
    """Add every billable record and adjustment matching ``where`` (alias r
    for records, a for adjustments: both have tenant_id)."""
    return add_sql(
        vendor,
        [
            (records("billing_usagerecord", where.format(table="r")), 1),
            (adjustments("billing_usageadjustment", where.format(table="a")), 1),
        ],
    )


# Per ledger table: its entries, from a table or a row.
SOURCES = {"billing_usagerecord": records, "billing_usageadjustment": adjustments}
# Per operation: the statement's rows that count in (new) and out (old).
OPERATIONS = {
    "insert": ("new",),
    "update": ("new", "old"),
    "delete": ("old",),
}


# Set (transaction-local) around an UPDATE that moves ledger rows between
# billable statuses only (pending -> reported: the Stripe sender marking a
# batch), which every kept table counts the same: the update triggers then
# skip the transition tables, two thirds of such an UPDATE's time. Honoured
# only for the roles that may lift RLS (the worker, the owner), so the web
# role cannot use it to make a kept table drift.
BILLABLE_UNCHANGED_SETTING = "app.billable_unchanged"


def _billable_unchanged_check(table: str) -> str:
    # Here, not at the top: bench/rollup.py imports this module without
    # setting Django up, and billing.rls needs it.
    from billing.rls import may_bypass_expression

    may_bypass = may_bypass_expression(table, lambda name: f'"{name}"')
    return (
        f"IF current_setting('{BILLABLE_UNCHANGED_SETTING}', true) = 'on' "
        f"AND {may_bypass} THEN RETURN NULL; END IF;"
    )


def statement_triggers(
    name: str, table: str, body: Callable[[list[tuple[str, int]]], str]
) -> list[str]:
    """
    Postgres statement-level triggers ``{name}_{operation}`` on ``table``
    running ``body(sides)``: sides are (the transition table of the
    statement's new or old rows, ``new_rows`` / ``old_rows``; sign: 1 to
    count in, -1 to count out). The update trigger does nothing under
    ``BILLABLE_UNCHANGED_SETTING``.
    """
    statements = []
    for operation, sides in OPERATIONS.items():
        function = f"{name}_{operation}"
        transitions = [(f"{side}_rows", 1 if side == "new" else -1) for side in sides]
        referencing = " ".join(f"{side.upper()} TABLE AS {side}_rows" for side in sides)
        skip = _billable_unchanged_check(table) if operation == "update" else ""
        statements += [
            f"""CREATE OR REPLACE FUNCTION {function}() RETURNS trigger AS $$
                BEGIN {skip} {body(transitions)}; RETURN NULL; END;
                $$ LANGUAGE plpgsql""",
            f"""CREATE TRIGGER {function} AFTER {operation.upper()} ON {table}
                REFERENCING {referencing} FOR EACH STATEMENT
                EXECUTE FUNCTION {function}()""",
        ]
    return statements


def _postgres_sql(table: str) -> list[str]:
    def body(sides: list[tuple[str, int]]) -> str:
        entries = [(SOURCES[table](rows), sign) for rows, sign in sides]
        return add_sql("postgresql", entries)

    return statement_triggers(f"{table}_scope_usage", table, body)


def _row(side: str, table: str) -> str:
    """The trigger's NEW or OLD row as a one-row table."""
    columns = [*SOURCE_COLUMNS, *SCOPE_COLUMNS]
    if table == "billing_usageadjustment":
        columns = [*SOURCE_COLUMNS, "usage_record_id"]
    picked = ", ".join(f"{side.upper()}.{c} AS {c}" for c in columns)
    return f"(SELECT {picked})"


def _sqlite_sql(table: str) -> list[str]:
    statements = []
    for operation, sides in OPERATIONS.items():
        entries = [
            (SOURCES[table](_row(side, table)), 1 if side == "new" else -1)
            for side in sides
        ]
        statements.append(
            f"""CREATE TRIGGER {table}_scope_usage_{operation}
                AFTER {operation.upper()} ON {table}
                BEGIN {add_sql("sqlite", entries)}; END"""
        )
    return statements


def drop_triggers_sql(vendor: str, table: str, name: str) -> list[str]:
    """Drop the triggers ``{name}_{operation}`` on ``table`` (and on Postgres
    their functions)."""
    statements = []
    for operation in OPERATIONS:
        trigger = f"{name}_{operation}"
        if vendor == "postgresql":
            statements += [
                f"DROP TRIGGER IF EXISTS {trigger} ON {table}",
                f"DROP FUNCTION IF EXISTS {trigger}()",
            ]
        else:
            statements.append(f"DROP TRIGGER IF EXISTS {trigger}")
    return statements


class LedgerTriggers(migrations.operations.base.Operation):
    """
    Create a set of triggers on the ledger and fill the table they keep from
    the ledger as it is; drop them when unapplied. Subclasses say which.
    """

    reversible = True
    reduces_to_sql = True
    kept_table = ""  # the table the triggers keep

    def create_statements(self, vendor: str) -> list[str]:
        raise NotImplementedError

    def drop_statements(self, vendor: str) -> list[str]:
        raise NotImplementedError

    def fill_statement(self, vendor: str) -> str:
        raise NotImplementedError

    def state_forwards(self, app_label, state) -> None:
        pass

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        # Here, not at the top: bench/rollup.py uses the SQL above without
        # setting Django up, and billing.tenancy defines a model.
        from billing.tenancy import BYPASS_SETTING

        vendor = schema_editor.connection.vendor
        for sql in self.create_statements(vendor):
            schema_editor.execute(sql, params=None)
        if vendor == "postgresql":
            # All tenants' rows, also when the migrating role is subject to RLS.
            schema_editor.execute(
                f"SELECT set_config('{BYPASS_SETTING}', 'on', true)", params=None
            )
        schema_editor.execute(f"DELETE FROM {self.kept_table}", params=None)
        schema_editor.execute(self.fill_statement(vendor), params=None)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        for sql in self.drop_statements(schema_editor.connection.vendor):
            schema_editor.execute(sql, params=None)


class MaintainDailyScopeUsage(LedgerTriggers):
    """Create the triggers on both ledger tables and add the existing ledger."""

    kept_table = "billing_dailyscopeusage"

    def create_statements(self, vendor: str) -> list[str]:
        build = _postgres_sql if vendor == "postgresql" else _sqlite_sql
        return [sql for table in SOURCES for sql in build(table)]

    def drop_statements(self, vendor: str) -> list[str]:
        return [
            sql
            for table in SOURCES
            for sql in drop_triggers_sql(vendor, table, f"{table}_scope_usage")
        ]

    def fill_statement(self, vendor: str) -> str:
        return fill_sql(vendor)

    def describe(self) -> str:
        return "Keep daily scope usage in step with the ledger (triggers)"


def update_functions_sql(statements: list[str]) -> list[str]:
    """The ``CREATE OR REPLACE FUNCTION`` statements of the update triggers."""
    return [
        sql
        for sql in statements
        if sql.startswith("CREATE OR REPLACE FUNCTION") and "_update()" in sql
    ]


class RenewLedgerUpdateFunctions(migrations.operations.base.Operation):
    """
    Re-create the functions of the ledger's update triggers (scope usage and
    trace costs) as the code writes them now. Postgres only; the triggers
    stay, and unapplying keeps the functions (they mean the same).
    """

    reversible = True
    reduces_to_sql = True

    def state_forwards(self, app_label, state) -> None:
        pass

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return
        from billing.trace_costs import MaintainDailyTraceCost

        for operation in (MaintainDailyScopeUsage(), MaintainDailyTraceCost()):
            for sql in update_functions_sql(operation.create_statements("postgresql")):
                schema_editor.execute(sql, params=None)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        pass

    def describe(self) -> str:
        return "Re-create the ledger's update trigger functions"


class SqliteOnly:
    """
    For a trigger operation: on SQLite only, drop (``create=False``) or
    re-create and refill (``create=True``) its triggers, the other way round
    when unapplied. Django alters a SQLite table by copying it into a new
    one, which drops its triggers and trips over the other table's triggers
    that name it: a migration that alters a ledger table starts with
    ``create=False`` and ends with ``create=True``. Postgres alters in place
    and keeps them.
    """

    triggers = "triggers"  # what the migration's description calls them

    def __init__(self, *, create: bool) -> None:
        self.create = create

    def _apply(self, create, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "sqlite":
            return
        step = super().database_forwards if create else super().database_backwards
        step(app_label, schema_editor, from_state, to_state)

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        self._apply(self.create, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        self._apply(not self.create, app_label, schema_editor, from_state, to_state)

    def describe(self) -> str:
        action = "Re-create" if self.create else "Drop"
        return f"{action} the {self.triggers} on SQLite"


class SqliteTriggers(SqliteOnly, MaintainDailyScopeUsage):
    """
    The daily scope usage triggers, around a migration that alters a ledger
    table on SQLite (``SqliteOnly``). Since billing 0015 the usage records
    also carry the daily trace cost triggers: a migration altering that
    table does the same with ``billing.trace_costs.SqliteTraceCostTriggers``.
    """

    triggers = "daily scope usage triggers"
