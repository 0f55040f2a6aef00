"""
Reconciling the ledger with Stripe: per tenant and UTC day, what the ledger
billed, what the outbox sent, and what Stripe holds.

The sync's own ``reconcile`` re-reads Langfuse; this one checks Stripe.
For a day it compares:

- the ledger's exact amount of the day (records and adjustments, in the
  meter's unit) with what the day's reports carry, and with what is still
  waiting to be reported;
- the whole units the day's sent reports carry with Stripe's meter event
  summary of the day for the customer.

Stripe has no list of meter events, only summaries, so a day that holds less
than was sent is looked at minute by minute (each report's timestamp): a
minute holding nothing of what was sent in it lost those reports, or had
them removed on purpose (a cancelled event, a negative correction); the two
look the same. So such reports are listed as missing, and sent again, with
their own identifiers, only when an operator asks (``--resend-lost``).
Pending reports are sent. A failed report waits for an operator
(``report_retry``), and units Stripe holds beyond what was sent are reported
as unexpected, never deleted. Summaries are read from every meter of the
event name, inactive ones too; with no such meter the day is "unknown
meter", never read as Stripe holding nothing.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from billing.audit import Actor, audit_log_write
from billing.limiter import AdaptiveRateLimiter
from billing.locks import tenant_sync_lock
from billing.models import (
    StripeReconciliation,
    StripeReport,
    Tenant,
    UsageAdjustment,
    UsageRecord,
)
from billing.models.ledger import BillingStatus
from billing.provider_calls import CircuitBreaker, ProviderCaller
from billing.stripe_sink import (
    meter_amount_expression,
    reports_send,
    stripe_client,
    to_meter_amount,
)
from billing.tenancy import tenant_context
from billing.utc_days import day_bounds, days_between

logger = logging.getLogger(__name__)

# Stripe refuses meter events older than 35 days: a lost report older than
# this is reported, not re-sent.
RESEND_WITHIN = timedelta(days=30)
BILLABLE = (BillingStatus.PENDING, BillingStatus.REPORTED)


@dataclass
class _Day:
    ledger_amount: Decimal = Decimal(0)
    unreported_amount: Decimal = Decimal(0)
    reported_amount: Decimal = Decimal(0)
    sent_value: int = 0
    stripe_value: int = 0
    details: dict = field(default_factory=dict)

    @property
    def matches(self) -> bool:
        return (
            self.stripe_value == self.sent_value
            and not self.unreported_amount
            and not any(
                self.details.get(k)
                for k in ("pending", "failed", "missing", "unknown_meter")
            )
            and not self.details.get("outbox_mismatch")
        )


def _ledger(tenant: Tenant, day: date, result: _Day) -> None:
    start, end = day_bounds(day)
    for model in (UsageRecord, UsageAdjustment):
        rows = model.objects.for_tenant(tenant).filter(
            trace_timestamp__gte=start, trace_timestamp__lt=end, status__in=BILLABLE
        )
        by_status = (
            rows.order_by()
            .values("status")
            .annotate(raw=Sum(meter_amount_expression(tenant.meter_unit)))
        )
        for row in by_status:
            amount = to_meter_amount(row["raw"], tenant.meter_unit)
            result.ledger_amount += amount
            if row["status"] == BillingStatus.PENDING:
                result.unreported_amount += amount


class MeterUnknown(Exception):
    """No Stripe meter, active or not, has the event name: nothing to read."""


class _Stripe:
    """The Stripe calls of one reconciliation, paced as the sync's are."""

    def __init__(self) -> None:
        self.client = stripe_client()
        self.caller = ProviderCaller("stripe", AdaptiveRateLimiter(), CircuitBreaker())
        self._meters: dict[str, list[str]] | None = None

    def meter_ids(self, event_name: str) -> list[str]:
        """
        Every meter of the event name, inactive ones too: a meter replaced
        by a new one of the same name keeps the events sent to it.
        """
        if self._meters is None:
            meters = self.caller.call(
                lambda: self.client.v1.billing.meters.list({"limit": 100})
            )
            self._meters = defaultdict(list)
            for meter in meters.auto_paging_iter():
                self._meters[meter.event_name].append(meter.id)
        return self._meters.get(event_name, [])

    def units(self, event_name: str, customer: str, start: int, end: int) -> int:
        meters = self.meter_ids(event_name)
        if not meters:
            # Never "Stripe holds nothing": that would read as a loss.
            raise MeterUnknown(event_name)
        return sum(self._meter_units(m, customer, start, end) for m in meters)

    def _meter_units(self, meter: str, customer: str, start: int, end: int) -> int:
        params = {"customer": customer, "start_time": start, "end_time": end}
        summaries = self.caller.call(
            lambda: self.client.v1.billing.meters.event_summaries.list(
                meter, params=params
            )
        )
        return round(sum(summary.aggregated_value for summary in summaries.data))


