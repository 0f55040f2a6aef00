import itertools
from datetime import timedelta

from rq import SimpleWorker
from rq.cron import CronScheduler

from billing.jobs import reconcile_all_tenants, sync_all_tenants, sync_tenant_job
from billing.models import SyncRun, UsageRecord


def test_the_scheduler_fans_out_one_job_per_tenant_and_a_worker_runs_them(world, queue):
    acme, globex = world.tenant("acme"), world.tenant("globex")
    paused = world.tenant("paused", sync_paused_reason="langfuse: HTTP 401")
    for tenant in (acme, globex, paused):
        world.trace(tenant)

    assert sorted(sync_all_tenants()) == sorted([acme.pk, globex.pk])
    # A second scheduler's copy of the same tick adds nothing.
    assert sync_all_tenants() is None
    assert queue.count == 2

    worker = SimpleWorker([queue], connection=queue.connection)
    worker.work(burst=True)

    runs = SyncRun.objects.order_by("tenant_id")
    assert [(r.tenant_id, r.kind, r.status) for r in runs] == [
        (acme.pk, "sync", "succeeded"),
        (globex.pk, "sync", "succeeded"),
    ]
    assert UsageRecord.objects.filter(status="reported").count() == 2
    assert not UsageRecord.objects.filter(tenant=paused).exists()
    job = queue.fetch_job(f"billing-sync-{acme.pk}")
    assert job.return_value() == {
        "tenant_id": acme.pk,
        "sync_run_id": runs[0].pk,
        "status": "succeeded",
        "billed": 1,
        "skipped": 0,
        "healed": 0,
    }


def test_reconcile_jobs_are_their_own_kind(world, queue):
    acme = world.tenant("acme")
    assert reconcile_all_tenants() == [acme.pk]
    SimpleWorker([queue], connection=queue.connection).work(burst=True)
    assert set(SyncRun.objects.values_list("kind", flat=True)) == {"reconcile"}


def test_the_cron_schedule_registers_sync_every_minute_and_reconcile_tiers(queue):
    scheduler = CronScheduler(connection=queue.connection)
    scheduler.load_config_from_file("billing_project.cron")
    jobs = {job.func.__name__: job for job in scheduler.get_jobs()}
    assert jobs["sync_all_tenants"].interval == 60
    tiers = {
        job.args: job.cron
        for job in scheduler.get_jobs()
        if job.func.__name__ == "reconcile_all_tenants"
    }
    assert tiers == {
        ("hourly",): "17 * * * *",
        ("daily",): "37 3 * * *",
        ("weekly",): "47 4 * * 0",
    }


def test_a_reconcile_tier_job_reads_its_lookback(world, queue):
    acme = world.tenant("acme")
    world.trace(acme)
    sync_tenant_job(acme.pk)  # the cursor, as the minute sync leaves it
    assert reconcile_all_tenants("daily") == [acme.pk]
    SimpleWorker([queue], connection=queue.connection).work(burst=True)
    runs = SyncRun.objects.filter(kind="reconcile").order_by("window_start")
    # One run per UTC day of the week behind the cursor, back to back.
    assert 7 <= len(runs) <= 8
    assert runs.last().window_end - runs.first().window_start == timedelta(days=7)
    for earlier, later in itertools.pairwise(runs):
        assert earlier.window_end == later.window_start


def test_two_schedulers_for_three_ticks_enqueue_each_job_once(world, queue):
    from datetime import UTC, datetime

    import time_machine

    from billing.models import AnalyticsRun

    acme, globex = world.tenant("acme"), world.tenant("globex")
    for tenant in (acme, globex):
        world.trace(tenant)
    # Just before the daily analytics at 02:00 UTC, two schedulers start.
    start = datetime.now(UTC).replace(hour=1, minute=59, second=30, microsecond=0)
    with time_machine.travel(start, tick=False):
        schedulers = [
            CronScheduler(connection=queue.connection, name=name)
            for name in ("deploy-old", "deploy-new")
        ]
        for scheduler in schedulers:
            scheduler.load_config_from_file("billing_project.cron")

    for minute in range(3):
        with time_machine.travel(start + timedelta(seconds=35 + 60 * minute)):
            for scheduler in schedulers:
                scheduler.enqueue_jobs()
            SimpleWorker([queue], connection=queue.connection).work(burst=True)

    for tenant in (acme, globex):
        runs = SyncRun.objects.filter(tenant=tenant, kind="sync")
        assert list(runs.values_list("status", flat=True)) == ["succeeded"] * 3
    assert sorted(AnalyticsRun.objects.values_list("kind", flat=True)) == [
        "detect",
        "rollup",
    ]


def test_a_run_that_finds_its_tenant_locked_is_recorded_as_skipped(world, queue):
    from django.db import connections

    from billing.locks import SYNC_LOCK_NAMESPACE

    acme = world.tenant("acme")
    other = connections.create_connection("default")  # another process's session
    try:
        with other.cursor() as cursor:
            lock = [SYNC_LOCK_NAMESPACE, acme.pk]
            cursor.execute("SELECT pg_advisory_lock(%s, %s)", lock)
            result = sync_tenant_job(acme.pk)
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", lock)
    finally:
        other.close()

    run = SyncRun.objects.get()
    assert (run.status, run.error) == (
        "skipped",
        "another run of this tenant holds its lock",
    )
    assert result["status"] == "skipped"
