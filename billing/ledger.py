"""
Merging a page of observations into the ledger.

Each record keeps what was accounted per observation, so re-reading a window
(the overlap, a reconcile, a backfill) adds only what is new or changed:
unreported records absorb it in place, reported ones get a ``UsageAdjustment``
for the difference, and nothing already reported is edited.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from functools import partial

from django.db import transaction
from django.utils import timezone

from billing.langfuse_source import Observation, Page
from billing.ledger_batch import records_insert, records_update
from billing.models import Tenant, UsageAdjustment, UsageRecord
from billing.models.ledger import MONEY, BillingStatus
from billing.pricing import (
    Priced,
    PriceSource,
    PriceTable,
    price_usage,
    token_totals,
)
from billing.tenancy import tenant_context
from billing.usage_cache import usage_cache_invalidate

# An accounted observation: [model, input, output, cached, "cost", price
# source, {usage key: count}, price row id or None, "priced at", Langfuse's
# "cost" or None]. Source "none" with usage: held as unpriced. Entries written
# before the usage was kept stop after the source; before the price table was
# stored, after the usage.
Entry = list
USAGE, RULE, PRICED_AT, LANGFUSE_COST = 6, 7, 8, 9
# Costs are kept to the ledger's last digit, so that a record's cost is the
# exact sum of its observations' and a repriced difference is exact too.
LEDGER_PLACES = Decimal(1).scaleb(-MONEY["decimal_places"])


def price_entry(obs: Observation, prices: PriceTable) -> tuple[Entry, str]:
    """
    Price one observation with the prices in force at its start; the reason
    is set when it cannot be priced.
    """
    priced = price_usage(
        prices=prices,
        at=obs.start_time,
        model=obs.model,
        usage=obs.usage,
        langfuse_cost=obs.langfuse_cost,
        langfuse_cost_details=obs.langfuse_cost_details,
    )
    entry = make_entry(obs.model, obs.usage, priced, obs.start_time, obs.langfuse_cost)
    return entry, priced.reason


def make_entry(
    model: str,
    usage: dict[str, int],
    priced: Priced,
    at: datetime,
    langfuse_cost: Decimal | str | None,
) -> Entry:
    cost = priced.cost if priced.cost is not None else Decimal(0)
    return [
        model,
        *token_totals(usage),
        _money_text(cost),
        priced.source,
        usage,
        priced.rule.id if priced.rule else None,
        at.astimezone(UTC).isoformat(),
        None if langfuse_cost is None else _money_text(Decimal(langfuse_cost)),
    ]


def as_stored(cost: Decimal) -> Decimal:
    """A cost as the ledger's columns hold it: to their last digit."""
    return cost.quantize(LEDGER_PLACES, rounding=ROUND_HALF_UP)


def _money_text(amount: Decimal) -> str:
    return str(as_stored(amount).normalize())


def entry_priced_at(entry: Entry, default: datetime) -> datetime:
    """When the entry's observation started: its prices are the ones then."""
    if len(entry) > PRICED_AT:
        return datetime.fromisoformat(entry[PRICED_AT])
    return default


def entry_langfuse_cost(entry: Entry) -> str | None:
    return entry[LANGFUSE_COST] if len(entry) > LANGFUSE_COST else None


def _is_unpriced(entry: Entry) -> bool:
    return entry[5] == PriceSource.NONE


def usage_changed(accounted: Entry | None, entry: Entry) -> bool:
    """
    Whether a billed observation's usage changed: its model, its usage, or
    Langfuse's cost where that is (part of) the price. A change of our
    prices alone is not news, nor is a change of who priced it: it never
    re-bills history (repricing is an operator's act). Entries stored before
    the usage was kept (six items) compare by their token columns; before
    Langfuse's cost was kept, by the cost of entries Langfuse priced.
    """
    if accounted is None or accounted[0] != entry[0]:
        return True
    if len(accounted) > USAGE:
        if accounted[USAGE] != entry[USAGE]:
            return True
    elif accounted[1:4] != entry[1:4]:
        return True
    if PriceSource.LANGFUSE not in (accounted[5], entry[5]):
        return False
    if len(accounted) > LANGFUSE_COST:
        return accounted[LANGFUSE_COST] != entry_langfuse_cost(entry)
    both_langfuse = accounted[5] == entry[5] == PriceSource.LANGFUSE
    return both_langfuse and Decimal(accounted[4]) != Decimal(entry[4])


