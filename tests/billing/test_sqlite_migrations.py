"""
The embedded default (SQLite) keeps the ledger's triggers (daily scope usage,
daily trace costs) through migrations that alter the ledger tables: Django
copies a SQLite table to alter it, which drops its triggers, and a rollup
without them is silently empty (the demo once showed 0 summaries).
"""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCOPE_USAGE = {
    f"{table}_scope_usage_{operation}"
    for table in ("billing_usagerecord", "billing_usageadjustment")
    for operation in ("insert", "update", "delete")
}
# Since billing 0015 (the expensive-trace rule's histogram).
TRACE_COSTS = {
    f"billing_usagerecord_trace_costs_{operation}"
    for operation in ("insert", "update", "delete")
}
TRIGGERS = SCOPE_USAGE | TRACE_COSTS


def _migrate(database: Path, *target: str) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{database}",
        "DEBUG": "1",
    }
    env.pop("REDIS_URL", None)
    subprocess.run(  # noqa: S603 (our own manage.py)
        [sys.executable, "manage.py", "migrate", "-v0", *target],
        cwd=REPO,
        env=env,
        check=True,
    )


def _triggers(database: Path) -> set[str]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type='trigger'")
        return {name for (name,) in rows}


def test_the_triggers_survive_every_migration_both_ways(tmp_path):
    database = tmp_path / "embedded.sqlite3"

    _migrate(database)
    assert _triggers(database) == TRIGGERS

    _migrate(database, "billing", "0007")
    assert _triggers(database) == SCOPE_USAGE

    _migrate(database)
    assert _triggers(database) == TRIGGERS


def _trace_cost_triggers(database: Path, *, create: bool) -> None:
    script = (
        "from django.db import connection\n"
        "from billing.trace_costs import SqliteTraceCostTriggers\n"
        "with connection.schema_editor() as editor:\n"
        f"    SqliteTraceCostTriggers(create={create}).database_forwards("
        "'billing', editor, None, None)\n"
    )
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{database}", "DEBUG": "1"}
    env.pop("REDIS_URL", None)
    subprocess.run(  # noqa: S603 (our own manage.py)
        [sys.executable, "manage.py", "shell", "-v0", "-c", script],
        cwd=REPO,
        env=env,
        check=True,
    )


def test_a_migration_altering_the_usage_records_can_keep_the_trace_costs(tmp_path):
    # What a future migration altering billing_usagerecord on SQLite does:
    # drop the trace cost triggers first, put them back (refilled) after.
    database = tmp_path / "embedded.sqlite3"
    _migrate(database)

    _trace_cost_triggers(database, create=False)
    assert _triggers(database) == SCOPE_USAGE

    _trace_cost_triggers(database, create=True)
    assert _triggers(database) == TRIGGERS
