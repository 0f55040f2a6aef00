"""
The sync engine: Langfuse -> ledger -> Stripe, for one tenant at a time.

A run takes the tenant's advisory lock, reads a window of observations page
by page (each page merged and committed on its own; a page that fails to
store is stored trace by trace), batches settled rows into the outbox and
sends it. Memory holds one page and a few counters, never the window. Every
run is recorded as a ``SyncRun`` whose counters are updated as pages land, so
the admin shows a long run's progress; a run that finds the lock held is
recorded as skipped, and one whose process died is marked abandoned by the
next run that holds the lock.

Kinds:
- ``sync``: from the cursor (minus the tenant's overlap for ingestion lag)
  to now minus the settle window, then the traces still running at an
  earlier read, by id (seed 002); the scheduler runs it every minute.
- ``reconcile``: re-reads a look-back window behind the cursor, one UTC day
  per run, and bills what the ledger lacks or what changed (late data; the
  unique constraints make it safe); the schedule runs the tiers of
  ``RECONCILE_TIERS``. It also prices usage held for want of a price.
- ``backfill``: an explicit window of history, one UTC day per run, waiting
  for the lock instead of skipping, so it interleaves with the scheduler.

Afterwards the run's outcome feeds the tenant's health: the same failure
three runs in a row, or Stripe reports waiting for a fix, show on the tenant.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, time, timedelta

from django.db import DataError, IntegrityError, connection, transaction
from django.utils import timezone

from billing.audit import Actor
from billing.gc_freeze import heap_frozen
from billing.langfuse_source import LangfuseSource, Page
from billing.ledger import (
    UNBILLED,
    MergeResult,
    TraceUsage,
    group_by_trace,
    ledger_merge,
    ledger_reprice_unpriced,
)
from billing.limiter import AdaptiveRateLimiter
from billing.locks import tenant_sync_lock
from billing.models import StripeReport, SyncCursor, SyncRun, Tenant, UsageRecord
from billing.prefetch import prefetched
from billing.price_table import price_table_load
from billing.pricing import PriceTable
from billing.progress import LogProgress, Progress
from billing.provider_calls import (
    CircuitBreaker,
    PermanentProviderError,
    ProviderAuthError,
    ProviderCaller,
    ProviderError,
)
from billing.query_log import query_log_forget
from billing.scopes import SCOPES
from billing.services import tenant_pause_sync, tenant_set_sync_problem
from billing.stripe_sink import ReportsRejected, reports_create, reports_send
from billing.tenancy import tenant_context

logger = logging.getLogger("billing.sync")

# A tenant's first sync reaches back as far as Stripe accepts meter events.
INITIAL_LOOKBACK = timedelta(days=35)
# Late data (buffered SDKs, OTel exporters retrying) arrives with old start
# times, and the v2 API has no ingestion-time filter: reconcile re-reads
# tiers of history, each often enough that late usage is billed without
# manual work (see billing_project/cron.py).
RECONCILE_TIERS = {
    "hourly": timedelta(hours=24),
    "daily": timedelta(days=7),
    "weekly": INITIAL_LOOKBACK,
}
RECONCILE_LOOKBACK = RECONCILE_TIERS["hourly"]
# Running traces re-read by id per call: the ids ride in the query string.
RUNNING_IDS_PER_CALL = 100

ProgressFactory = Callable[..., Progress]


def _window(
    kind: str,
    tenant: Tenant,
    cursor: SyncCursor,
    now: datetime,
    lookback: timedelta = RECONCILE_LOOKBACK,
):
    settled = now - timedelta(seconds=tenant.settle_seconds)
    if kind == SyncRun.Kind.SYNC:
        if not cursor.watermark:
            return now - INITIAL_LOOKBACK, settled
        return cursor.watermark - timedelta(seconds=tenant.overlap_seconds), settled
    # Reconcile: the stretch the cursor already calls complete.
    end = min(cursor.watermark or settled, settled)
    return end - lookback, end


def _cursor(tenant: Tenant, *, dry_run: bool) -> SyncCursor:
    """The tenant's cursor; a dry run writes nothing, so it creates none."""
    if dry_run:
        return SyncCursor.objects.filter(tenant=tenant).first() or SyncCursor(
            tenant=tenant
        )
    return SyncCursor.objects.get_or_create(tenant=tenant)[0]


