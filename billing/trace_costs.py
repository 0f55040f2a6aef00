"""
Triggers that keep ``DailyTraceCost``: how many of each agent's traces of a
UTC day fall in each cost bucket.

The expensive-trace rule compares an agent's costliest trace of the day with
the 95th percentile of its traces over the week before. Reading that from the
ledger would cost the daily rollup a pass over every trace (30 s more at 10M
traces a day, most of it reading the records' JSON); a histogram kept as the
ledger is written costs a few rows per agent and day instead, and a
percentile read from it is within one bucket: a quarter of an octave, 19%.

Bucket ``b`` holds the traces costing from 2^(b/4) up to 2^((b+1)/4) USD;
traces costing nothing are not counted. As for ``DailyScopeUsage``
(``billing.scope_usage``, whose shape this follows): statement-level triggers
over transition tables on Postgres, row-level ones on SQLite; new rows count
in, old rows out, so marking records reported nets to zero and writes
nothing (on SQLite, such an update does not even run the trigger).
Only billable records (pending or reported) count, at their own cost: a
late adjustment rarely moves a trace to another bucket.
"""

from __future__ import annotations

from django.db import migrations

from billing.scope_usage import (
    BILLABLE,
    DIALECTS,
    OPERATIONS,
    SqliteOnly,
    statement_triggers,
)

TABLE = "billing_usagerecord"
# Buckets per doubling of cost.
BUCKETS_PER_OCTAVE = 4
COLUMNS = ("tenant_id", "trace_timestamp", "project_id", "agent_id", "cost")


def bucket_sql(cost: str) -> str:
    """The bucket of ``cost`` (> 0), the same on Postgres and SQLite."""
    return f"CAST(floor({BUCKETS_PER_OCTAVE} * log(2.0, {cost})) AS INTEGER)"


def add_sql(vendor: str, entries: list[tuple[str, int]]) -> str:
    """
    Add ``entries`` (SQL of usage records, sign: 1 to count in, -1 to count
    out) to the daily trace costs.
    """
    day = DIALECTS[vendor].day.format("e.trace_timestamp")
    signed = " UNION ALL ".join(
        f"""SELECT e.*, {sign} AS sign FROM ({source}) e
            WHERE e.status IN {BILLABLE} AND e.agent_id <> '' AND e.cost > 0"""
        for source, sign in entries
    )
    return f"""
        INSERT INTO billing_dailytracecost
            (day, tenant_id, project_id, agent_id, bucket, traces)
        SELECT {day}, e.tenant_id, e.project_id, e.agent_id,
               {bucket_sql("e.cost")}, sum(e.sign)
        FROM ({signed}) e
        GROUP BY 1, 2, 3, 4, 5
        HAVING sum(e.sign) <> 0
        ON CONFLICT (day, tenant_id, project_id, agent_id, bucket)
        DO UPDATE SET traces = billing_dailytracecost.traces + excluded.traces
    """


def fill_sql(vendor: str) -> str:
    """Add every billable record of the ledger."""
    return add_sql(vendor, [(f"SELECT * FROM {TABLE}", 1)])


def _name(operation: str) -> str:
    return f"{TABLE}_trace_costs_{operation}"


def _counted(row: str) -> str:
    """What of a record the histogram counts, as a row value."""
    columns = ", ".join(f"{row}.{c}" for c in COLUMNS)
    return f"({columns}, {row}.status IN {BILLABLE})"


def _changed(new: str, old: str) -> str:
    """An updated record changed what the histogram counts (SQLite)."""
    return f"{_counted(new)} IS NOT {_counted(old)}"


def _postgres_sql() -> list[str]:
    def body(sides: list[tuple[str, int]]) -> str:
        # An update's old rows count out and its new ones in, whole: joining
        # the two transition tables to keep only the changed records (they
        # have no index) cost ten times more than grouping them all.
        entries = [(f"SELECT * FROM {rows}", sign) for rows, sign in sides]
        return add_sql("postgresql", entries)

    return statement_triggers(f"{TABLE}_trace_costs", TABLE, body)


def _sqlite_sql() -> list[str]:
    statements = []
    for operation, sides in OPERATIONS.items():
        entries = []
        for side in sides:
            picked = ", ".join(
                f"{side.upper()}.{c} AS {c}" for c in (*COLUMNS, "status")
            )
            entries.append((f"SELECT {picked}", 1 if side == "new" else -1))
        # An update that changes nothing counted (marking a record
        # reported) runs nothing.
        when = f"WHEN {_changed('NEW', 'OLD')}" if len(sides) == 2 else ""
        statements.append(
            f"""CREATE TRIGGER {_name(operation)} AFTER {operation.upper()} ON {TABLE}
                {when} BEGIN {add_sql("sqlite", entries)}; END"""
        )
    return statements


def _drop_sql(vendor: str) -> list[str]:
    if vendor == "postgresql":
        return [
            statement
            for operation in OPERATIONS
            for statement in (
                f"DROP TRIGGER IF EXISTS {_name(operation)} ON {TABLE}",
                f"DROP FUNCTION IF EXISTS {_name(operation)}()",
            )
        ]
    return [f"DROP TRIGGER IF EXISTS {_name(operation)}" for operation in OPERATIONS]


class MaintainDailyTraceCost(migrations.operations.base.Operation):
    """Create the triggers on the usage records and add the existing ledger."""

    reversible = True
    reduces_to_sql = True

    def state_forwards(self, app_label, state) -> None:
        pass

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        from billing.tenancy import BYPASS_SETTING

        vendor = schema_editor.connection.vendor
        build = _postgres_sql if vendor == "postgresql" else _sqlite_sql
        for sql in build():
            schema_editor.execute(sql, params=None)
        if vendor == "postgresql":
            # All tenants' rows, also when the migrating role is subject to RLS.
            schema_editor.execute(
                f"SELECT set_config('{BYPASS_SETTING}', 'on', true)", params=None
            )
        schema_editor.execute("DELETE FROM billing_dailytracecost", params=None)
        schema_editor.execute(fill_sql(vendor), params=None)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        for sql in _drop_sql(schema_editor.connection.vendor):
            schema_editor.execute(sql, params=None)

    def describe(self) -> str:
        return "Keep daily trace costs in step with the ledger (triggers)"


class SqliteTraceCostTriggers(SqliteOnly, MaintainDailyTraceCost):
    """
    The daily trace cost triggers, around a migration that alters the usage
    record table on SQLite (``billing.scope_usage.SqliteOnly``).
    """

    triggers = "daily trace cost triggers"
