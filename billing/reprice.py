"""
Repricing a period: what the ledger's usage costs with the prices in force
when each observation started, against what was accounted for it.

Run after a price was corrected in the price table (``manage.py reprice``).
Without ``apply`` it only reports the difference per tenant, UTC day and
model. With ``apply``:

- usage already reported gets a ``UsageAdjustment`` per trace for the
  difference, billed as its own meter event by the next sync; nothing
  reported is edited;
- usage not billed yet (pending) is repriced in place, as the sync would
  have priced it, and billed at the new price.

What cannot be repriced is kept as it was and counted with the reason: usage
held as unpriced (priced when a price exists, by the sync), entries Langfuse
priced that our table still does not cover in full, entries whose model has
no price in force any more, and entries written before the ledger kept the
usage per key.

Applying twice changes nothing the second time: the difference is taken
against everything accounted so far, earlier adjustments included. Each
chunk of records is one transaction, under the tenant's sync lock, so no
sync merges or batches the same rows meanwhile, and a run that stops halfway
is finished by running it again. An adjustment's content hash includes how
many adjustments its trace had before it, so the unique (record, content
hash) refuses the same difference recorded twice.
"""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from billing.audit import Actor, audit_log_write
from billing.ledger import (
    PRICED_FIELDS,
    USAGE,
    Entry,
    Totals,
    as_stored,
    content_hash,
    entries_delta,
    entries_price_source,
    entry_langfuse_cost,
    entry_priced_at,
    make_entry,
)
from billing.ledger_batch import records_update
from billing.locks import tenant_sync_lock
from billing.models import Tenant, UsageAdjustment, UsageRecord
from billing.models.ledger import BillingStatus
from billing.price_table import price_table_load
from billing.pricing import PriceSource, PriceTable, price_usage
from billing.query_log import query_log_forget
from billing.tenancy import tenant_context
from billing.usage_cache import usage_cache_invalidate
from billing.utc_days import day_bounds

# Records read and written per transaction.
CHUNK = 500
# Stripe takes meter events up to 35 days old; an adjustment is reported on
# its trace's day, so older days cannot be corrected through the meter.
STRIPE_WINDOW = timedelta(days=35)

NO_USAGE = "written before the ledger kept usage per key"
LANGFUSE_PRICED = "priced by Langfuse; our prices do not cover all its usage"
NO_PRICE = "no price of ours in force for it"
HELD = (
    "in records held as unpriced: the sync's reconcile prices them in full "
    "once a price exists"
)


class RepriceRefused(Exception):
    """The period cannot be repriced as asked; the message says why."""


@dataclass
class RepriceLine:
    """One tenant, UTC day and model: what its repriced usage cost, and costs."""

    observations: int = 0
    before: Decimal = Decimal(0)
    after: Decimal = Decimal(0)

    @property
    def difference(self) -> Decimal:
        return self.after - self.before


@dataclass
class RepriceResult:
    tenant: Tenant
    applied: bool
    # (day, model) -> line, for observations whose cost changes.
    lines: dict[tuple[date, str], RepriceLine] = field(default_factory=dict)
    unchanged: int = 0  # observations repriced to the same cost
    kept: Counter[str] = field(default_factory=Counter)  # reason -> observations
    # Split of the difference: reported usage (adjustments) and not yet.
    billed_difference: Decimal = Decimal(0)
    unbilled_difference: Decimal = Decimal(0)
    adjustments: int = 0
    repriced_in_place: int = 0

    @property
    def difference(self) -> Decimal:
        return self.billed_difference + self.unbilled_difference


def reprice_entry(
    entry: Entry, prices: PriceTable, default_at: datetime
) -> tuple[Entry | None, str]:
    """
    ``entry`` priced with our prices in force at its start, or None and the
    reason it is kept as it is. Only a price of ours for all of its usage
    replaces what was accounted: Langfuse's itemised cost is not kept.
    """
    source = entry[5]
    if source == PriceSource.NONE:
        return None, ""  # held (counted by record), or no usage and no cost
    if len(entry) <= USAGE:
        return None, NO_USAGE
    model, usage = entry[0], entry[USAGE]
    at = entry_priced_at(entry, default_at)
    priced = price_usage(
        prices=prices, at=at, model=model, usage=usage, langfuse_cost=None
    )
    if priced.source != PriceSource.PRICE_TABLE:
        return None, LANGFUSE_PRICED if source == PriceSource.LANGFUSE else NO_PRICE
    return make_entry(model, usage, priced, at, entry_langfuse_cost(entry)), ""


