"""
What the benchmarks share: the app on the import path, the throw-away
databases they fill, progress lines and timing.

Imported first by each benchmark: run as a script, only ``bench/`` is on the
path, and the app lives in the repository's root.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432"
# A Fernet key for the throw-away bench databases only.
FERNET_KEY = "YGuGILch0G4kaaw7CO7tf5yxNkyJShzo4LMo_6eYqrw="


def log(message: str) -> None:
    """A progress line on stderr; stdout carries figures (or a child's JSON)."""
    stamp = datetime.now().strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", file=sys.stderr, flush=True)


class Timer:
    def __enter__(self) -> Timer:
        self.began = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.began


def recreate_database(
    postgres_url: str, database: str, template: str | None = None
) -> None:
    """Drop and create a database, optionally as a copy of ``template``."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(f"{postgres_url}/postgres", autocommit=True) as connection:
        name = sql.Identifier(database)
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name)
        )
        create = sql.SQL("CREATE DATABASE {}").format(name)
        if template:
            create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        connection.execute(create)


def django_env(postgres_url: str, database: str) -> dict[str, str]:
    """This process's environment with the app's settings for ``database``."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="billing_project.settings",
        DATABASE_URL=f"{postgres_url}/{database}",
        DEBUG="0",
        SECRET_KEY="bench",
        FIELD_ENCRYPTION_KEYS=FERNET_KEY,
        LOG_LEVEL="WARNING",
    )
    return env