def _read_until(
    kind: str, end: datetime, cursor: SyncCursor, now: datetime, tenant: Tenant
) -> datetime:
    """How far the source is read: this sync's end, else the last sync's."""
    if kind == SyncRun.Kind.SYNC:
        return end
    return cursor.watermark or now - timedelta(seconds=tenant.settle_seconds)


def _ineligible_reason(tenant: Tenant, kind: str) -> str:
    if not tenant.is_active:
        return "tenant suspended"
    if tenant.sync_paused_reason:
        return f"sync paused: {tenant.sync_paused_reason}"
    if kind == SyncRun.Kind.SYNC and not tenant.sync_enabled:
        return "sync disabled"
    if not tenant.has_langfuse_credentials:
        return "no Langfuse credentials"
    return ""


def _save(run: SyncRun, fields: list[str]) -> None:
    if run.dry_run:
        return  # a dry run writes nothing, not even its own record
    with tenant_context([run.tenant_id]):
        run.save(update_fields=fields)


ABANDONED_REASON = (
    "abandoned: the process running it stopped without finishing "
    "(killed, out of memory or restarted)"
)
LOCKED_REASON = "another run of this tenant holds its lock"
# Runs shown as running for longer than this are checked by the sweep.
ABANDON_SWEEP_AFTER = timedelta(minutes=2)


def _skipped_as_locked(tenant_id: int, kind: str, dry_run: bool) -> SyncRun:
    """Say in the admin, not only in the log, why this run did nothing."""
    now = timezone.now()
    run = SyncRun(
        tenant_id=tenant_id,
        kind=kind,
        dry_run=dry_run,
        status=SyncRun.Status.SKIPPED,
        error=LOCKED_REASON,
        started_at=now,
        finished_at=now,
    )
    if not dry_run:
        with tenant_context([tenant_id]):
            run.save()
    return run


def sync_runs_sweep() -> int:
    """
    Abandon runs shown as running whose tenant nobody holds the lock of:
    also for tenants no sync will run for (paused, disabled, suspended).
    """
    with tenant_context(all_tenants=True):
        tenant_ids = set(
            SyncRun.objects.filter(
                status=SyncRun.Status.RUNNING,
                started_at__lt=timezone.now() - ABANDON_SWEEP_AFTER,
            ).values_list("tenant_id", flat=True)
        )
    abandoned = 0
    for tenant_id in sorted(tenant_ids):
        with tenant_sync_lock(tenant_id) as acquired:
            if acquired:
                abandoned += sync_runs_abandon(tenant_id=tenant_id)
    return abandoned


def sync_runs_abandon(*, tenant_id: int) -> int:
    """
    Mark the tenant's runs still shown as running as abandoned. Only call
    with the tenant's sync lock held: then no process runs them.
    """
    with tenant_context([tenant_id]):
        return SyncRun.objects.filter(
            tenant_id=tenant_id, status=SyncRun.Status.RUNNING
        ).update(
            status=SyncRun.Status.ABANDONED,
            finished_at=timezone.now(),
            error=ABANDONED_REASON,
        )


COUNTER_FIELDS = [
    "observations_fetched",
    "traces_fetched",
    "billed",
    "skipped",
    "healed",
    "adjustments",
    "failed",
    "reports_created",
    "reports_sent",
    "langfuse_calls",
    "stripe_calls",
    "rate_limited",
    "final_delay_ms",
    "skip_reasons",
    "scopes_missing",
]