def ledger_reprice(
    *,
    tenant: Tenant,
    since: date,
    until: date,
    apply: bool,
    actor: Actor,
    prices: PriceTable | None = None,
) -> RepriceResult:
    """Reprice ``tenant``'s usage of the UTC days ``since`` to ``until``."""
    if since > until:
        raise RepriceRefused("The first day is after the last.")
    oldest = (timezone.now() - STRIPE_WINDOW).date() + timedelta(days=1)
    if apply and since < oldest:
        raise RepriceRefused(
            f"Stripe takes meter events up to {STRIPE_WINDOW.days} days old: "
            f"adjustments can be applied from {oldest} on. Correct older usage "
            "with a credit in Stripe."
        )
    prices = prices if prices is not None else price_table_load()
    result = RepriceResult(tenant=tenant, applied=apply)
    start, end = day_bounds(since)[0], day_bounds(until)[1]
    with tenant_context([tenant.pk]):
        held = UsageRecord.objects.for_tenant(tenant).filter(
            trace_timestamp__gte=start,
            trace_timestamp__lt=end,
            status=BillingStatus.UNPRICED,
        )
        for observations in held.values_list("observations", flat=True).iterator():
            if observations:
                result.kept[HELD] += len(observations)
    lock = tenant_sync_lock(tenant.pk, wait=True) if apply else nullcontext()
    with lock:
        after_id = 0
        while True:
            with transaction.atomic(), tenant_context([tenant.pk]):
                chunk = (
                    UsageRecord.objects.for_tenant(tenant)
                    .filter(
                        id__gt=after_id,
                        trace_timestamp__gte=start,
                        trace_timestamp__lt=end,
                        status__in=[BillingStatus.REPORTED, BillingStatus.PENDING],
                    )
                    .order_by("id")
                )
                if apply:
                    chunk = chunk.select_for_update()
                records = list(chunk[:CHUNK])
                if not records:
                    break
                _reprice_chunk(records, prices, result, actor)
                after_id = records[-1].pk
            query_log_forget()
    return result


def _reprice_chunk(
    records: list[UsageRecord],
    prices: PriceTable,
    result: RepriceResult,
    actor: Actor,
) -> None:
    later: dict[int, dict[str, Entry]] = {}
    earlier: Counter[int] = Counter()
    for record_id, observations, status in (
        UsageAdjustment.objects.filter(usage_record__in=records)
        .order_by("id")
        .values_list("usage_record_id", "observations", "status")
    ):
        earlier[record_id] += 1
        if status != BillingStatus.SKIPPED:
            later.setdefault(record_id, {}).update(observations)
    adjustments, in_place = [], []
    billed = unbilled = Decimal(0)
    for record in records:
        accounted = {**record.observations, **later.get(record.pk, {})}
        changed = _repriced(record, accounted, prices, result)
        if not changed:
            continue
        totals = entries_delta(changed, accounted)
        if record.status == BillingStatus.REPORTED:
            adjustment = UsageAdjustment(
                tenant_id=record.tenant_id,
                usage_record=record,
                trace_timestamp=record.trace_timestamp,
                observations=changed,
                content_hash=content_hash(
                    {"repriced": changed, "after": earlier[record.pk]}
                ),
                status=BillingStatus.PENDING,
            )
            totals.cost = as_stored(totals.cost)
            totals.apply_to(adjustment)
            adjustments.append(adjustment)
            billed += totals.cost
        else:
            cost_before = record.cost
            record.observations = {**record.observations, **changed}
            Totals.of(record.observations.values()).apply_to(record)
            record.cost = as_stored(record.cost)
            record.content_hash = content_hash(record.observations)
            record.price_source = entries_price_source(record.observations)
            in_place.append(record)
            unbilled += record.cost - cost_before
    result.billed_difference += billed
    result.unbilled_difference += unbilled
    if not result.applied or not (adjustments or in_place):
        return
    UsageAdjustment.objects.bulk_create(adjustments)
    now = timezone.now()
    for record in in_place:
        record.updated_at = now
    records_update(in_place, [*PRICED_FIELDS, "updated_at"])
    result.adjustments += len(adjustments)
    result.repriced_in_place += len(in_place)
    tenant = result.tenant
    audit_log_write(
        actor=actor,
        action="ledger.reprice",
        obj=tenant,
        tenant=tenant,
        after={
            "adjustments": len(adjustments),
            "billed_difference": str(billed),
            "repriced_in_place": len(in_place),
            "unbilled_difference": str(unbilled),
            "traces": sorted(
                [r.trace_id for r in in_place]
                + [a.usage_record.trace_id for a in adjustments]
            ),
        },
    )
    days = {
        row.trace_timestamp.astimezone(UTC).date() for row in [*in_place, *adjustments]
    }
    transaction.on_commit(
        lambda: usage_cache_invalidate(tenant_id=tenant.pk, days=days)
    )


def _repriced(
    record: UsageRecord,
    accounted: dict[str, Entry],
    prices: PriceTable,
    result: RepriceResult,
) -> dict[str, Entry]:
    """The accounted entries of ``record`` whose cost changes; counted."""
    day = record.trace_timestamp.astimezone(UTC).date()
    changed = {}
    for obs_id, entry in accounted.items():
        new, reason = reprice_entry(entry, prices, record.trace_timestamp)
        if new is None:
            if reason:
                result.kept[reason] += 1
            continue
        before, after = Decimal(entry[4]), Decimal(new[4])
        if before == after:
            result.unchanged += 1
            continue
        line = result.lines.setdefault((day, entry[0] or "unknown"), RepriceLine())
        line.observations += 1
        line.before += before
        line.after += after
        changed[obs_id] = new
    return changed
