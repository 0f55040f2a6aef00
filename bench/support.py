"""
What the benchmarks share: the app on the import path, the throw-away
databases they fill (and the SQL that generates ledger rows in them),
progress lines and timing.

Imported first by each benchmark: run as a script, only ``bench/`` is on the
path, and the app lives in the repository's root.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
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
        # The benchmarks' clients and servers speak plain HTTP.
        HTTPS="0",
    )
    return env


def migrate(postgres_url: str, database: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        env=django_env(postgres_url, database),
        cwd=ROOT,
        check=True,
    )


def model_prices(models: tuple[str, ...]) -> dict[str, list]:
    """Per-token prices of ``models`` from the app's price data, as SQL
    arrays (the ``names``, ``p_input``, ``p_output``, ``p_cached`` params
    of ``model_cost``)."""
    from billing.pricing import CACHE_READ_KEYS, SHIPPED_PRICES, PriceTable

    shipped = PriceTable(SHIPPED_PRICES)
    prices = [shipped.price_for(model, datetime.now(UTC)) for model in models]
    cache_keys = [next(k for k in CACHE_READ_KEYS if p.covers(k)) for p in prices]
    return {
        "names": list(models),
        "p_input": [p.cost({"input": 1}) for p in prices],
        "p_output": [p.cost({"output": 1}) for p in prices],
        "p_cached": [p.cost({k: 1}) for p, k in zip(prices, cache_keys, strict=True)],
    }


# SQL fragments of a generated ledger row with 1-3 models (``nm``): the k-th
# model's index into the prices (``m{k}``), its token draws and its cost.


def trace_members(member: str) -> str:
    """A JSON object of the trace's 1-3 models' members, built as text and
    cast once (far cheaper than jsonb_build_object and ||)."""
    parts = [member.format(k=1)]
    parts += [
        f"CASE WHEN nm >= {k} THEN ', ' || {member.format(k=k)} END" for k in (2, 3)
    ]
    return f"concat('{{', {', '.join(parts)}, '}}')::jsonb"


# {"gpt-4o": {"input": 1, "output": 2, "cached": 0, "cost": "0.0001"}, ...}
MODEL_BREAKDOWN = trace_members(
    """concat('"', (%(names)s::text[])[m{k}], '": {{"input": ', in{k},
        ', "output": ', out{k}, ', "cached": ', ca{k}, ', "cost": "', c{k}, '"}}')"""
)


def model_tokens(k: int) -> str:
    """Token draws of the k-th model, zero when the trace has fewer; the
    third is an embedding (input only). ``mult`` scales a scope's prompts."""
    on = "1" if k == 1 else f"(nm >= {k})::int"
    output = "0" if k == 3 else "floor((20 + 1200 * random()) * mult)::bigint"
    return f"""
        {on} * greatest(1, floor((200 + 6000 * random()) * mult))::bigint AS in{k},
        {on} * {output} AS out{k},
        {"0" if k == 3 else "random()"} AS cr{k}"""


def model_cost(k: int) -> str:
    """The k-th model's cost at the ``model_prices`` params, and its cached
    tokens."""
    return f"""
        round(in{k} * (%(p_input)s::numeric[])[m{k}]
              + out{k} * (%(p_output)s::numeric[])[m{k}]
              + floor(in{k} * cr{k} / 2)::bigint * (%(p_cached)s::numeric[])[m{k}],
              10) AS c{k},
        floor(in{k} * cr{k} / 2)::bigint AS ca{k}"""