class _Run:
    """One run of one tenant: its own limiters and breakers, never shared."""

    def __init__(self, *, tenant: Tenant, run: SyncRun) -> None:
        self.tenant = tenant
        self.run = run
        self.langfuse = ProviderCaller(
            "langfuse", AdaptiveRateLimiter(), CircuitBreaker()
        )
        self.stripe = ProviderCaller("stripe", AdaptiveRateLimiter(), CircuitBreaker())
        self.source = LangfuseSource(tenant=tenant, caller=self.langfuse)

    @functools.cached_property
    def prices(self) -> PriceTable:
        # Read once a run: a price edited in the admin applies from the next.
        return price_table_load()

    def count_calls(self) -> None:
        run = self.run
        run.langfuse_calls = self.langfuse.limiter.calls
        run.stripe_calls = self.stripe.limiter.calls
        run.rate_limited = (
            self.langfuse.limiter.rate_limited + self.stripe.limiter.rate_limited
        )
        run.final_delay_ms = round(self.langfuse.limiter.delay * 1000)

    def read(self, *, start: datetime, end: datetime, progress: Progress) -> None:
        """
        Read [start, end) in one cursor pass; move the sync cursor at the end.

        Langfuse pages newest first, so no page says that everything older is
        done; only the end of the pass does. A crash re-reads the window,
        which the unique keys make harmless, and one pass keeps the calls at
        one per 1000 observations (slicing the window would cost a call per
        slice, empty or not).
        """
        for page in prefetched(self.source.pages(start=start, end=end)):
            traces = self.merge(page)
            query_log_forget()
            # Newest first: the oldest start seen is how far back we got.
            progress.advance(traces=len(traces), position=page.oldest_start)
        # The window may reach back past the oldest usage: done is done.
        progress.advance(traces=0, position=start)
        if self.run.kind == SyncRun.Kind.SYNC:
            self.read_running(before=start, end=end)
            if not self.run.dry_run:
                with tenant_context([self.tenant.pk]):
                    SyncCursor.objects.filter(tenant=self.tenant).update(watermark=end)

    def read_running(self, *, before: datetime, end: datetime) -> None:
        """
        Re-read the traces that were running at an earlier read and started
        before this window, by id: only they can have changed there (seed
        002). Traces past the tenant's maximum running age are billed as they
        are; what they do later is an adjustment, found by reconcile.
        """
        oldest = timezone.now() - timedelta(seconds=self.tenant.max_running_seconds)
        with tenant_context([self.tenant.pk]):
            running = list(
                UsageRecord.objects.for_tenant(self.tenant)
                .filter(
                    status__in=UNBILLED,
                    running_since__gte=oldest,
                    trace_timestamp__lt=before,
                )
                .order_by("trace_timestamp")
                .values_list("trace_id", "trace_timestamp")
            )
        try:
            for at in range(0, len(running), RUNNING_IDS_PER_CALL):
                chunk = running[at : at + RUNNING_IDS_PER_CALL]
                pages = self.source.pages(
                    start=chunk[0][1], end=end, trace_ids=[t for t, _ in chunk]
                )
                for page in pages:
                    self.merge(page)
        except ProviderAuthError:
            raise
        except PermanentProviderError:
            # A Langfuse that refuses the structured filter: re-read the
            # stretch since the oldest running trace instead (capped above).
            logger.warning(
                "tenant %s: trace filter refused, re-reading since the oldest "
                "running trace",
                self.tenant.slug,
            )
            stretch = max(running[0][1], oldest)
            for page in self.source.pages(start=stretch, end=before):
                self.merge(page)

    def merge(self, page: Page) -> dict[str, TraceUsage]:
        """Merge one page in one transaction; one bad trace cannot block it."""
        traces = group_by_trace(page, self.prices)
        try:
            with tenant_context([self.tenant.pk]):
                result = ledger_merge(tenant=self.tenant, traces=traces)
                if self.run.dry_run:
                    transaction.set_rollback(True)
        except (DataError, IntegrityError):
            result = self.merge_one_by_one(traces)
        self.count_page(page, traces, result)
        return traces

    def merge_one_by_one(self, traces: dict[str, TraceUsage]) -> MergeResult:
        """
        The page failed to store: store its traces one at a time, each in a
        savepoint, and keep the one that fails as skipped with the reason,
        so that a poison pill never stops the tenant's billing.
        """
        result = MergeResult()
        with tenant_context([self.tenant.pk]):
            for trace_id, trace in traces.items():
                try:
                    with transaction.atomic():
                        result.add(
                            ledger_merge(tenant=self.tenant, traces={trace_id: trace})
                        )
                    continue
                except (DataError, IntegrityError) as exc:
                    reason = f"could not be stored ({type(exc).__name__})"
                    logger.warning(
                        "tenant %s: trace %r %s", self.tenant.slug, trace_id, reason
                    )
                poison = TraceUsage(
                    trace_id, trace.first_start, trace.last_activity, problem=reason
                )
                try:
                    with transaction.atomic():
                        result.add(
                            ledger_merge(tenant=self.tenant, traces={trace_id: poison})
                        )
                except (DataError, IntegrityError):
                    result.skip(reason)  # counted, if not even the id is storable
            if self.run.dry_run:
                transaction.set_rollback(True)
        return result

    def count_page(self, page: Page, traces: dict, result: MergeResult) -> None:
        run = self.run
        run.observations_fetched += len(page.observations) + len(page.malformed)
        run.traces_fetched += len(traces)
        run.skipped += result.skipped
        run.adjustments += result.adjustments
        if run.kind == SyncRun.Kind.RECONCILE:
            run.healed += result.created
        reasons = dict(run.skip_reasons)
        for reason, count in result.skip_reasons.items():
            reasons[reason] = reasons.get(reason, 0) + count
        if result.unpriced:
            key = "held unpriced: no price and no Langfuse cost"
            reasons[key] = reasons.get(key, 0) + result.unpriced
        missing = dict(run.scopes_missing)
        for trace in traces.values():
            for scope in SCOPES:
                if not getattr(trace, f"{scope}_id"):
                    missing[scope] = missing.get(scope, 0) + 1
        run.scopes_missing = missing
        orphans = sum(1 for bad in page.malformed if not bad.trace_id)
        if orphans:
            key = "observation without traceId"
            reasons[key] = reasons.get(key, 0) + orphans
        run.skip_reasons = reasons
        self.count_calls()
        _save(run, COUNTER_FIELDS)

    def bill(self, *, read_until: datetime) -> None:
        """
        Batch what has settled into the outbox and send it. Settled counts
        from ``read_until``, the end of what the source was read up to: an
        observation that started after it is not in the ledger yet, so a
        trace is billed only once it was quiet for the settle window before
        that moment (seed 002).
        """
        run = self.run
        if run.kind == SyncRun.Kind.RECONCILE and (
            released := ledger_reprice_unpriced(tenant=self.tenant, prices=self.prices)
        ):
            logger.info(
                "tenant %s: %d held row(s) now priced, billed next",
                self.tenant.slug,
                released,
            )
        batched = reports_create(tenant=self.tenant, now=read_until)
        run.reports_created = batched.reports
        self.send()

    def send(self) -> None:
        run = self.run
        sent = reports_send(
            tenant=self.tenant,
            caller=self.stripe,
            concurrency=self.tenant.sync_concurrency,
        )
        run.reports_sent = sent.sent
        # Billed is what Stripe has: the records of the reports sent in this
        # run, not those batched (a rejected or deferred report bills nothing).
        run.billed = sent.records
        run.failed = sent.failed
        self.count_calls()
        if sent.failed:
            # Everything else was sent first; the run fails with what to fix.
            raise ReportsRejected(sent.rejections, deferred=sent.deferred)
        if sent.deferred:
            raise _Deferred(f"{sent.deferred} report(s) left pending after retries")


