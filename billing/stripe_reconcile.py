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
minute holding nothing of what was sent in it lost those reports. Only such a
report is re-sent, with its own identifier: Stripe demonstrably does not
have it, so sending it cannot count it twice, whatever Stripe's
de-duplication window. Pending reports are sent too. A failed report waits
for an operator (``report_retry``), and units Stripe holds beyond what was
sent are reported as unexpected, never deleted (there is no way to, and
whoever sent them may be right).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
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
            and not any(self.details.get(k) for k in ("pending", "failed", "missing"))
            and not self.details.get("outbox_mismatch")
        )


def _bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


def _ledger(tenant: Tenant, day: date, result: _Day) -> None:
    start, end = _bounds(day)
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


class _Stripe:
    """The Stripe calls of one reconciliation, paced as the sync's are."""

    def __init__(self) -> None:
        self.client = stripe_client()
        self.caller = ProviderCaller("stripe", AdaptiveRateLimiter(), CircuitBreaker())
        self._meters: dict[str, str | None] = {}

    def meter_id(self, event_name: str) -> str | None:
        if event_name not in self._meters:
            meters = self.caller.call(
                lambda: self.client.v1.billing.meters.list(
                    {"status": "active", "limit": 100}
                )
            )
            self._meters.update({m.event_name: m.id for m in meters.data})
            self._meters.setdefault(event_name, None)
        return self._meters[event_name]

    def units(self, event_name: str, customer: str, start: int, end: int) -> int:
        meter = self.meter_id(event_name)
        if meter is None:
            return 0
        summaries = self.caller.call(
            lambda: self.client.v1.billing.meters.event_summaries.list(
                meter,
                params={"customer": customer, "start_time": start, "end_time": end},
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
    start, end = (int(moment.timestamp()) for moment in _bounds(day))
    targets = {(r.event_name, r.stripe_customer_id) for r in sent} or {
        (tenant.stripe_meter_event_name, tenant.stripe_customer_id)
    }
    result.stripe_value = sum(
        stripe.units(event, customer, start, end)
        for event, customer in targets
        if customer
    )
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


def _fix(tenant: Tenant, day: date, lost: list[int], stripe: _Stripe, actor: Actor):
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
    *, tenant: Tenant, day: date, fix: bool, actor: Actor, stripe: _Stripe | None = None
) -> StripeReconciliation:
    """Check one tenant-day against Stripe (and fix what is safe); store it."""
    stripe = stripe or _Stripe()
    result, lost = _check(tenant, day, stripe)
    too_old = day < (timezone.now() - RESEND_WITHIN).date()
    if fix and not too_old and (lost or result.details["pending"]):
        resent = _fix(tenant, day, lost, stripe, actor)
        result, _ = _check(tenant, day, stripe)
        result.details["resent"] = resent
    elif lost and too_old:
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
    tenant_ids: list[int] | None = None,
) -> list[StripeReconciliation]:
    """Reconcile every billed tenant (or ``tenant_ids``), day by day."""
    tenants = Tenant.objects.filter(status=Tenant.Status.ACTIVE).exclude(
        stripe_customer_id=""
    )
    if tenant_ids is not None:
        tenants = Tenant.objects.filter(pk__in=tenant_ids)
    days = [since + timedelta(days=n) for n in range((until - since).days + 1)]
    stripe = _Stripe()
    return [
        stripe_reconcile(tenant=tenant, day=day, fix=fix, actor=actor, stripe=stripe)
        for tenant in tenants.order_by("slug")
        for day in days
    ]


def stripe_reconcile_recent(*, actor: Actor) -> list[StripeReconciliation]:
    """The daily run: the last ``DAYS_CHECKED`` days of every billed tenant."""
    until = timezone.now().date() - timedelta(days=1)
    return stripe_reconcile_tenants(
        since=until - timedelta(days=DAYS_CHECKED - 1),
        until=until,
        fix=True,
        actor=actor,
    )
