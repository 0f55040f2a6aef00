"""
RQ jobs: thin wrappers that fan out per tenant and call the sync engine.

The scheduler (``manage.py rqcron billing_project.cron``) enqueues the fan-out
jobs; each tenant then gets its own job, so tenants run in parallel across
workers and one slow tenant never holds up the rest. A second scheduler
enqueues nothing more (``billing.schedule.once_per_tick``), and a duplicate
job is harmless: the tenant's advisory lock lets one run through and the
other is recorded as skipped.
"""

from __future__ import annotations

import django_rq
from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from billing.audit import Actor
from billing.models import StripeReconciliation, SyncRun
from billing.schedule import once_per_tick
from billing.stripe_reconcile import stripe_reconcile_recent
from billing.sync import (
    RECONCILE_TIERS,
    eligible_tenant_ids,
    reconcile_tenant,
    sync_runs_sweep,
    sync_tenant,
)

QUEUE = "default"
# A sync job that has not started within this long is stale; the next minute's
# fan-out enqueues a fresh one.
SYNC_JOB_TTL = 120
# A reconcile tier runs at most daily: it waits for a worker for an hour, and
# a 35-day pass of a large tenant may take hours (one run per day of it).
RECONCILE_JOB_TTL = 3600
RECONCILE_JOB_TIMEOUT = 6 * 3600


def _job_id(kind: str, tenant_id: int) -> str:
    return f"billing-{kind}-{tenant_id}"


def _already_queued(queue, job_id: str) -> bool:
    try:
        job = Job.fetch(job_id, connection=queue.connection)
    except NoSuchJobError:
        return False
    return job.get_status() in (JobStatus.QUEUED, JobStatus.STARTED)


def enqueue_tenant_jobs(
    kind: str = SyncRun.Kind.SYNC, tier: str | None = None
) -> list[int]:
    """Enqueue one job per eligible tenant, unless one is already waiting."""
    queue = django_rq.get_queue(QUEUE)
    enqueued = []
    for tenant_id in eligible_tenant_ids(kind):
        if tier is None:
            job_id = _job_id(kind, tenant_id)
            call = (sync_tenant_job, tenant_id, kind)
            timing = {"ttl": SYNC_JOB_TTL}
        else:
            job_id = _job_id(f"{kind}-{tier}", tenant_id)
            call = (reconcile_tenant_job, tenant_id, tier)
            timing = {"ttl": RECONCILE_JOB_TTL, "job_timeout": RECONCILE_JOB_TIMEOUT}
        if _already_queued(queue, job_id):
            continue
        queue.enqueue(*call, job_id=job_id, **timing)
        enqueued.append(tenant_id)
    return enqueued


@once_per_tick
def sync_all_tenants() -> list[int]:
    """Every minute: a sync job per tenant, after abandoning dead runs."""
    sync_runs_sweep()
    return enqueue_tenant_jobs(SyncRun.Kind.SYNC)


@once_per_tick
def reconcile_all_tenants(tier: str = "hourly") -> list[int]:
    """Re-read one tier of history (``RECONCILE_TIERS``) for late data."""
    return enqueue_tenant_jobs(SyncRun.Kind.RECONCILE, tier)


def sync_tenant_job(tenant_id: int, kind: str = SyncRun.Kind.SYNC) -> dict:
    """Run one tenant's sync; the result is counts only, never provider text."""
    run = sync_tenant(tenant_id=tenant_id, kind=kind)
    return {
        "tenant_id": tenant_id,
        "sync_run_id": run.pk,
        "status": run.status,
        "billed": run.billed,
        "skipped": run.skipped,
        "healed": run.healed,
    }


def reconcile_tenant_job(tenant_id: int, tier: str) -> dict:
    """One reconcile tier of one tenant, a run per day; counts only."""
    runs = reconcile_tenant(tenant_id=tenant_id, lookback=RECONCILE_TIERS[tier])
    failed = [run for run in runs if run.status != SyncRun.Status.SUCCEEDED]
    return {
        "tenant_id": tenant_id,
        "tier": tier,
        "sync_run_ids": [run.pk for run in runs],
        "status": failed[0].status if failed else SyncRun.Status.SUCCEEDED,
        "billed": sum(run.billed for run in runs),
        "healed": sum(run.healed for run in runs),
        "adjustments": sum(run.adjustments for run in runs),
    }


def stripe_reconcile_job() -> dict:
    """
    The last week of every billed tenant against Stripe (``reconcile_stripe``),
    after the nightly rollup; counts only.
    """
    job = get_current_job()
    results = stripe_reconcile_recent(actor=Actor.job(job.id if job else ""))
    drift = [r for r in results if r.status != StripeReconciliation.Status.MATCH]
    return {
        "tenant_days": len(results),
        "drift": len(drift),
        "resent": sum(len(r.details.get("resent", ())) for r in results),
    }
