"""
The daily analytics pass: rollup, then anomaly detection, each recorded as an
``AnalyticsRun`` and guarded by an advisory lock so that a second scheduler
or a retried job is harmless (both passes are idempotent anyway).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock

from django.utils import timezone

from anomalies.detectors import detect_day
from anomalies.services import anomalies_record
from billing.audit import Actor
from billing.locks import advisory_lock
from billing.models import AnalyticsRun, CostSummary
from billing.rollup import rollup_day
from billing.tenancy import tenant_context

logger = logging.getLogger("anomalies.pipeline")

# Advisory lock namespaces (the sync uses its own).
ROLLUP_LOCK = 0x5E1D
DETECT_LOCK = 0x5E1E


def previous_utc_day(now: datetime | None = None) -> date:
    return ((now or timezone.now()).astimezone(UTC) - timedelta(days=1)).date()


def _run(
    *,
    kind: str,
    lock: int,
    days: list[date],
    tenant_id: int | None,
    job_id: str,
    work: Callable[[date, AnalyticsRun], None],
) -> AnalyticsRun:
    started = time.monotonic()
    run = AnalyticsRun.objects.create(
        kind=kind,
        tenant_id=tenant_id,
        period_start=datetime.combine(days[0], clock.min, tzinfo=UTC),
        period_end=datetime.combine(days[-1], clock.min, tzinfo=UTC)
        + timedelta(days=1),
        started_at=timezone.now(),
        job_id=job_id,
    )
    with advisory_lock(lock, tenant_id or 0) as acquired:
        if not acquired:
            run.status = AnalyticsRun.Status.SKIPPED
        else:
            try:
                for day in days:
                    work(day, run)
                run.status = AnalyticsRun.Status.SUCCEEDED
            except Exception as exc:
                run.status = AnalyticsRun.Status.FAILED
                run.error = f"{type(exc).__name__}: {exc}"[:2000]
                raise
            finally:
                run.finished_at = timezone.now()
                run.duration_ms = round((time.monotonic() - started) * 1000)
                run.save()
                logger.info(
                    "%s of %s..%s: %s in %d ms, %d summaries, %d scopes examined, "
                    "%d anomalies new, %d updated, %d reopened",
                    kind,
                    days[0],
                    days[-1],
                    run.status,
                    run.duration_ms,
                    run.summaries_written,
                    run.scopes_examined,
                    run.anomalies_created,
                    run.anomalies_updated,
                    run.anomalies_reopened,
                )
    if run.status == AnalyticsRun.Status.SKIPPED:
        run.finished_at = timezone.now()
        run.save()
    return run


def rollup_days(
    days: list[date], *, tenant_id: int | None = None, job_id: str = ""
) -> AnalyticsRun:
    def work(day: date, run: AnalyticsRun) -> None:
        run.summaries_written += rollup_day(day=day, tenant_id=tenant_id)

    return _run(
        kind=AnalyticsRun.Kind.ROLLUP,
        lock=ROLLUP_LOCK,
        days=days,
        tenant_id=tenant_id,
        job_id=job_id,
        work=work,
    )


def detect_days(
    days: list[date], *, tenant_id: int | None = None, job_id: str = ""
) -> AnalyticsRun:
    def work(day: date, run: AnalyticsRun) -> None:
        findings = detect_day(day, tenant_id)
        scope = [tenant_id] if tenant_id else ()
        with tenant_context(scope, all_tenants=tenant_id is None):
            result = anomalies_record(
                day=day, findings=findings, actor=Actor.job(job_id)
            )
        run.scopes_examined += _scopes_on(day, tenant_id)
        run.anomalies_created += result.created
        run.anomalies_updated += result.updated
        run.anomalies_reopened += result.reopened

    return _run(
        kind=AnalyticsRun.Kind.DETECT,
        lock=DETECT_LOCK,
        days=days,
        tenant_id=tenant_id,
        job_id=job_id,
        work=work,
    )


def _scopes_on(day: date, tenant_id: int | None) -> int:
    start = datetime.combine(day, clock.min, tzinfo=UTC)
    with tenant_context([tenant_id] if tenant_id else (), all_tenants=not tenant_id):
        summaries = CostSummary.objects.filter(period_start=start)
        if tenant_id:
            summaries = summaries.filter(tenant_id=tenant_id)
        return summaries.count()
