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
