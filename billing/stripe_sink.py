"""
Billing Stripe: the outbox of meter events and the sender that empties it.

``reports_create`` turns settled ledger rows into ``StripeReport`` rows, one
per batch, in the same transaction that marks the rows reported; a batch never
spans two UTC days, so usage lands in the right billing period. The identifier
is a digest of the batch's rows, so it is the same however often the batch is
built, and Stripe de-duplicates a re-send after a crash.

Meter values are integers. The exact amount is kept, and each batch's value is
``floor(everything billed so far) - units already sent``, so rounding is
carried from batch to batch and the meter total never drifts from the ledger
by a whole unit. A batch that nets negative (Langfuse revised usage down) sends
nothing and its credit is taken off the following batches.

Sending: Stripe saves the first answer of an Idempotency-Key, 500s included,
and replays it for every later request with that key. So the key is never
the identifier alone: each try of a report gets its own key, derived from the
identifier, the report's ``attempts`` (one per send run) and the try number,
deterministic and never reused. An unknown outcome (5xx, lost connection, a
200 whose body cannot be read) is retried with the same identifier under a
new key; if the first try was recorded, Stripe refuses the identifier as a
duplicate, and that refusal means "recorded": the report is sent.

A report Stripe rejects for good (no such customer, no meter for the event
name) is failed with a reason that says what to fix, the run fails with the
same reason, and it stays failed until an operator fixes the tenant and
retries it (``report_retry``), which re-targets it at the tenant's current
customer and meter event name.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal

import stripe
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.db.models.functions import TruncDate
from django.utils import timezone

from billing.audit import Actor, audit_log_write
from billing.models import (
    StripeReport,
    SyncCursor,
    Tenant,
    UsageAdjustment,
    UsageRecord,
)
from billing.models.ledger import BillingStatus
from billing.models.tenants import MeterUnit
from billing.provider_calls import (
    STRIPE_DUPLICATE_EVENT,
    Failure,
    PermanentProviderError,
    ProviderAuthError,
    ProviderCaller,
    ProviderError,
)
from billing.scope_usage import BILLABLE_UNCHANGED_SETTING
from billing.services import InvalidTransition
from billing.tenancy import tenant_context
from billing.utc_days import day_bounds

logger = logging.getLogger(__name__)

# Rows per meter event. Stripe calls scale with batches, not traces.
MAX_BATCH_ROWS = 5000
MICRO = Decimal(1_000_000)


def stripe_client() -> stripe.StripeClient:
    # Retries are ours (the tenant's limiter and breaker), not the library's.
    return stripe.StripeClient(
        settings.STRIPE_API_KEY,
        base_addresses={"api": settings.STRIPE_API_BASE},
        max_network_retries=0,
    )


def meter_amount_expression(unit: str):
    if unit == MeterUnit.TOKENS:
        return F("input_tokens") + F("output_tokens") + F("cached_tokens")
    return F("cost")


def to_meter_amount(raw: Decimal | int | None, unit: str) -> Decimal:
    raw = Decimal(raw or 0)
    return raw if unit == MeterUnit.TOKENS else raw * MICRO


def settled(tenant: Tenant, now: datetime) -> Q:
    """
    Records that may be billed (seed 002): quiet for the settle window, and
    no observation still running, unless it ran past the maximum age.
    """
    return Q(last_activity_at__lt=now - timedelta(seconds=tenant.settle_seconds)) & (
        Q(running_since__isnull=True)
        | Q(running_since__lt=now - timedelta(seconds=tenant.max_running_seconds))
    )


def _pending(queryset, settled_rule: Q | None):
    queryset = queryset.filter(status=BillingStatus.PENDING)
    if settled_rule is not None:
        queryset = queryset.filter(settled_rule)
    return queryset


def _pending_days(queryset, settled_rule: Q | None) -> set[date]:
    return set(
        _pending(queryset, settled_rule)
        .annotate(day=TruncDate("trace_timestamp", tzinfo=UTC))
        .values_list("day", flat=True)
        .distinct()
    )


class _DayRows:
    """
    A UTC day's billable rows of one table, in (trace timestamp, id) order,
    handed out a batch at a time. Each batch is read from where the last one
    stopped, with its meter amounts, so a day of n batches is read once, not
    n times over. (A row made pending behind that point meanwhile waits for
    the next run; the tenant's sync lock keeps the ledger's writers out.)
    """

    def __init__(self, queryset, day: date, settled_rule: Q | None, unit: str):
        start, end = day_bounds(day)
        self.rows = (
            _pending(queryset, settled_rule)
            .filter(trace_timestamp__gte=start, trace_timestamp__lt=end)
            .annotate(meter_raw=meter_amount_expression(unit))
            .order_by("trace_timestamp", "id")
        )
        self.after: tuple[datetime, int] | None = None

    def take(self, limit: int) -> list[tuple[int, Decimal | int, datetime]]:
        """Up to ``limit`` (id, meter amount, trace timestamp) rows."""
        if limit <= 0:
            return []
        rows = self.rows
        if self.after is not None:
            at, pk = self.after
            # The first condition alone bounds the index scan.
            rows = rows.filter(trace_timestamp__gte=at).filter(
                Q(trace_timestamp__gt=at) | Q(id__gt=pk)
            )
        batch = list(rows.values_list("id", "meter_raw", "trace_timestamp")[:limit])
        if batch:
            self.after = (batch[-1][2], batch[-1][0])
        return batch


def _identifier(
    tenant: Tenant, day: date, record_ids: list[int], adjustment_ids: list[int]
) -> str:
    digest = hashlib.sha256(f"{record_ids}|{adjustment_ids}".encode()).hexdigest()[:32]
    return f"lf-{tenant.pk}-{day:%Y%m%d}-{digest}"


@contextmanager
def billable_unchanged() -> Iterator[None]:
    """Statements in here move ledger rows between billable statuses only."""
    if connection.vendor != "postgresql":
        yield  # SQLite's row triggers skip such updates by themselves
        return
    # Transaction-local: a failure inside rolls it back with the statements
    # (resetting it there would fail in the aborted transaction instead).
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config(%s, 'on', true)", [BILLABLE_UNCHANGED_SETTING]
        )
        yield
        cursor.execute(
            "SELECT set_config(%s, 'off', true)", [BILLABLE_UNCHANGED_SETTING]
        )


def _create_one_report(
    tenant: Tenant, day: date, records: _DayRows, adjustments: _DayRows
) -> StripeReport | None:
    with tenant_context([tenant.pk]):
        cursor, _ = SyncCursor.objects.select_for_update().get_or_create(tenant=tenant)
        batch_records = records.take(MAX_BATCH_ROWS)
        batch_adjustments = adjustments.take(MAX_BATCH_ROWS - len(batch_records))
        if not batch_records and not batch_adjustments:
            return None
        record_ids = [pk for pk, _, _ in batch_records]
        adjustment_ids = [pk for pk, _, _ in batch_adjustments]
        unit = tenant.meter_unit
        amount = sum(
            to_meter_amount(sum(raw for _, raw, _ in batch), unit)
            for batch in (batch_records, batch_adjustments)
        )
        billed_amount = cursor.billed_amount + amount
        target_units = int(billed_amount.to_integral_value(rounding=ROUND_FLOOR))
        value = max(0, target_units - cursor.billed_units)
        report = StripeReport.objects.create(
            tenant=tenant,
            identifier=_identifier(tenant, day, record_ids, adjustment_ids),
            event_name=tenant.stripe_meter_event_name,
            stripe_customer_id=tenant.stripe_customer_id,
            unit=unit,
            value=value,
            amount=amount,
            day=day,
            timestamp=max(
                at for batch in (batch_records, batch_adjustments) for _, _, at in batch
            ),
            record_count=len(record_ids),
            adjustment_count=len(adjustment_ids),
        )
        # Pending -> reported: both billable, so the kept tables need not
        # look (billing.scope_usage.BILLABLE_UNCHANGED_SETTING).
        with billable_unchanged():
            for model, ids in (
                (UsageRecord, record_ids),
                (UsageAdjustment, adjustment_ids),
            ):
                if ids:
                    model.objects.for_tenant(tenant).filter(
                        id__in=ids, status=BillingStatus.PENDING
                    ).update(status=BillingStatus.REPORTED, report=report)
        cursor.billed_amount = billed_amount
        cursor.billed_units += value
        cursor.save(update_fields=["billed_amount", "billed_units", "updated_at"])
        return report


@dataclass
class Batched:
    reports: int = 0
    records: int = 0
    adjustments: int = 0


def reports_create(*, tenant: Tenant, now: datetime | None = None) -> Batched:
    """
    Batch every settled, pending ledger row of ``tenant`` into the outbox.

    A tenant without a Stripe customer keeps its rows pending (keyless
    degrade): the ledger fills, and they are reported once a customer is set.
    """
    batched = Batched()
    if not tenant.stripe_customer_id:
        return batched
    now = now or timezone.now()
    settled_rule = settled(tenant, now)
    with tenant_context([tenant.pk]):
        # Adjustments are billed as soon as they are seen: their trace
        # settled long ago, or it would not have been reported.
        days = sorted(
            _pending_days(UsageRecord.objects.for_tenant(tenant), settled_rule)
            | _pending_days(UsageAdjustment.objects.for_tenant(tenant), None)
        )
    for day in days:
        records = _DayRows(
            UsageRecord.objects.for_tenant(tenant), day, settled_rule, tenant.meter_unit
        )
        adjustments = _DayRows(
            UsageAdjustment.objects.for_tenant(tenant), day, None, tenant.meter_unit
        )
        while report := _create_one_report(tenant, day, records, adjustments):
            batched.reports += 1
            batched.records += report.record_count
            batched.adjustments += report.adjustment_count
            if report.record_count + report.adjustment_count < MAX_BATCH_ROWS:
                break  # a batch with room left took the rest of the day
    return batched


def _already_recorded(failure: Failure) -> bool | None:
    """
    Stripe refused the identifier because it has it: an earlier try (an
    unknown outcome, or a run that crashed before it committed) went through.
    That is success, not an error. Accepted shapes: the OpenAPI spec's
    ``duplicate_meter_event`` (a message-only 400 is normalised to it by
    ``classify``) and ``resource_already_exists`` on the identifier.
    """
    if failure.status != 400:
        return None
    if failure.code == STRIPE_DUPLICATE_EVENT:
        return True
    if failure.code == "resource_already_exists" and failure.param in (
        "identifier",
        None,
    ):
        return True
    return None


def idempotency_key(identifier: str, attempt: int, try_number: int) -> str:
    """
    The Idempotency-Key of one try: ``attempt`` is the report's ``attempts``
    when the run picked it up (it grows by one per run that handles it),
    ``try_number`` counts the tries within that run. A key is never sent
    twice with a different outcome in mind, so a saved 500 is never replayed
    at us again.
    """
    return f"{identifier}-try-{attempt}-{try_number}"


# What the operator should do about a rejection, by Stripe error code.
_CUSTOMER_CODES = {"meter_event_customer_not_found", "meter_event_no_customer_defined"}
_METER_CODES = {"no_meter", "archived_meter"}
_TIMESTAMP_CODES = {"timestamp_too_far_in_past", "timestamp_in_future"}
RETRY_HINT = "then retry the failed reports"


def rejection_hint(failure: Failure | None) -> str:
    """An operator's next step for a report Stripe rejected; no provider text."""
    code = failure.code if failure else None
    param = (failure.param if failure else None) or ""
    if code in _TIMESTAMP_CODES:
        return (
            "Stripe takes meter events of the last 35 days only; "
            "bill this usage by hand"
        )
    if code in _CUSTOMER_CODES or (code == "resource_missing" and "customer" in param):
        return (
            "set the tenant's Stripe customer id to an existing customer, " + RETRY_HINT
        )
    if code in _METER_CODES or param == "event_name":
        return (
            "set the tenant's meter event name to an active Stripe meter, " + RETRY_HINT
        )
    return f"fix the tenant's Stripe settings, {RETRY_HINT}"