def _minute(report: StripeReport) -> int:
    return int(report.timestamp.timestamp()) // 60 * 60


def _check(tenant: Tenant, day: date, stripe: _Stripe) -> tuple[_Day, list[int]]:
    """The day's figures, and the sent reports Stripe lost (to re-send)."""
    result = _Day()
    with tenant_context([tenant.pk]):
        _ledger(tenant, day, result)
        reports = list(StripeReport.objects.for_tenant(tenant).filter(day=day))
    result.reported_amount = sum((r.amount for r in reports), Decimal(0))
    by_status = defaultdict(list)
    for report in reports:
        by_status[report.status].append(report)
    result.details["pending"] = [r.identifier for r in by_status["pending"]]
    result.details["failed"] = [r.identifier for r in by_status["failed"]]
    # What the ledger calls reported is what the reports carry.
    outbox = result.ledger_amount - result.unreported_amount - result.reported_amount
    if outbox:
        result.details["outbox_mismatch"] = str(outbox)
    sent = [r for r in by_status["sent"] if r.value > 0]
    result.sent_value = sum(r.value for r in sent)
    start, end = (int(moment.timestamp()) for moment in day_bounds(day))
    targets = {(r.event_name, r.stripe_customer_id) for r in sent} or {
        (tenant.stripe_meter_event_name, tenant.stripe_customer_id)
    }
    try:
        result.stripe_value = sum(
            stripe.units(event, customer, start, end)
            for event, customer in targets
            if customer
        )
    except MeterUnknown as exc:
        result.details["unknown_meter"] = str(exc)
        return result, []
    lost: list[int] = []
    if result.stripe_value < result.sent_value:
        lost = _lost(sent, stripe, result)
    elif result.stripe_value > result.sent_value:
        result.details["unexpected"] = result.stripe_value - result.sent_value
    return result, lost


def _lost(sent: list[StripeReport], stripe: _Stripe, result: _Day) -> list[int]:
    """Sent reports of minutes where Stripe holds none of what was sent."""
    minutes = defaultdict(list)
    for report in sent:
        minutes[(report.event_name, report.stripe_customer_id, _minute(report))].append(
            report
        )
    lost, unexplained = [], []
    for (event, customer, minute), reports in minutes.items():
        held = stripe.units(event, customer, minute, minute + 60)
        if held >= sum(r.value for r in reports):
            continue
        if held == 0:
            lost += reports
        else:  # part of a minute's reports: which, Stripe cannot say
            unexplained += reports
    result.details["missing"] = [r.identifier for r in lost + unexplained]
    return [r.pk for r in lost]


@transaction.atomic
def report_resend(*, report_id: int, actor: Actor) -> bool:
    """
    Put a sent report Stripe lost back in the outbox, to be sent again with
    its own identifier; audited. Returns whether it was still sent.
    """
    report = StripeReport.objects.select_for_update().get(pk=report_id)
    updated = StripeReport.objects.filter(
        pk=report_id, status=StripeReport.Status.SENT
    ).update(status=StripeReport.Status.PENDING, last_error="")
    if updated:
        audit_log_write(
            actor=actor,
            action="report.resend",
            obj=report,
            tenant=report.tenant,
            before={"status": report.status},
            after={"status": StripeReport.Status.PENDING},
            note="Stripe holds none of it (reconciliation): sent again.",
        )
    return bool(updated)


