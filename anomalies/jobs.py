"""
RQ jobs for the daily analytics: rollup, then detection and the Stripe
reconciliation as dependent jobs.

``enqueue_daily_analytics`` runs from the cron schedule at 02:00 UTC for the
previous UTC day. RQ starts the detection job only once the rollup job has
finished successfully; both take an advisory lock and write idempotently, so
a second scheduler enqueueing the same pair is harmless.
"""

from __future__ import annotations

from datetime import date

import django_rq
from rq import get_current_job
from rq.job import Dependency, Job

from anomalies.pipeline import detect_days, previous_utc_day, rollup_days
from billing.jobs import stripe_reconcile_job
from billing.schedule import once_per_tick

QUEUE = "default"


def _result(run) -> dict:
    return {
        "analytics_run_id": run.pk,
        "kind": run.kind,
        "status": run.status,
        "duration_ms": run.duration_ms,
        "summaries_written": run.summaries_written,
        "anomalies_created": run.anomalies_created,
        "anomalies_updated": run.anomalies_updated,
        "anomalies_reopened": run.anomalies_reopened,
    }


def rollup_job(day: str, tenant_id: int | None = None) -> dict:
    job = _current_job_id()
    return _result(
        rollup_days([date.fromisoformat(day)], tenant_id=tenant_id, job_id=job)
    )


def detect_job(day: str, tenant_id: int | None = None) -> dict:
    job = _current_job_id()
    return _result(
        detect_days([date.fromisoformat(day)], tenant_id=tenant_id, job_id=job)
    )


def _current_job_id() -> str:
    job = get_current_job()
    return job.id if job else ""


@once_per_tick
def enqueue_daily_analytics(day: date | None = None) -> tuple[Job, Job, Job]:
    """
    Enqueue the rollup of ``day`` (default: yesterday, UTC), then its
    detection and the reconciliation of the last week with Stripe.
    """
    day = day or previous_utc_day()
    queue = django_rq.get_queue(QUEUE)
    rollup = queue.enqueue(rollup_job, day.isoformat(), job_id=f"rollup-{day}")
    detect = queue.enqueue(
        detect_job, day.isoformat(), job_id=f"detect-{day}", depends_on=rollup
    )
    # After the rollup, whether it succeeded or not: billing is checked
    # even on a night the analytics fail.
    reconcile = queue.enqueue(
        stripe_reconcile_job,
        job_id=f"reconcile-stripe-{day}",
        depends_on=Dependency(jobs=[rollup], allow_failure=True),
    )
    return rollup, detect, reconcile