@dataclass
class TraceUsage:
    """What one page says about one trace."""

    trace_id: str
    first_start: datetime
    last_activity: datetime
    user_id: str = ""
    project_id: str = ""
    agent_id: str = ""
    epic_id: str = ""
    entries: dict[str, Entry] = field(default_factory=dict)
    # Observations seen running ({id: start}) and seen ended.
    running: dict[str, str] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)
    # Malformed data: the trace is skipped. Missing price: held as unpriced.
    problem: str = ""
    unpriced: str = ""

    def add(self, obs: Observation, prices: PriceTable) -> None:
        self.first_start = min(self.first_start, obs.start_time)
        self.last_activity = max(self.last_activity, obs.last_activity)
        for scope in ("user_id", "project_id", "agent_id", "epic_id"):
            if not getattr(self, scope):
                setattr(self, scope, getattr(obs, scope))
        if obs.end_time is None:
            self.running[obs.id] = obs.start_time.isoformat()
        else:
            self.ended.add(obs.id)
        if not obs.has_usage:
            return
        self.entries[obs.id], reason = price_entry(obs, prices)
        if reason:
            self.unpriced = self.unpriced or f"observation {obs.id}: {reason}"


def group_by_trace(page: Page, prices: PriceTable) -> dict[str, TraceUsage]:
    traces: dict[str, TraceUsage] = {}

    def trace_of(trace_id: str, start: datetime, activity: datetime) -> TraceUsage:
        trace = traces.get(trace_id)
        if trace is None:
            trace = traces[trace_id] = TraceUsage(trace_id, start, activity)
        return trace

    for obs in page.observations:
        trace_of(obs.trace_id, obs.start_time, obs.last_activity).add(obs, prices)
    # A trace whose observations are all malformed is still a trace we saw:
    # it goes into the ledger as skipped, with the reason.
    for bad in page.malformed:
        if bad.trace_id:
            trace = trace_of(bad.trace_id, bad.start_time, bad.start_time)
            trace.first_start = min(trace.first_start, bad.start_time)
            trace.problem = trace.problem or (
                f"malformed observation {bad.id}: {bad.reason}"
            )
    return traces


@dataclass
class Totals:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost: Decimal = Decimal(0)
    model_breakdown: dict = field(default_factory=dict)

    @classmethod
    def of(cls, entries: Iterable[Entry], sign: int = 1) -> Totals:
        totals = cls()
        totals.add(entries, sign)
        return totals

    def add(self, entries: Iterable[Entry], sign: int = 1) -> None:
        for entry in entries:
            model, input_tokens, output_tokens, cached_tokens, cost = entry[:5]
            self.input_tokens += sign * input_tokens
            self.output_tokens += sign * output_tokens
            self.cached_tokens += sign * cached_tokens
            self.cost += sign * Decimal(cost)
            row = self.model_breakdown.setdefault(
                model or "unknown", {"input": 0, "output": 0, "cached": 0, "cost": "0"}
            )
            row["input"] += sign * input_tokens
            row["output"] += sign * output_tokens
            row["cached"] += sign * cached_tokens
            row["cost"] = str(Decimal(row["cost"]) + sign * Decimal(cost))

    def apply_to(self, obj: UsageRecord | UsageAdjustment) -> None:
        obj.input_tokens = self.input_tokens
        obj.output_tokens = self.output_tokens
        obj.cached_tokens = self.cached_tokens
        obj.cost = self.cost
        obj.model_breakdown = self.model_breakdown