class ReportsRejected(Exception):
    """
    Stripe rejected reports of a run for good (4xx other than 408/429).

    The message is sanitized: counts, status, Stripe error code and param,
    and what to do; never text Stripe sent back.
    """

    def __init__(self, rejections: Counter[tuple[str, str]], deferred: int = 0) -> None:
        self.rejections = rejections
        self.deferred = deferred
        total = sum(rejections.values())
        details: Counter[str] = Counter()
        for (detail, _hint), count in rejections.items():
            details[detail] += count
        if len(details) == 1:
            [what] = details
        else:
            what = ", ".join(f"{n} x {detail}" for detail, n in sorted(details.items()))
        hints = "; ".join(sorted({hint for _detail, hint in rejections}))
        message = f"Stripe rejected {total} report(s): {what}; {hints}"
        if deferred:
            message += f"; {deferred} other report(s) left pending after retries"
        super().__init__(message)


@dataclass
class SendResult:
    sent: int = 0
    failed: int = 0
    deferred: int = 0
    calls: int = 0
    # Usage records of the reports sent by this call: what is billed now.
    records: int = 0
    # (error detail, what to do) -> number of reports Stripe rejected so.
    rejections: Counter[tuple[str, str]] = field(default_factory=Counter)


@dataclass(frozen=True)
class _Outcome:
    status: str  # "sent", "failed" or "deferred"
    records: int = 0
    rejection: tuple[str, str] | None = None


