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
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_FLOOR, Decimal

import stripe
from django.conf import settings
from django.db import connection
from django.db.models import F, Max, Sum
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
    Failure,
    PermanentProviderError,
    ProviderAuthError,
    ProviderCaller,
    ProviderError,
)
from billing.tenancy import tenant_context

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


def _amount_expression(unit: str):
    if unit == MeterUnit.TOKENS:
        return F("input_tokens") + F("output_tokens") + F("cached_tokens")
    return F("cost")


def _to_amount(raw: Decimal | int | None, unit: str) -> Decimal:
    raw = Decimal(raw or 0)
    return raw if unit == MeterUnit.TOKENS else raw * MICRO


def _pending(queryset, settled_before: datetime | None):
    queryset = queryset.filter(status=BillingStatus.PENDING)
    if settled_before is not None:
        queryset = queryset.filter(last_activity_at__lt=settled_before)
    return queryset


def _pending_days(queryset, settled_before: datetime | None) -> set[date]:
    return set(
        _pending(queryset, settled_before)
        .annotate(day=TruncDate("trace_timestamp", tzinfo=UTC))
        .values_list("day", flat=True)
        .distinct()
    )


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


def _batch_ids(queryset, day: date, settled_before: datetime | None) -> list[int]:
    start, end = _day_bounds(day)
    queryset = _pending(queryset, settled_before).filter(
        trace_timestamp__gte=start, trace_timestamp__lt=end
    )
    ids = queryset.order_by("trace_timestamp", "id").values_list("id", flat=True)
    return list(ids[:MAX_BATCH_ROWS])


def _identifier(
    tenant: Tenant, day: date, record_ids: list[int], adjustment_ids: list[int]
) -> str:
    digest = hashlib.sha256(f"{record_ids}|{adjustment_ids}".encode()).hexdigest()[:32]
    return f"lf-{tenant.pk}-{day:%Y%m%d}-{digest}"


def _create_one_report(
    tenant: Tenant, day: date, settled_before: datetime
) -> StripeReport | None:
    records = UsageRecord.objects.for_tenant(tenant)
    adjustments = UsageAdjustment.objects.for_tenant(tenant)
    with tenant_context([tenant.pk]):
        cursor, _ = SyncCursor.objects.select_for_update().get_or_create(tenant=tenant)
        record_ids = _batch_ids(records, day, settled_before)
        room = MAX_BATCH_ROWS - len(record_ids)
        adjustment_ids = _batch_ids(adjustments, day, None)[:room] if room else []
        if not record_ids and not adjustment_ids:
            return None
        unit = tenant.meter_unit
        batch_records = records.filter(id__in=record_ids)
        batch_adjustments = adjustments.filter(id__in=adjustment_ids)
        amount = Decimal(0)
        latest = []
        for batch, ids in (
            (batch_records, record_ids),
            (batch_adjustments, adjustment_ids),
        ):
            if ids:
                totals = batch.aggregate(
                    raw=Sum(_amount_expression(unit)), latest=Max("trace_timestamp")
                )
                amount += _to_amount(totals["raw"], unit)
                latest.append(totals["latest"])
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
            timestamp=max(latest),
            record_count=len(record_ids),
            adjustment_count=len(adjustment_ids),
        )
        batch_records.update(status=BillingStatus.REPORTED, report=report)
        batch_adjustments.update(status=BillingStatus.REPORTED, report=report)
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
    settled_before = now - timedelta(seconds=tenant.settle_seconds)
    with tenant_context([tenant.pk]):
        # Adjustments are billed as soon as they are seen: their trace
        # settled long ago, or it would not have been reported.
        days = sorted(
            _pending_days(UsageRecord.objects.for_tenant(tenant), settled_before)
            | _pending_days(UsageAdjustment.objects.for_tenant(tenant), None)
        )
    for day in days:
        while report := _create_one_report(tenant, day, settled_before):
            batched.reports += 1
            batched.records += report.record_count
            batched.adjustments += report.adjustment_count
    return batched


def _already_recorded(failure: Failure) -> bool | None:
    # A re-send of an identifier Stripe has: the first send went through
    # before a crash or a lost response. That is success, not an error.
    return True if failure.code == "resource_already_exists" else None


@dataclass
class SendResult:
    sent: int = 0
    failed: int = 0
    deferred: int = 0
    calls: int = 0


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


def _send_one(
    *,
    tenant: Tenant,
    report_id: int,
    caller: ProviderCaller,
    client: stripe.StripeClient,
) -> str:
    actor = Actor.job()
    try:
        with tenant_context([tenant.pk]):
            report = StripeReport.objects.select_related("tenant").get(
                pk=report_id, status=StripeReport.Status.PENDING
            )
        try:
            if report.value > 0:
                caller.call(
                    lambda: client.v1.billing.meter_events.create(
                        params={
                            "event_name": report.event_name,
                            "identifier": report.identifier,
                            "timestamp": int(report.timestamp.timestamp()),
                            "payload": {
                                "stripe_customer_id": report.stripe_customer_id,
                                "value": str(report.value),
                            },
                        },
                        options={"idempotency_key": report.identifier},
                    ),
                    on_failure=_already_recorded,
                )
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
            report_transition(
                report=report,
                to=StripeReport.Status.FAILED,
                actor=actor,
                error=str(exc),
            )
            return "failed"
        except ProviderError as exc:
            report_transition(
                report=report,
                to=StripeReport.Status.PENDING,
                actor=actor,
                error=str(exc),
            )
            return "deferred"
        report_transition(report=report, to=StripeReport.Status.SENT, actor=actor)
        return "sent"
    finally:
        # Each pool thread has its own connection; do not leave it open.
        connection.close()


def reports_send(
    *,
    tenant: Tenant,
    caller: ProviderCaller,
    concurrency: int,
) -> SendResult:
    """Push the tenant's pending reports, ``concurrency`` at a time."""
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

    def send(report_id: int) -> str:
        return _send_one(
            tenant=tenant, report_id=report_id, caller=caller, client=client
        )

    with ThreadPoolExecutor(
        max_workers=concurrency, thread_name_prefix=f"stripe-{tenant.pk}"
    ) as pool:
        for outcome in pool.map(send, report_ids):
            setattr(result, outcome, getattr(result, outcome) + 1)
    return result