def content_hash(entries: dict[str, Entry]) -> str:
    payload = json.dumps(entries, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def entries_price_source(entries: dict[str, Entry]) -> str:
    sources = {entry[5] for entry in entries.values()}
    if not sources or PriceSource.NONE in sources:
        return PriceSource.NONE
    # Langfuse-priced anywhere: say so, operators reconcile those by hand.
    return PriceSource.LANGFUSE if PriceSource.LANGFUSE in sources else sources.pop()


@dataclass
class MergeResult:
    created: int = 0
    updated: int = 0
    skipped: int = 0
    unpriced: int = 0
    adjustments: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)

    def add(self, other: MergeResult) -> None:
        self.created += other.created
        self.updated += other.updated
        self.skipped += other.skipped
        self.unpriced += other.unpriced
        self.adjustments += other.adjustments
        for reason, count in other.skip_reasons.items():
            self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + count

    def skip(self, reason: str) -> None:
        self.skipped += 1
        kind = reason.split(": ", 1)[-1]
        self.skip_reasons[kind] = self.skip_reasons.get(kind, 0) + 1


def _set_running(record: UsageRecord, running: dict[str, str], ended: set[str]) -> None:
    record.running = {k: v for k, v in running.items() if k not in ended}
    record.running_since = (
        datetime.fromisoformat(min(record.running.values())) if record.running else None
    )


def _set_status(
    obj: UsageRecord | UsageAdjustment, trace: TraceUsage, result: MergeResult
) -> None:
    """Skipped when malformed, unpriced while any usage lacks a price."""
    if trace.problem:
        obj.status, obj.skip_reason = BillingStatus.SKIPPED, trace.problem
        result.skip(trace.problem)
    elif any(_is_unpriced(entry) for entry in obj.observations.values()):
        # Counted once per record, not again for each page it spans.
        result.unpriced += obj.status != BillingStatus.UNPRICED
        obj.status = BillingStatus.UNPRICED
        obj.skip_reason = trace.unpriced or obj.skip_reason
    else:
        obj.status, obj.skip_reason = BillingStatus.PENDING, ""


def _new_record(tenant: Tenant, trace: TraceUsage, result: MergeResult) -> UsageRecord:
    record = UsageRecord(
        tenant=tenant,
        trace_id=trace.trace_id,
        trace_timestamp=trace.first_start,
        last_activity_at=trace.last_activity,
        user_id=trace.user_id,
        project_id=trace.project_id,
        agent_id=trace.agent_id,
        epic_id=trace.epic_id,
        observations=trace.entries,
        content_hash=content_hash(trace.entries),
        price_source=entries_price_source(trace.entries),
    )
    _set_running(record, trace.running, trace.ended)
    Totals.of(trace.entries.values()).apply_to(record)
    _set_status(record, trace, result)
    return record


def _merge_unbilled(
    record: UsageRecord, trace: TraceUsage, result: MergeResult
) -> bool:
    """Absorb news into a record not billed yet; whether anything changed."""
    changed = {
        k: v for k, v in trace.entries.items() if record.observations.get(k) != v
    }
    activity_moved = trace.last_activity > record.last_activity_at
    running_before = record.running
    _set_running(record, {**record.running, **trace.running}, trace.ended)
    if (
        not changed
        and not activity_moved
        and not trace.problem
        and record.running == running_before
    ):
        return False
    record.observations = {**record.observations, **changed}
    record.trace_timestamp = min(record.trace_timestamp, trace.first_start)
    record.last_activity_at = max(record.last_activity_at, trace.last_activity)
    for scope in ("user_id", "project_id", "agent_id", "epic_id"):
        if not getattr(record, scope):
            setattr(record, scope, getattr(trace, scope))
    Totals.of(record.observations.values()).apply_to(record)
    record.content_hash = content_hash(record.observations)
    record.price_source = entries_price_source(record.observations)
    _set_status(record, trace, result)
    result.updated += 1
    return True