def report_transition(
    *,
    report: StripeReport,
    to: str,
    actor: Actor,
    error: str = "",
    from_statuses: tuple[str, ...] = (StripeReport.Status.PENDING,),
    count_attempt: bool = True,
) -> bool:
    """
    Move a report to ``to`` if it is still in one of ``from_statuses``; audit it.

    A conditional UPDATE, so two senders (or an operator's retry racing the
    sender) change a report once. Returns whether this call changed it.
    """
    with tenant_context([report.tenant_id]):
        changes = {"status": to, "last_error": error}
        if count_attempt:
            changes["attempts"] = F("attempts") + 1
        if to == StripeReport.Status.SENT:
            changes["sent_at"] = timezone.now()
        updated = StripeReport.objects.filter(
            pk=report.pk, status__in=from_statuses
        ).update(**changes)
        if updated and to != report.status:
            audit_log_write(
                actor=actor,
                action=f"report.{to}",
                obj=report,
                tenant=report.tenant,
                before={"status": report.status},
                after={"status": to, **({"error": error} if error else {})},
            )
        return bool(updated)


@transaction.atomic
def report_retry(*, report_id: int, actor: Actor) -> bool:
    """
    Queue a failed report again, aimed at the tenant's current Stripe customer
    and meter event name (the operator fixed them after the rejection).

    The report keeps its identifier: Stripe did not record a rejected event,
    and the identifier is what de-duplicates the re-send. The next sync sends
    it under a fresh Idempotency-Key (its ``attempts`` grew when it failed).
    The report is looked up in the caller's tenant scope. Returns False if it
    is no longer failed (another operator retried it first); raises
    InvalidTransition if the tenant has nowhere to send it.
    """
    report = StripeReport.objects.select_related("tenant").get(pk=report_id)
    tenant = report.tenant
    missing = [
        label
        for label, value in (
            ("Stripe customer id", tenant.stripe_customer_id),
            ("meter event name", tenant.stripe_meter_event_name),
        )
        if not value
    ]
    if missing:
        raise InvalidTransition(
            f"Tenant {tenant.slug} has no {' and no '.join(missing)}; "
            "set it before retrying its reports."
        )
    with tenant_context([tenant.pk]):
        updated = StripeReport.objects.filter(
            pk=report.pk, status=StripeReport.Status.FAILED
        ).update(
            status=StripeReport.Status.PENDING,
            stripe_customer_id=tenant.stripe_customer_id,
            event_name=tenant.stripe_meter_event_name,
            last_error="",
        )
        if updated:
            audit_log_write(
                actor=actor,
                action="report.retry",
                obj=report,
                tenant=tenant,
                before={
                    "status": report.status,
                    "stripe_customer_id": report.stripe_customer_id,
                    "event_name": report.event_name,
                    "error": report.last_error,
                },
                after={
                    "status": StripeReport.Status.PENDING,
                    "stripe_customer_id": tenant.stripe_customer_id,
                    "event_name": tenant.stripe_meter_event_name,
                },
            )
    return bool(updated)