class _Deferred(Exception):
    pass


def sync_tenant(
    *,
    tenant_id: int,
    kind: str = SyncRun.Kind.SYNC,
    since: datetime | None = None,
    until: datetime | None = None,
    dry_run: bool = False,
    wait_for_lock: bool = False,
    lookback: timedelta = RECONCILE_LOOKBACK,
    progress: ProgressFactory = LogProgress,
) -> SyncRun:
    """
    Run one sync, reconcile or backfill of one tenant. If another process
    holds the tenant's lock (it is doing this work right now), the run is
    recorded as skipped with that reason.
    A reconcile re-reads ``lookback`` behind the cursor.
    """
    with (
        tenant_sync_lock(tenant_id, wait=wait_for_lock) as acquired,
        heap_frozen(),
    ):
        if not acquired:
            logger.info("tenant %s: %s, skipped", tenant_id, LOCKED_REASON)
            return _skipped_as_locked(tenant_id, kind, dry_run)
        tenant = Tenant.objects.get(pk=tenant_id)
        now = timezone.now()
        if not dry_run and (abandoned := sync_runs_abandon(tenant_id=tenant.pk)):
            logger.warning(
                "tenant %s: %d run(s) %s", tenant.slug, abandoned, ABANDONED_REASON
            )
        with tenant_context([tenant.pk]):
            cursor = _cursor(tenant, dry_run=dry_run)
            start, end = (
                (since, until)
                if since and until
                else _window(kind, tenant, cursor, now, lookback)
            )
            run = SyncRun(
                tenant=tenant,
                kind=kind,
                dry_run=dry_run,
                started_at=now,
                window_start=start,
                window_end=end,
            )
            if not dry_run:
                run.save()
        reason = _ineligible_reason(tenant, kind)
        if reason:
            run.status, run.error, run.finished_at = SyncRun.Status.SKIPPED, reason, now
            _save(run, ["status", "error", "finished_at"])
            return run

        work = _Run(tenant=tenant, run=run)
        label = f"{kind} {tenant.slug}{' (dry run)' if dry_run else ''}"
        try:
            try:
                with progress(label=label, start=start, end=end) as bar:
                    if start < end:
                        work.read(start=start, end=end, progress=bar)
            except ProviderError:
                if not dry_run:
                    # The outbox never waits for Langfuse: Stripe de-duplicates
                    # an identifier for 24 hours only, so an unknown outcome
                    # must be settled while it still can be.
                    with contextlib.suppress(ProviderError, _Deferred, ReportsRejected):
                        work.send()
                raise
            if not dry_run:
                work.bill(read_until=_read_until(kind, end, cursor, now, tenant))
            run.status = SyncRun.Status.SUCCEEDED
        except ProviderAuthError as exc:
            run.status, run.error = SyncRun.Status.FAILED, str(exc)
            if exc.provider == "langfuse" and not dry_run:
                tenant_pause_sync(
                    tenant_id=tenant.pk, reason=str(exc), actor=Actor.job()
                )
        except ReportsRejected as exc:
            # Failed reports wait for an operator: the reason says what to fix.
            run.status, run.error = SyncRun.Status.FAILED, str(exc)
        except (ProviderError, _Deferred) as exc:
            run.status, run.error = SyncRun.Status.FAILED, str(exc)
        except Exception as exc:
            # Record a sanitized trace of the failure, then let the job fail
            # loudly; the exception text itself may quote a provider.
            run.status = SyncRun.Status.FAILED
            run.error = f"internal error: {type(exc).__name__}"
            raise
        finally:
            work.count_calls()
            run.finished_at = timezone.now()
            if not dry_run:
                _record_health(run)
            _save(
                run,
                [
                    *COUNTER_FIELDS,
                    "status",
                    "error",
                    "finished_at",
                    "consecutive_failures",
                ],
            )
            _log_summary(run, work)
        return run