def _adjustment(
    record: UsageRecord,
    trace: TraceUsage,
    accounted: dict[str, Entry],
    result: MergeResult,
) -> UsageAdjustment | None:
    changed = {
        k: v for k, v in trace.entries.items() if usage_changed(accounted.get(k), v)
    }
    if not changed and not trace.problem:
        return None
    totals = entries_delta(changed, accounted)
    adjustment = UsageAdjustment(
        tenant_id=record.tenant_id,
        usage_record=record,
        trace_timestamp=record.trace_timestamp,
        observations=changed,
        content_hash=content_hash(changed)
        if changed
        else content_hash({"?": trace.problem}),
    )
    totals.apply_to(adjustment)
    _set_status(adjustment, trace, MergeResult())
    return adjustment


def entries_delta(changed: dict[str, Entry], accounted: dict[str, Entry]) -> Totals:
    """What ``changed`` adds to what was accounted for the same observations."""
    totals = Totals.of(changed.values())
    totals.add([accounted[k] for k in changed if k in accounted], sign=-1)
    return totals


# Held rows priced per transaction by ledger_reprice_unpriced.
REPRICE_CHUNK = 500

# Records that still take news in place: nothing of them was billed yet.
UNBILLED = (BillingStatus.PENDING, BillingStatus.UNPRICED)

# What pricing a record sets.
PRICED_FIELDS = [
    "observations",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost",
    "model_breakdown",
    "content_hash",
    "price_source",
]
PENDING_UPDATE_FIELDS = [
    *PRICED_FIELDS,
    "trace_timestamp",
    "last_activity_at",
    "user_id",
    "project_id",
    "agent_id",
    "epic_id",
    "status",
    "skip_reason",
    "running",
    "running_since",
    "updated_at",
]


def ledger_merge(*, tenant: Tenant, traces: dict[str, TraceUsage]) -> MergeResult:
    """
    Merge one page's traces; the caller holds the tenant's sync lock and runs
    this inside one transaction, so the page commits whole or not at all.
    """
    result = MergeResult()
    if not traces:
        return result
    existing = {
        record.trace_id: record
        for record in UsageRecord.objects.for_tenant(tenant)
        .filter(trace_id__in=list(traces))
        .select_for_update()
    }
    # Absorbing an observation can move a trace to an earlier day.
    days_before = {r.trace_id: r.trace_timestamp for r in existing.values()}
    reported = [r.pk for r in existing.values() if r.status == BillingStatus.REPORTED]
    later: dict[int, dict[str, Entry]] = {}
    known_changes: set[tuple[int, str]] = set()
    for record_id, observations, digest, status in (
        UsageAdjustment.objects.filter(usage_record_id__in=reported)
        .order_by("id")
        .values_list("usage_record_id", "observations", "content_hash", "status")
    ):
        # A skipped change was never billed: its usage is not accounted.
        if status != BillingStatus.SKIPPED:
            later.setdefault(record_id, {}).update(observations)
        known_changes.add((record_id, digest))

    new_records, pending_updates, adjustments = [], [], []
    for trace_id, trace in traces.items():
        record = existing.get(trace_id)
        if record is None:
            new_records.append(_new_record(tenant, trace, result))
        elif record.status in UNBILLED:
            if _merge_unbilled(record, trace, result):
                pending_updates.append(record)
        elif record.status == BillingStatus.REPORTED:
            accounted = {**record.observations, **later.get(record.pk, {})}
            adjustment = _adjustment(record, trace, accounted, result)
            if adjustment and (record.pk, adjustment.content_hash) not in known_changes:
                adjustments.append(adjustment)
    # One statement each, whatever the page's size (billing.ledger_batch);
    # bulk_update would build a CASE per field and row in Python.
    records_insert(new_records)
    now = timezone.now()
    for record in pending_updates:
        record.updated_at = now  # auto_now is not applied by an update
    records_update(pending_updates, PENDING_UPDATE_FIELDS)
    # Under the sync lock nothing else writes these rows; the unique
    # (record, content hash) is the backstop if that ever stops being true.
    UsageAdjustment.objects.bulk_create(adjustments)
    result.created = len(new_records)
    result.adjustments = len(adjustments)
    written = [*new_records, *pending_updates, *adjustments]
    moved = [days_before[record.trace_id] for record in pending_updates]
    _usage_changed_on_commit(
        tenant.pk, [row.trace_timestamp for row in written] + moved
    )
    return result