def _fix(tenant: Tenant, lost: list[int], stripe: _Stripe, actor: Actor) -> list[str]:
    with tenant_sync_lock(tenant.pk, wait=True):
        with tenant_context([tenant.pk]):
            resent = [
                identifier
                for report_id, identifier in StripeReport.objects.filter(
                    pk__in=lost
                ).values_list("pk", "identifier")
                if report_resend(report_id=report_id, actor=actor)
            ]
        reports_send(tenant=tenant, caller=stripe.caller, concurrency=1)
    return resent


def stripe_reconcile(
    *,
    tenant: Tenant,
    day: date,
    fix: bool,
    actor: Actor,
    resend_lost: bool = False,
    stripe: _Stripe | None = None,
) -> StripeReconciliation:
    """
    Check one tenant-day against Stripe and store the result. With ``fix``,
    send its pending reports; with ``resend_lost`` too, send again the sent
    reports Stripe holds none of. That is an operator's call, never the
    nightly job's: usage removed in Stripe on purpose (a cancelled event, a
    negative correction) looks the same as usage lost.
    """
    stripe = stripe or _Stripe()
    result, lost = _check(tenant, day, stripe)
    too_old = day < (timezone.now() - RESEND_WITHIN).date()
    lost = lost if resend_lost and not too_old else []
    if fix and (lost or result.details["pending"]):
        resent = _fix(tenant, lost, stripe, actor)
        result, _ = _check(tenant, day, stripe)
        result.details["resent"] = resent
    elif resend_lost and too_old and result.details.get("missing"):
        result.details["too_old_to_resend"] = True
    status = (
        StripeReconciliation.Status.MATCH
        if result.matches
        else StripeReconciliation.Status.DRIFT
    )
    with tenant_context([tenant.pk]):
        reconciliation, _ = StripeReconciliation.objects.update_or_create(
            tenant=tenant,
            day=day,
            defaults={
                "status": status,
                "checked_at": timezone.now(),
                "ledger_amount": result.ledger_amount,
                "unreported_amount": result.unreported_amount,
                "reported_amount": result.reported_amount,
                "sent_value": result.sent_value,
                "stripe_value": result.stripe_value,
                "details": {k: v for k, v in result.details.items() if v},
            },
        )
    if status == StripeReconciliation.Status.DRIFT:
        logger.warning(
            "tenant %s %s: Stripe holds %s, sent %s (%s)",
            tenant.slug,
            day,
            result.stripe_value,
            result.sent_value,
            reconciliation.details,
        )
    return reconciliation


# The days a daily run checks: the last week, up to yesterday (today is not
# over, and its reports are still being sent).
DAYS_CHECKED = 7


def stripe_reconcile_tenants(
    *,
    since: date,
    until: date,
    fix: bool,
    actor: Actor,
    resend_lost: bool = False,
    tenant_ids: list[int] | None = None,
) -> list[StripeReconciliation]:
    """Reconcile every billed tenant (or ``tenant_ids``), day by day."""
    tenants = Tenant.objects.filter(status=Tenant.Status.ACTIVE).exclude(
        stripe_customer_id=""
    )
    if tenant_ids is not None:
        tenants = Tenant.objects.filter(pk__in=tenant_ids)
    days = days_between(since, until)
    stripe = _Stripe()
    return [
        stripe_reconcile(
            tenant=tenant,
            day=day,
            fix=fix,
            actor=actor,
            resend_lost=resend_lost,
            stripe=stripe,
        )
        for tenant in tenants.order_by("slug")
        for day in days
    ]


def stripe_reconcile_recent(*, actor: Actor) -> list[StripeReconciliation]:
    """
    The daily run: the last ``DAYS_CHECKED`` days of every billed tenant.
    Pending reports are sent; lost ones are reported, for an operator.
    """
    until = timezone.now().date() - timedelta(days=1)
    return stripe_reconcile_tenants(
        since=until - timedelta(days=DAYS_CHECKED - 1),
        until=until,
        fix=True,
        actor=actor,
    )
