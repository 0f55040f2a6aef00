"""
``manage.py demo`` refuses to start, in one line and before it writes
anything, when a port it needs is taken or its database belongs to another
demo; ``--fresh`` (which deletes the database file) runs on a demo's own
SQLite file only.

The full demo (about a minute on SQLite) runs in ``.ci/run`` as
``DEMO_SERVE=0 make demo``; these tests stop before the work starts.
"""

import fcntl
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def taken_port():
    """A port with a listener on it, as a running demo holds its ports."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.fixture
def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def demo_settings(settings, free_port):
    settings.DEBUG = True
    settings.STRIPE_API_KEY = "sk_test_demo_emulator"
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{free_port}"
    return settings


def test_a_taken_langfuse_port_is_named_with_its_variable(demo_settings, taken_port):
    with pytest.raises(CommandError) as raised:
        call_command("demo", "--no-serve", "--langfuse-port", str(taken_port))

    message = str(raised.value)
    assert f"Port {taken_port} for the Langfuse emulator" in message
    assert "already in use" in message
    assert f"DEMO_LANGFUSE_PORT={taken_port + 100} make demo" in message
    assert "\n" not in message


def test_a_taken_stripe_port_is_named_and_the_langfuse_port_released(
    demo_settings, taken_port, free_port
):
    demo_settings.STRIPE_API_BASE = f"http://127.0.0.1:{taken_port}"

    with pytest.raises(CommandError, match=f"Port {taken_port} for the Stripe"):
        call_command("demo", "--no-serve", "--langfuse-port", str(free_port))

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", free_port))


def test_a_taken_admin_port_is_named_before_any_work(demo_settings, taken_port):
    with pytest.raises(CommandError) as raised:
        call_command("demo", "--port", str(taken_port), "--langfuse-port", "0")

    assert f"Port {taken_port} for the admin" in str(raised.value)
    assert "DEMO_PORT=" in str(raised.value)


def test_fresh_refuses_a_database_other_than_a_sqlite_file(demo_settings):
    with pytest.raises(CommandError, match="SQLite file of the demo's own"):
        call_command("demo", "--no-serve", "--fresh", "--langfuse-port", "0")


def _demo(database: str | None, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DEBUG": "1",
        "STRIPE_API_KEY": "sk_test_demo_emulator",
        "STRIPE_API_BASE": "http://127.0.0.1:0",
    }
    env.pop("REDIS_URL", None)
    env.pop("DATABASE_URL", None)
    if database:
        env["DATABASE_URL"] = f"sqlite:///{database}"
    return subprocess.run(  # noqa: S603 (our own manage.py)
        [
            sys.executable,
            "manage.py",
            "demo",
            "--no-serve",
            "--langfuse-port",
            "0",
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_fresh_leaves_a_database_another_demo_holds(tmp_path):
    database = tmp_path / "demo.sqlite3"
    database.write_bytes(b"the running demo's data")
    with open(f"{database}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = _demo(str(database), "--fresh")

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"CommandError: The demo database {database} is in use by another demo; "
        "stop it or give this one a file of its own, e.g. "
        "`DEMO_DB=demo2.sqlite3 make demo`."
    ]
    assert database.read_bytes() == b"the running demo's data"


def test_fresh_never_deletes_the_embedded_default_database():
    default = REPO / "db.sqlite3"
    before = default.stat().st_mtime_ns if default.exists() else None

    result = _demo(None, "--fresh")

    assert result.returncode == 1
    assert "the embedded default database" in result.stderr
    assert "Traceback" not in result.stderr
    assert (default.stat().st_mtime_ns if default.exists() else None) == before