def _usage_changed_on_commit(tenant_id: int, timestamps: list[datetime]) -> None:
    """Outdate the cached usage summaries of these days once the write commits."""
    if timestamps:
        days = {timestamp.astimezone(UTC).date() for timestamp in timestamps}
        transaction.on_commit(
            partial(usage_cache_invalidate, tenant_id=tenant_id, days=days)
        )


def ledger_reprice_unpriced(*, tenant: Tenant, prices: PriceTable) -> int:
    """
    Price held (unpriced) usage with ``prices``, those in force at each
    observation's start. Rows priced in
    full become pending, so the next batch bills them on a report of their
    own; the rest stay held. Each chunk of rows is its own transaction.
    Returns how many rows were released.
    """
    released = 0
    for model in (UsageRecord, UsageAdjustment):
        with tenant_context([tenant.pk]):
            held = list(
                model.objects.for_tenant(tenant)
                .filter(status=BillingStatus.UNPRICED)
                .order_by("id")
                .values_list("id", flat=True)
            )
        for at in range(0, len(held), REPRICE_CHUNK):
            with tenant_context([tenant.pk]):
                priced = [
                    row.trace_timestamp
                    for row in model.objects.filter(
                        id__in=held[at : at + REPRICE_CHUNK],
                        status=BillingStatus.UNPRICED,
                    ).select_for_update()
                    if _release_if_priced(row, prices)
                ]
                _usage_changed_on_commit(tenant.pk, priced)
                released += len(priced)
    return released


def _release_if_priced(row: UsageRecord | UsageAdjustment, prices: PriceTable) -> bool:
    # Nothing of a held row was billed: all of it is priced with the prices
    # in force, not only the part that waited for one.
    entries = {
        obs_id: _reprice(entry, prices, row.trace_timestamp)
        if entry[5] != PriceSource.LANGFUSE
        else entry
        for obs_id, entry in row.observations.items()
    }
    if any(_is_unpriced(entry) for entry in entries.values()):
        return False
    if isinstance(row, UsageAdjustment):
        # An adjustment is a difference: what the change adds to what was
        # accounted for the same observations before it.
        totals = entries_delta(entries, _accounted_before(row))
    else:
        totals = Totals.of(entries.values())
        row.price_source = entries_price_source(entries)
        row.content_hash = content_hash(entries)
    row.observations = entries
    totals.apply_to(row)
    row.status, row.skip_reason = BillingStatus.PENDING, ""
    row.save()
    return True


def _accounted_before(adjustment: UsageAdjustment) -> dict[str, Entry]:
    record = adjustment.usage_record
    accounted = dict(record.observations)
    for observations in (
        UsageAdjustment.objects.filter(usage_record=record, id__lt=adjustment.id)
        .exclude(status=BillingStatus.SKIPPED)
        .order_by("id")
        .values_list("observations", flat=True)
    ):
        accounted.update(observations)
    return accounted


def _reprice(entry: Entry, prices: PriceTable, default_at: datetime) -> Entry:
    """
    An entry of a held row that Langfuse did not price, priced with our
    ``prices``: Langfuse's itemised cost is not kept, and its total alone
    could cover keys it did not price.
    """
    model, usage = entry[0], entry[USAGE] if len(entry) > USAGE else {}
    at = entry_priced_at(entry, default_at)
    priced = price_usage(
        prices=prices, at=at, model=model, usage=usage, langfuse_cost=None
    )
    return make_entry(model, usage, priced, at, entry_langfuse_cost(entry))
