"""
A small world for sync tests: both emulators over real HTTP, tenants wired to
them, and helpers to write traces into Langfuse and read totals back.

Sync tests use ``transactional_db``: the Stripe sender runs in threads with
their own connections, which must see committed rows, as in production.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone

from billing.emulators.langfuse import LangfuseEmulator, format_timestamp, to_micros
from billing.emulators.stripe import StripeEmulator
from billing.models import StripeReport, Tenant, UsageAdjustment, UsageRecord
from billing.price_table import price_table_load
from billing.pricing import price_usage
from billing.tenancy import tenant_context
from tests.factories import TenantFactory

METER_EVENT = "llm_usage"


def iso(moment: datetime) -> str:
    return format_timestamp(to_micros(moment))


def noon(days_ago: int) -> datetime:
    """
    Noon UTC ``days_ago`` days before yesterday. Reports are per UTC day, so
    traces minutes apart around ``now`` would straddle midnight when a test
    runs just after it; around noon of a past day they never do.
    """
    yesterday = timezone.now() - timedelta(days=1 + days_ago)
    return yesterday.replace(hour=12, minute=0, second=0, microsecond=0)


@dataclass
class World:
    langfuse: LangfuseEmulator
    langfuse_url: str
    stripe: StripeEmulator
    stripe_key: str
    _ids = itertools.count(1)

    def tenant(self, slug: str, *, customer: bool = True, **fields) -> Tenant:
        public_key, secret_key = f"pk-lf-{slug}", f"sk-lf-{slug}-secret"
        self.langfuse.add_project(public_key=public_key, secret_key=secret_key)
        customer_id = self.stripe.create_customer(name=slug)["id"] if customer else ""
        return TenantFactory(
            slug=slug,
            name=slug.title(),
            langfuse_host=self.langfuse_url,
            langfuse_public_key=public_key,
            langfuse_secret_key=secret_key,
            stripe_customer_id=customer_id,
            stripe_meter_event_name=METER_EVENT,
            **fields,
        )

    def trace(
        self,
        tenant: Tenant,
        *,
        start: datetime | None = None,
        generations: list[tuple] = (("gpt-4o-mini", 1200, 300, 0),),
        trace_id: str | None = None,
        ended: bool = True,
        updated: datetime | None = None,
        visible_at: float | None = None,
        agent: str = "support-triage",
        user: str = "user-1",
    ) -> str:
        """
        Write one trace: a root span plus one generation per
        (model, input, output, cached[, langfuse cost]) tuple.
        """
        start = start or timezone.now() - timedelta(minutes=10)
        trace_id = trace_id or f"trace-{next(self._ids):06d}"
        end = start + timedelta(seconds=5)
        stamp = iso(updated or end)
        common = {
            "traceId": trace_id,
            "userId": user,
            "traceName": agent,
            "metadata": {"project_id": "web", "agent": agent, "epic": "EPIC-1"},
            "updatedAt": stamp,
        }
        observations = [
            {
                "id": f"{trace_id}-root",
                "type": "SPAN",
                "name": agent,
                "startTime": iso(start),
                "endTime": iso(end) if ended else None,
                **common,
            }
        ]
        for n, (model, input_tokens, output_tokens, cached, *cost) in enumerate(
            generations
        ):
            observations.append(
                {
                    "id": f"{trace_id}-gen-{n}",
                    "type": "GENERATION",
                    "name": "llm-call",
                    "parentObservationId": f"{trace_id}-root",
                    "startTime": iso(start + timedelta(seconds=1)),
                    "endTime": iso(start + timedelta(seconds=4)),
                    "model": model,
                    "usageDetails": {
                        "input": input_tokens,
                        "output": output_tokens,
                        "cache_read_input_tokens": cached,
                        "total": input_tokens + output_tokens + cached,
                    },
                    "totalCost": float(cost[0]) if cost else None,
                    **common,
                }
            )
        self.langfuse.add_observations(
            tenant.langfuse_public_key, observations, visible_at=visible_at
        )
        return trace_id

    def stripe_total(self, tenant: Tenant) -> int:
        return self.stripe.total_value(
            customer=tenant.stripe_customer_id, event_name=METER_EVENT
        )

    def sent_units(self, tenant: Tenant) -> int:
        with tenant_context([tenant.pk]):
            return (
                StripeReport.objects.for_tenant(tenant)
                .filter(status=StripeReport.Status.SENT)
                .aggregate(total=Sum("value"))["total"]
                or 0
            )

    def ledger_micro_usd(self, tenant: Tenant) -> int:
        """floor(every reported cost, records and adjustments, in micro-USD)."""
        with tenant_context([tenant.pk]):
            total = Decimal(0)
            for model in (UsageRecord, UsageAdjustment):
                total += (
                    model.objects.for_tenant(tenant)
                    .filter(status="reported")
                    .aggregate(total=Sum("cost"))["total"]
                    or 0
                )
        return int((total * 1_000_000).to_integral_value(rounding=ROUND_FLOOR))


def expected_cost(generations) -> Decimal:
    """What the app bills for ``World.trace`` generations, priced as it prices."""
    total = Decimal(0)
    prices = price_table_load()
    for model, input_tokens, output_tokens, cached, *cost in generations:
        usage = {
            "input": input_tokens,
            "output": output_tokens,
            "cache_read_input_tokens": cached,
        }
        priced = price_usage(
            prices=prices,
            at=timezone.now(),
            model=model,
            usage=usage,
            langfuse_cost=Decimal(str(cost[0])) if cost else None,
        )
        assert priced.cost is not None, priced.reason
        total += priced.cost
    return total


@pytest.fixture
def world(transactional_db, langfuse_emulator, stripe_emulator, settings) -> World:
    settings.STRIPE_API_KEY = stripe_emulator.api_key
    settings.STRIPE_API_BASE = stripe_emulator.url
    stripe_emulator.emulator.create_meter(event_name=METER_EVENT)
    return World(
        langfuse=langfuse_emulator.emulator,
        langfuse_url=langfuse_emulator.url,
        stripe=stripe_emulator.emulator,
        stripe_key=stripe_emulator.api_key,
    )