def _failure_kind(error: str) -> str:
    # "3 report(s) left pending" and "4 report(s) left pending" are one
    # failure that goes on: counts in a message do not make it a new one.
    return re.sub(r"\d+", "N", error)


def _record_health(run: SyncRun) -> None:
    """
    Count the runs in a row that failed this way, and show the tenant's
    problem to operators: stuck after SyncRun.STUCK_AFTER identical failures, or
    Stripe reports that failed and wait for a fix and a retry.
    """
    tenant = run.tenant
    with tenant_context([tenant.pk]):
        previous = (
            SyncRun.objects.for_tenant(tenant)
            .filter(
                status__in=[SyncRun.Status.SUCCEEDED, SyncRun.Status.FAILED],
                dry_run=False,
            )
            .exclude(pk=run.pk)
            .order_by("-started_at", "-pk")
            .values("status", "error", "consecutive_failures")
            .first()
        )
        failed_reports = (
            StripeReport.objects.for_tenant(tenant)
            .filter(status=StripeReport.Status.FAILED)
            .count()
        )
    problem = ""
    if run.status == SyncRun.Status.FAILED:
        same = (
            previous is not None
            and previous["status"] == SyncRun.Status.FAILED
            and _failure_kind(previous["error"]) == _failure_kind(run.error)
        )
        run.consecutive_failures = previous["consecutive_failures"] + 1 if same else 1
        if run.consecutive_failures >= SyncRun.STUCK_AFTER:
            problem = (
                f"stuck: {run.consecutive_failures} runs in a row failed: {run.error}"
            )
    if not problem and failed_reports:
        problem = (
            f"{failed_reports} Stripe report(s) failed: fix the tenant's Stripe "
            "settings, then retry them (Stripe reports, status failed)"
        )
    tenant_set_sync_problem(tenant_id=tenant.pk, problem=problem, actor=Actor.job())


