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

from billing.scope_usage import (
    BILLABLE,
    DIALECTS,
    OPERATIONS,
    LedgerTriggers,
    SqliteOnly,
    drop_triggers_sql,
    statement_triggers,
)

TABLE = "billing_usagerecord"
NAME = f"{TABLE}_trace_costs"  # of the triggers, {NAME}_{operation}
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

    return statement_triggers(NAME, TABLE, body)


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
            f"""CREATE TRIGGER {NAME}_{operation} AFTER {operation.upper()} ON {TABLE}
                {when} BEGIN {add_sql("sqlite", entries)}; END"""
        )
    return statements


class MaintainDailyTraceCost(LedgerTriggers):
    """Create the triggers on the usage records and add the existing ledger."""

    kept_table = "billing_dailytracecost"

    def create_statements(self, vendor: str) -> list[str]:
        return _postgres_sql() if vendor == "postgresql" else _sqlite_sql()

    def drop_statements(self, vendor: str) -> list[str]:
        return drop_triggers_sql(vendor, TABLE, NAME)

    def fill_statement(self, vendor: str) -> str:
        return fill_sql(vendor)

    def describe(self) -> str:
        return "Keep daily trace costs in step with the ledger (triggers)"


class SqliteTraceCostTriggers(SqliteOnly, MaintainDailyTraceCost):
    """
    The daily trace cost triggers, around a migration that alters the usage
    record table on SQLite (``billing.scope_usage.SqliteOnly``).
    """

    triggers = "daily trace cost triggers"