# Stripe de-duplicates an identifier for a rolling 24 hours at least: past
# that, re-sending a report whose earlier try may have been recorded could
# bill it twice. Before then, it goes to an operator instead.
UNKNOWN_OUTCOME_WINDOW = timedelta(hours=20)
UNKNOWN_OUTCOME_DETAIL = "outcome unknown for over 20 hours"
UNKNOWN_OUTCOME_HINT = (
    "Stripe may have recorded it: check the customer's meter event summaries "
    "for this identifier, then retry the report only if it is missing"
)


def _outcome_too_old(report: StripeReport) -> bool:
    tried = report.attempts > 0 and report.last_error
    return bool(tried) and report.created_at < timezone.now() - UNKNOWN_OUTCOME_WINDOW


def _send_one(
    *,
    tenant: Tenant,
    report_id: int,
    caller: ProviderCaller,
    client: stripe.StripeClient,
) -> _Outcome:
    actor = Actor.job()
    try:
        with tenant_context([tenant.pk]):
            report = StripeReport.objects.select_related("tenant").get(
                pk=report_id, status=StripeReport.Status.PENDING
            )
        if _outcome_too_old(report):
            report_transition(
                report=report,
                to=StripeReport.Status.FAILED,
                actor=actor,
                error=f"{UNKNOWN_OUTCOME_DETAIL}; {UNKNOWN_OUTCOME_HINT}",
            )
            return _Outcome(
                "failed", rejection=(UNKNOWN_OUTCOME_DETAIL, UNKNOWN_OUTCOME_HINT)
            )
        tries = itertools.count()
        failures: list[Failure] = []

        def create_event():
            return client.v1.billing.meter_events.create(
                params={
                    "event_name": report.event_name,
                    "identifier": report.identifier,
                    "timestamp": int(report.timestamp.timestamp()),
                    "payload": {
                        "stripe_customer_id": report.stripe_customer_id,
                        "value": str(report.value),
                    },
                },
                options={
                    "idempotency_key": idempotency_key(
                        report.identifier, report.attempts, next(tries)
                    )
                },
            )

        def on_failure(failure: Failure) -> bool | None:
            failures.append(failure)
            return _already_recorded(failure)

        try:
            if report.value > 0:
                caller.call(create_event, on_failure=on_failure)
        except ProviderAuthError:
            # The platform's Stripe key is wrong: no report can go; stop the
            # run with the reports left pending rather than failing them all.
            report_transition(
                report=report,
                to=StripeReport.Status.PENDING,
                actor=actor,
                error="stripe: credentials rejected",
            )
            raise
        except PermanentProviderError as exc:
            hint = rejection_hint(failures[-1] if failures else None)
            report_transition(
                report=report,
                to=StripeReport.Status.FAILED,
                actor=actor,
                error=f"{exc}; {hint}",
            )
            return _Outcome("failed", rejection=(exc.detail, hint))
        except ProviderError as exc:
            report_transition(
                report=report,
                to=StripeReport.Status.PENDING,
                actor=actor,
                error=f"{exc}; the next sync retries it",
            )
            return _Outcome("deferred")
        report_transition(report=report, to=StripeReport.Status.SENT, actor=actor)
        return _Outcome("sent", records=report.record_count)
    finally:
        # Each pool thread has its own connection; do not leave it open.
        connection.close()


def reports_send(
    *,
    tenant: Tenant,
    caller: ProviderCaller,
    concurrency: int,
) -> SendResult:
    """
    Push the tenant's pending reports, ``concurrency`` at a time.

    Failed reports are not sent: they wait for an operator (``report_retry``).
    """
    client = stripe_client()
    with tenant_context([tenant.pk]):
        report_ids = list(
            StripeReport.objects.for_tenant(tenant)
            .filter(status=StripeReport.Status.PENDING)
            .order_by("day", "id")
            .values_list("id", flat=True)
        )
    result = SendResult()
    if not report_ids:
        return result

    def send(report_id: int) -> _Outcome:
        return _send_one(
            tenant=tenant, report_id=report_id, caller=caller, client=client
        )

    if connection.vendor == "sqlite":
        concurrency = 1  # one writer at a time: the embedded default
    with ThreadPoolExecutor(
        max_workers=concurrency, thread_name_prefix=f"stripe-{tenant.pk}"
    ) as pool:
        for outcome in pool.map(send, report_ids):
            setattr(result, outcome.status, getattr(result, outcome.status) + 1)
            result.records += outcome.records
            if outcome.rejection:
                result.rejections[outcome.rejection] += 1
    return result