def _log_summary(run: SyncRun, work: _Run) -> None:
    if run.healed:
        # One line per run, never one per trace (seed 000's review).
        logger.warning(
            "healed %d traces in tenant %s that the minute syncs had missed",
            run.healed,
            work.tenant.slug,
        )
    reasons = ", ".join(f"{n} {why}" for why, n in sorted(run.skip_reasons.items()))
    logger.info(
        "%s%s %s: %s; %d traces fetched, %d billed, %d skipped%s, %d healed, "
        "%d adjustments, %d/%d reports sent, %d failed; %d Langfuse and %d Stripe "
        "calls, %d rate limited, final delay %d ms%s",
        "dry run of " if run.dry_run else "",
        run.kind,
        work.tenant.slug,
        run.status,
        run.traces_fetched,
        run.billed,
        run.skipped,
        f" ({reasons})" if reasons else "",
        run.healed,
        run.adjustments,
        run.reports_sent,
        run.reports_created,
        run.failed,
        run.langfuse_calls,
        run.stripe_calls,
        run.rate_limited,
        run.final_delay_ms,
        f"; {run.error}" if run.error else "",
    )


def backfill_tenant(
    *,
    tenant_id: int,
    since: datetime,
    until: datetime,
    dry_run: bool = False,
    progress: ProgressFactory = LogProgress,
) -> list[SyncRun]:
    """Bill history one UTC day at a time, waiting for the tenant's lock."""
    return _day_by_day(
        tenant_id=tenant_id,
        kind=SyncRun.Kind.BACKFILL,
        since=since,
        until=until,
        dry_run=dry_run,
        progress=progress,
    )


def reconcile_tenant(
    *,
    tenant_id: int,
    lookback: timedelta = RECONCILE_LOOKBACK,
    dry_run: bool = False,
    progress: ProgressFactory = LogProgress,
) -> list[SyncRun]:
    """
    Re-read ``lookback`` behind the cursor one UTC day at a time, waiting
    for the tenant's lock: a scheduled tier is never lost to a minute sync
    that holds the lock, and a 35-day pass never holds the lock for long.
    """
    tenant = Tenant.objects.get(pk=tenant_id)
    with tenant_context([tenant.pk]):
        cursor = _cursor(tenant, dry_run=dry_run)
    since, until = _window(
        SyncRun.Kind.RECONCILE, tenant, cursor, timezone.now(), lookback
    )
    return _day_by_day(
        tenant_id=tenant_id,
        kind=SyncRun.Kind.RECONCILE,
        since=since,
        until=until,
        dry_run=dry_run,
        progress=progress,
    )


def _day_by_day(
    *, tenant_id: int, kind: str, since: datetime, until: datetime, **options
) -> list[SyncRun]:
    runs = []
    day_start = datetime.combine(since.astimezone(UTC).date(), time.min, tzinfo=UTC)
    while day_start < until:
        day_end = day_start + timedelta(days=1)
        run = sync_tenant(
            tenant_id=tenant_id,
            kind=kind,
            since=max(since, day_start),
            until=min(until, day_end),
            wait_for_lock=True,
            **options,
        )
        runs.append(run)
        if run.status != SyncRun.Status.SUCCEEDED:
            break
        day_start = day_end
    return runs


def eligible_tenant_ids(kind: str = SyncRun.Kind.SYNC) -> list[int]:
    tenants = Tenant.objects.filter(status=Tenant.Status.ACTIVE, sync_paused_reason="")
    if kind == SyncRun.Kind.SYNC:
        tenants = tenants.filter(sync_enabled=True)
    return list(tenants.exclude(langfuse_public_key="").values_list("pk", flat=True))


def sync_tenants(
    tenant_ids: list[int],
    *,
    concurrency: int = 4,
    kind: str = SyncRun.Kind.SYNC,
    lookback: timedelta = RECONCILE_LOOKBACK,
    **options,
) -> list[SyncRun]:
    """
    Sync (or reconcile, a run per day) several tenants in parallel threads,
    each with its own connection, limiter and breaker: one tenant's failures
    never slow another's run.
    """

    def one(tenant_id: int) -> list[SyncRun]:
        try:
            if kind == SyncRun.Kind.RECONCILE:
                return reconcile_tenant(
                    tenant_id=tenant_id, lookback=lookback, **options
                )
            return [sync_tenant(tenant_id=tenant_id, kind=kind, **options)]
        finally:
            connection.close()

    if connection.vendor == "sqlite":
        concurrency = 1  # one writer at a time: the embedded default
    # Frozen once for all the threads: one tenant's run ending must not
    # thaw the heap under the others.
    with heap_frozen(), ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return [run for runs in pool.map(one, tenant_ids) for run in runs]
