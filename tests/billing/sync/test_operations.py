"""
Operating the sync (issue 11): a killed work-horse leaves no run shown as
running, a dry run writes nothing at all, and the embedded SQLite default
syncs several tenants with the default concurrency.
"""

import os
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

from django.core.management import call_command
from django.db import connection

from billing.emulators.base import Faults
from billing.models import SyncRun
from billing.sync import ABANDONED_REASON, sync_tenant

REPO = Path(__file__).resolve().parents[3]


def _database_url() -> str:
    database = connection.settings_dict
    return (
        f"postgres://{database['USER']}@{database['HOST']}:"
        f"{database['PORT'] or 5432}/{database['NAME']}"
    )


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return [int(child) for child in children.read().split()]


def _wait_for(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_a_sigkilled_work_horse_s_run_is_abandoned_by_the_next_run(world, queue):
    from billing.jobs import sync_all_tenants

    tenant = world.tenant("acme")
    world.trace(tenant)
    # Slow enough that the run is surely still reading when it is killed.
    world.langfuse.faults = Faults(rate_slow=1.0, slow_seconds=3)
    assert sync_all_tenants() == [tenant.pk]
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "rqworker", "default", "--burst"],
        cwd=REPO,
        env={
            **os.environ,
            "DATABASE_URL": _database_url(),
            "REDIS_URL": os.environ["REDIS_URL"],
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: SyncRun.objects.filter(status="running").exists())
        (horse,) = _children(worker.pid)
        os.kill(horse, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        worker.kill()

    killed = SyncRun.objects.get()
    assert (killed.status, killed.finished_at) == ("running", None)

    world.langfuse.faults = Faults()
    run = sync_tenant(tenant_id=tenant.pk)

    killed.refresh_from_db()
    assert killed.status == SyncRun.Status.ABANDONED
    assert killed.error == ABANDONED_REASON
    assert killed.finished_at is not None
    assert run.status == SyncRun.Status.SUCCEEDED
    assert not SyncRun.objects.filter(status="running").exists()


def _table_digests() -> dict[str, str]:
    """Every table's whole content, as one digest each."""
    digests = {}
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(
                f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM \"{table}\" t"  # noqa: E501, S608
            )
            digests[table] = cursor.fetchone()[0]
    return digests


def test_dry_run_leaves_every_table_unchanged(world):
    tenant = world.tenant("acme")
    world.trace(tenant)
    sync_tenant(tenant_id=tenant.pk)
    world.trace(tenant, ended=False)  # running: re-read by id next time
    world.trace(tenant, generations=[("local-llama-3-8b-ft", 100, 10, 0)])
    world.trace(tenant)
    before = _table_digests()
    out = StringIO()

    call_command("sync_billing", "--dry-run", stdout=out)
    call_command(
        "sync_billing",
        "--dry-run",
        "--kind",
        "reconcile",
        "--tier",
        "daily",
        stdout=out,
    )

    assert _table_digests() == before
    assert "acme: succeeded (dry run), 4 traces fetched" in out.getvalue()


TENANTS_SCRIPT = """
from billing.audit import Actor
from billing.services import tenant_create
for slug, customer in {tenants!r}:
    tenant_create(
        actor=Actor.system(),
        name=slug,
        slug=slug,
        stripe_customer_id=customer,
        stripe_meter_event_name="llm_usage",
        langfuse_host={host!r},
        langfuse_public_key=f"pk-lf-{{slug}}",
        langfuse_secret_key=f"sk-lf-{{slug}}-secret",
    )
"""


def test_sqlite_syncs_several_tenants_with_the_default_concurrency(
    world, settings, tmp_path
):
    tenants = []
    for n in range(4):
        slug = f"t{n}"
        public_key = f"pk-lf-{slug}"
        world.langfuse.add_project(
            public_key=public_key, secret_key=f"sk-lf-{slug}-secret"
        )
        for _ in range(5):
            world.trace(SimpleNamespace(langfuse_public_key=public_key))
        tenants.append((slug, world.stripe.create_customer(name=slug)["id"]))
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'embedded.sqlite3'}",
        "DEBUG": "1",
        "STRIPE_API_BASE": settings.STRIPE_API_BASE,
        "STRIPE_API_KEY": settings.STRIPE_API_KEY,
    }
    env.pop("REDIS_URL", None)

    def manage(*args):
        return subprocess.run(  # noqa: S603 (our own manage.py)
            [sys.executable, "manage.py", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert manage("migrate", "-v0").returncode == 0
    script = TENANTS_SCRIPT.format(tenants=tenants, host=world.langfuse_url)
    assert manage("shell", "-c", script).returncode == 0

    synced = manage("sync_billing")  # the default concurrency, 4

    assert synced.returncode == 0, synced.stderr[-2000:]
    assert synced.stdout.count(": succeeded, 5 traces fetched, 5 billed") == 4
    for _slug, customer in tenants:
        assert world.stripe.total_value(customer=customer, event_name="llm_usage") > 0


def test_the_minute_sweep_abandons_dead_runs_of_tenants_no_sync_runs_for(world):
    from datetime import timedelta

    from django.utils import timezone

    from billing.sync import sync_runs_sweep

    paused = world.tenant("paused", sync_paused_reason="langfuse: HTTP 401")
    now = timezone.now()
    dead = SyncRun.objects.create(
        tenant=paused, kind="sync", started_at=now - timedelta(minutes=10)
    )
    young = SyncRun.objects.create(tenant=paused, kind="sync", started_at=now)

    assert sync_runs_sweep() == 2

    dead.refresh_from_db()
    young.refresh_from_db()
    # Runs start under the tenant's lock: with the lock free, no process
    # runs either of them, the young one included.
    assert dead.status == young.status == SyncRun.Status.ABANDONED


def test_a_dry_reconcile_of_a_new_tenant_creates_no_cursor(world):
    from billing.models import SyncCursor
    from billing.sync import reconcile_tenant

    tenant = world.tenant("acme")
    world.trace(tenant)

    runs = reconcile_tenant(tenant_id=tenant.pk, dry_run=True)

    assert runs and all(run.pk is None for run in runs)
    assert not SyncCursor.objects.exists()
    assert not SyncRun.objects.exists()
