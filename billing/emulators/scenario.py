"""
Seeded, realistic Langfuse usage for a handful of tenants.

``generate_scenario`` plans the traces of every tenant from a seed; the
observations themselves are built lazily, trace by trace, so that a benchmark
with 100k traces never holds them all as dicts. The same seed and parameters
give the same ids, tokens and costs; timestamps are offsets from ``now``.

What the data looks like, per tenant:

- Traces of 2 to 7 observations: a root ``AGENT`` or ``SPAN`` named after the
  agent, 1 to 4 ``GENERATION`` children with usage, sometimes a ``TOOL`` span
  and an ``EMBEDDING``.
- Usage carries one key per kind of token the model's prices define, under
  one of the names Langfuse prices (``USAGE_KINDS``): ``input`` and
  ``output`` always; a cache read key (``cache_read_input_tokens`` where
  priced, else ``input_cached_tokens``) on a share of the calls;
  ``cache_creation_input_tokens`` on some Anthropic calls;
  ``output_reasoning_tokens`` on every call of a reasoning model (twice the
  answer); ``input_audio_tokens`` now and then where priced. The buckets are
  disjoint (``input`` counts only uncached, unwritten prompt tokens) and
  ``total`` sums them. Embeddings carry ``input`` and ``total``.
- Costs are Langfuse's own (``langfuse_cost``: the emulated Langfuse's model
  prices, which are the app's price data), one ``costDetails`` entry per
  priced key plus ``total``, and ``totalCost``.
- A small fraction of generations use a model Langfuse does not know: some
  with a cost ingested by the caller (``CUSTOM_PRICED_MODEL``), some with no
  cost at all (``UNPRICED_MODEL``).
- Scopes: ``metadata["project_id"]`` (the tenant's own projects, not the
  Langfuse project), the agent as ``traceName`` and ``metadata["agent"]``,
  the user as ``userId`` and, on most traces, ``metadata["epic"]``.
- Traces that started within the last minute are still running: their root
  and last generation have no ``endTime`` and that generation no usage yet.
- A few traces per tenant (``long_running_traces``) are runs that never
  end: they started hours ago, their generations ended with usage, but their
  root has no ``endTime``. The app bills them once they pass its maximum
  running age, so they count as billable here (``in_progress`` is False).
- A fraction of traces (``hostile_fraction``) carry strings Langfuse stores
  and Postgres cannot, or should not be trusted with (``HOSTILE_STRINGS``:
  NUL, a lone surrogate, markup, 5000 characters): in the user id (with a
  NUL), the root's name, the session id and ``metadata["note"]``.
- A fraction of finished traces have a late observation, ingested after the
  rest of the trace (``ScenarioTrace.late_observations``); ``load_into`` hides
  it from the emulator until ``late_delay_seconds`` have passed.

Anomalies (``Scenario.anomalies``) are injected into every tenant but the last
one, which stays clean as a control. Each sits on a steady series of traces
whose scope nothing else touches, so its daily cost is flat apart from it:

- ``cost_spike``: one agent within one project costs 10x on one day;
- ``cost_drop``: one agent of its own (``weekly-report``) costs 0.05x on
  one day. Its user's day drops too, but a person's quiet day is no anomaly
  to the detectors; an agent's is;
- ``missing_data``: an agent with steady daily cost has no traces at all in
  the last two UTC days (yesterday and today);
- ``runaway_trace``: one ordinary trace of an agent uses 200x the tokens (a
  loop that kept calling the model), on a day with a few days of history.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from billing.emulators.langfuse import (
    format_timestamp,
    langfuse_cost,
    langfuse_model_prices,
    to_micros,
)

if TYPE_CHECKING:
    from billing.emulators.langfuse import LangfuseEmulator

CUSTOM_PRICED_MODEL = "acme-distilled-v2"
UNPRICED_MODEL = "local-llama-3-8b-ft"
HOSTILE_STRINGS = (
    "nul\x00inside",
    "lone \ud800 surrogate",
    "<script>alert(1)</script>'; DROP TABLE billing_usagerecord; --",
    "x" * 5000,
    "emoji \U0001f9fe and RTL \u202e text",
)
# How long ago the runs that never end started.
LONG_RUNNING_HOURS = (2, 5)

SPIKE_FACTOR = 10.0
DROP_FACTOR = 0.05
RUNAWAY_FACTOR = 200.0
# A runaway trace runs on an expensive model: 200 times a short trace of a
# cheap one can still cost less than the agent's usual expensive traces.
RUNAWAY_MODEL = "gpt-4o"
MISSING_DAYS = 2
# The detectors call a scope low only against a week of its own complete
# days, and take a scope's first day in their window for a partial one: the
# drop comes after eight days of the series, when the scenario is that long.
DROP_HISTORY_DAYS = 8
# Traces this close to `now` are still running; the rest finished earlier.
SETTLE_SECONDS = 60
_QUANTUM = Decimal("1e-12")  # Langfuse stores costs as Decimal(18, 12)
_MICROS = 1_000_000
_DAY_MICROS = 86_400 * _MICROS

CHAT_MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "o3-mini",
    "claude-3-5-sonnet-20241022",
    "claude-3-5-haiku-20241022",
    "claude-sonnet-4-20250514",
    "gemini-1.5-pro",
    "gemini-2.5-flash",
)
EMBEDDING_MODEL = "text-embedding-3-small"
# The usage key a generation uses for each kind of token, first one its
# model prices; a kind the model does not price does not appear.
USAGE_KINDS: dict[str, tuple[str, ...]] = {
    "cache_read": ("cache_read_input_tokens", "input_cached_tokens"),
    "cache_write": ("cache_creation_input_tokens",),
    "reasoning": ("output_reasoning_tokens",),
    "audio": ("input_audio_tokens",),
}
CACHE_WRITE_FRACTION = 0.3  # calls of a cache-writing model that write
AUDIO_FRACTION = 0.1  # calls of an audio model that carry audio
REASONING_FACTOR = 2  # reasoning tokens per answer token
# What the tenant pays its own provider, USD per token; Langfuse has no price
# for the model, so the cost arrives with the observation.
CUSTOM_PRICES = {"input": Decimal("0.0000004"), "output": Decimal("0.0000016")}


@functools.lru_cache(maxsize=256)
def usage_keys(model: str) -> dict[str, str]:
    """The usage key of each kind of token the model prices (``USAGE_KINDS``)."""
    prices = langfuse_model_prices(model) or {}
    keys = {}
    for kind, candidates in USAGE_KINDS.items():
        key = next((key for key in candidates if key in prices), None)
        if key is not None:
            keys[kind] = key
    return keys


def _custom_cost(usage: dict[str, int]) -> dict[str, float]:
    parts = {
        key: (count * CUSTOM_PRICES[key]).quantize(_QUANTUM)
        for key, count in usage.items()
        if key in CUSTOM_PRICES
    }
    details = {key: float(value) for key, value in parts.items()}
    details["total"] = float(sum(parts.values(), Decimal(0)))
    return details


_TENANTS = (
    ("acme", "Acme Corp"),
    ("globex", "Globex Corporation"),
    ("initech", "Initech"),
    ("umbrella", "Umbrella Labs"),
    ("hooli", "Hooli"),
    ("stark", "Stark Industries"),
    ("wayne", "Wayne Enterprises"),
    ("wonka", "Wonka Industries"),
)
_PROJECTS = ("web", "mobile", "internal", "api", "data")
_AGENTS = (
    "support-triage",
    "code-reviewer",
    "research-assistant",
    "sales-copilot",
    "doc-summarizer",
    "data-analyst",
)
_STEADY_AGENT = "nightly-digest"  # the missing_data series; nothing else uses it
_DROP_AGENT = "weekly-report"  # the cost_drop series; nothing else uses it
_TOOLS = ("web-search", "sql-query", "vector-search", "crm-lookup")


@dataclass(frozen=True)
class ScenarioTenant:
    slug: str
    name: str
    public_key: str
    secret_key: str
    project_id: str  # the Langfuse project
    projects: tuple[str, ...]  # the tenant's own, as metadata["project_id"]
    agents: tuple[str, ...]
    users: tuple[str, ...]
    epics: tuple[str, ...]


@dataclass(frozen=True)
class Anomaly:
    """
    An injected anomaly. ``factor`` multiplies the scope's usual daily cost
    on ``days`` (None for missing data, where the cost is simply absent).
    """

    kind: str  # "cost_spike", "cost_drop", "missing_data" or "runaway_trace"
    tenant_slug: str
    scope: str  # "agent" or "user"
    value: str
    project: str | None  # the metadata project it is confined to, if any
    days: tuple[date, ...]
    factor: float | None


@dataclass(frozen=True)
class ScenarioTrace:
    trace_id: str
    tenant_slug: str
    agent: str
    project: str
    user_id: str
    epic: str | None
    start_time: datetime
    observations: tuple[dict[str, Any], ...]
    late_observations: tuple[dict[str, Any], ...]
    in_progress: bool

    def all_observations(self) -> tuple[dict[str, Any], ...]:
        return self.observations + self.late_observations

    @property
    def cost(self) -> Decimal:
        """Langfuse's total cost of the trace, late observations included."""
        return sum(
            (
                Decimal(str(o["totalCost"]))
                for o in self.all_observations()
                if o.get("totalCost")
            ),
            Decimal(0),
        )

    @property
    def billable(self) -> bool:
        """Finished, and at least one observation carries a Langfuse cost."""
        return not self.in_progress and self.cost > 0


@dataclass(frozen=True)
class TenantTotals:
    traces: int
    in_progress_traces: int
    billable_traces: int
    observations: int  # visible at once
    late_observations: int
    generations: int
    unpriced_generations: int
    cost: Decimal  # late observations included
    late_cost: Decimal


@dataclass(frozen=True)
class _Plan:
    """What to build for one trace; the details come from the detail rng."""

    start: int  # epoch micros
    kind: str  # "background", "series", "running" or "long_running"
    agent: str
    project: str
    user_id: str
    epic: str | None
    factor: float = 1.0


@dataclass
class Scenario:
    seed: int
    now: datetime
    days: int
    tenants: list[ScenarioTenant]
    anomalies: list[Anomaly]
    late_fraction: float
    unknown_model_fraction: float
    unpriced_fraction: float
    cache_fraction: float
    hostile_fraction: float = 0.0
    _plans: dict[str, list[_Plan]] = field(repr=False, default_factory=dict)
    _totals: dict[str, TenantTotals] = field(repr=False, default_factory=dict)

    def tenant(self, slug: str) -> ScenarioTenant:
        for tenant in self.tenants:
            if tenant.slug == slug:
                return tenant
        raise KeyError(slug)

    @property
    def window_start(self) -> datetime:
        """Midnight UTC of the first day the traces cover."""
        first = self.now.date() - timedelta(days=self.days - 1)
        return datetime.combine(first, time(0), tzinfo=UTC)

    def anomalies_for(self, tenant: ScenarioTenant | str) -> list[Anomaly]:
        slug = tenant if isinstance(tenant, str) else tenant.slug
        return [anomaly for anomaly in self.anomalies if anomaly.tenant_slug == slug]

    def iter_traces(self, tenant: ScenarioTenant) -> Iterator[ScenarioTrace]:
        """Yield the tenant's traces in start-time order, built on demand."""
        builder = _TraceBuilder(self, tenant)
        for plan in self._plans[tenant.slug]:
            yield builder.build(plan)

    def iter_observations(
        self, tenant: ScenarioTenant, *, include_late: bool = True
    ) -> Iterator[dict[str, Any]]:
        for trace in self.iter_traces(tenant):
            yield from trace.observations
            if include_late:
                yield from trace.late_observations

    def totals(self, tenant: ScenarioTenant) -> TenantTotals:
        """Count what ``load_into`` stores for the tenant (cached)."""
        if tenant.slug not in self._totals:
            self._totals[tenant.slug] = self._count(tenant)
        return self._totals[tenant.slug]

    def _count(self, tenant: ScenarioTenant) -> TenantTotals:
        counts = dict.fromkeys(
            (
                "traces",
                "in_progress_traces",
                "billable_traces",
                "observations",
                "late_observations",
                "generations",
                "unpriced_generations",
            ),
            0,
        )
        cost = late_cost = Decimal(0)
        for trace in self.iter_traces(tenant):
            counts["traces"] += 1
            counts["in_progress_traces"] += trace.in_progress
            counts["billable_traces"] += trace.billable
            counts["observations"] += len(trace.observations)
            counts["late_observations"] += len(trace.late_observations)
            for observation in trace.all_observations():
                if observation["type"] != "GENERATION":
                    continue
                counts["generations"] += 1
                if observation["usageDetails"] and observation["totalCost"] is None:
                    counts["unpriced_generations"] += 1
            trace_cost = trace.cost
            cost += trace_cost
            late_cost += sum(
                (
                    Decimal(str(o["totalCost"]))
                    for o in trace.late_observations
                    # A late generation may be one Langfuse could not price.
                    if o.get("totalCost") is not None
                ),
                Decimal(0),
            )
        return TenantTotals(**counts, cost=cost, late_cost=late_cost)

    def load_into(
        self,
        emulator: LangfuseEmulator,
        *,
        late_delay_seconds: float = 300.0,
        batch_size: int = 5000,
    ) -> None:
        """
        Register every tenant's project and add its observations; late ones
        become visible ``late_delay_seconds`` after now on the emulator clock.
        """
        visible_at = emulator.clock() + late_delay_seconds
        for tenant in self.tenants:
            emulator.add_project(
                public_key=tenant.public_key,
                secret_key=tenant.secret_key,
                project_id=tenant.project_id,
            )
            batch: list[dict[str, Any]] = []
            late: list[dict[str, Any]] = []
            for trace in self.iter_traces(tenant):
                batch.extend(trace.observations)
                late.extend(trace.late_observations)
                if len(batch) >= batch_size:
                    emulator.add_observations(tenant.public_key, batch)
                    batch = []
            emulator.add_observations(tenant.public_key, batch)
            emulator.add_observations(tenant.public_key, late, visible_at=visible_at)


def generate_scenario(
    *,
    seed: int = 42,
    tenants: int = 3,
    traces_per_tenant: int = 200,
    days: int = 14,
    now: datetime | None = None,
    late_fraction: float = 0.03,
    unknown_model_fraction: float = 0.02,
    unpriced_fraction: float = 0.01,
    cache_fraction: float = 0.3,
    hostile_fraction: float = 0.01,
    running_traces: int | None = None,
    long_running_traces: int = 1,
    anomalies: bool = True,
) -> Scenario:
    """
    Plan a deterministic scenario of ``traces_per_tenant`` traces for each of
    ``tenants`` tenants over the ``days`` UTC days that end at ``now``.

    ``running_traces`` (per tenant) defaults to 0.5% of the traces, at least
    one. ``now`` defaults to the current time, rounded down to the second; pass
    it for timestamps that do not move between runs.
    """
    if tenants < 1 or days < 1:
        raise ValueError("A scenario needs at least one tenant and one day.")
    if anomalies and days < 5:
        raise ValueError("Anomalies need at least 5 days of history.")
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    rng = random.Random(seed)
    scenario = Scenario(
        seed=seed,
        now=now,
        days=days,
        tenants=[],
        anomalies=[],
        late_fraction=late_fraction,
        unknown_model_fraction=unknown_model_fraction,
        unpriced_fraction=unpriced_fraction,
        cache_fraction=cache_fraction,
        hostile_fraction=hostile_fraction,
    )
    if running_traces is None:
        running_traces = max(1, traces_per_tenant // 200)
    for index in range(tenants):
        tenant = _make_tenant(rng, index, traces_per_tenant)
        scenario.tenants.append(tenant)
        # The last tenant of several stays clean as a control.
        inject = anomalies and (tenants == 1 or index < tenants - 1)
        # Each tenant plans from its own stream, so one tenant's traces do not
        # depend on how many tenants come before it.
        plan_rng = random.Random(f"{seed}:{tenant.slug}:plan")
        plans, tenant_anomalies = _plan_tenant(
            plan_rng,
            scenario,
            tenant,
            traces_per_tenant,
            running_traces,
            long_running_traces,
            inject,
        )
        scenario._plans[tenant.slug] = plans
        scenario.anomalies.extend(tenant_anomalies)
    return scenario


def _hex(rng: random.Random, chars: int) -> str:
    return f"{rng.getrandbits(chars * 4):0{chars}x}"


def _make_tenant(rng: random.Random, index: int, traces: int) -> ScenarioTenant:
    slug, name = _TENANTS[index % len(_TENANTS)]
    if index >= len(_TENANTS):
        slug, name = f"{slug}{index}", f"{name} {index}"
    user_count = max(5, min(50, traces // 20))
    return ScenarioTenant(
        slug=slug,
        name=name,
        public_key=f"pk-lf-{slug}-{_hex(rng, 12)}",
        secret_key=f"sk-lf-{_hex(rng, 32)}",
        project_id=f"cl{_hex(rng, 23)}",
        projects=tuple(f"{slug}-{p}" for p in rng.sample(_PROJECTS, 3)),
        agents=tuple(rng.sample(_AGENTS, 4)),
        users=tuple(f"user-{_hex(rng, 8)}" for _ in range(user_count)),
        epics=tuple(f"EPIC-{rng.randint(100, 999)}" for _ in range(5)),
    )


def _plan_tenant(
    rng: random.Random,
    scenario: Scenario,
    tenant: ScenarioTenant,
    traces: int,
    running: int,
    long_running: int,
    inject: bool,
) -> tuple[list[_Plan], list[Anomaly]]:
    days = scenario.days
    now = to_micros(scenario.now)
    window_start = to_micros(scenario.window_start)
    finished_before = now - 2 * SETTLE_SECONDS * _MICROS
    first_day = scenario.window_start.date()

    # The three steady series: one trace per slot and day, at about the same
    # hour, so their daily cost is flat unless an anomaly says otherwise.
    per_day = max(1, min(6, traces // (days * 25)))
    spike_agent, spike_project = rng.choice(tenant.agents), rng.choice(tenant.projects)
    drop_user = tenant.users[0]  # kept out of the background traffic below
    spike_day = drop_day = None
    if inject:
        spike_day = rng.choice(range(1, days - MISSING_DAYS))
        drop_days = [
            day
            for day in range(min(DROP_HISTORY_DAYS, days - MISSING_DAYS - 2), days)
            if day < days - MISSING_DAYS and day != spike_day
        ]
        drop_day = rng.choice(drop_days)

    def scope() -> tuple[str, str]:
        """Pick an agent and project outside the spike series' scope."""
        agent, project = rng.choice(tenant.agents), rng.choice(tenant.projects)
        if (agent, project) == (spike_agent, spike_project):
            project = rng.choice([p for p in tenant.projects if p != spike_project])
        return agent, project

    drop_project = tenant.projects[-1]
    series = (
        ("spike", spike_agent, spike_project, None),
        ("drop", _DROP_AGENT, drop_project, drop_user),
        # An agent lives in one project, so its steady cost is one scope's.
        ("missing", _STEADY_AGENT, tenant.projects[0], None),
    )
    plans: list[_Plan] = []
    for name, agent, project, user in series:
        for day in range(days):
            if name == "missing" and inject and day >= days - MISSING_DAYS:
                continue
            factor = 1.0
            if day == spike_day and name == "spike":
                factor = SPIKE_FACTOR
            elif day == drop_day and name == "drop":
                factor = DROP_FACTOR
            for slot in range(per_day):
                jitter = rng.randint(-1800, 1800) * _MICROS
                start = (
                    window_start
                    + day * _DAY_MICROS
                    + (2 * slot + 1) * _DAY_MICROS // (2 * per_day)
                    + jitter
                )
                if start >= finished_before:
                    continue
                plans.append(
                    _Plan(
                        start=max(start, window_start),
                        kind="series",
                        agent=agent,
                        project=project or rng.choice(tenant.projects),
                        user_id=user or rng.choice(tenant.users[1:]),
                        epic=rng.choice(tenant.epics),
                        factor=factor,
                    )
                )

    background = traces - len(plans) - running - long_running
    if background < 0:
        raise ValueError(
            f"traces_per_tenant={traces} is too small for {days} days of steady "
            f"series ({len(plans)} traces), {running} running and "
            f"{long_running} long-running traces."
        )
    for _ in range(background):
        agent, project = scope()
        plans.append(
            _Plan(
                start=rng.randint(window_start, finished_before),
                kind="background",
                agent=agent,
                project=project,
                user_id=rng.choice(tenant.users[1:]),
                epic=rng.choice(tenant.epics) if rng.random() < 0.85 else None,
            )
        )
    for _ in range(running):
        agent, project = scope()
        plans.append(
            _Plan(
                start=now - rng.randint(15_000, (SETTLE_SECONDS - 5) * 1000) * 1000,
                kind="running",
                agent=agent,
                project=project,
                user_id=rng.choice(tenant.users[1:]),
                epic=rng.choice(tenant.epics),
            )
        )
    for _ in range(long_running):
        agent, project = scope()
        hours = rng.uniform(*LONG_RUNNING_HOURS)
        plans.append(
            _Plan(
                start=now - int(hours * 3600 * _MICROS),
                kind="long_running",
                agent=agent,
                project=project,
                user_id=rng.choice(tenant.users[1:]),
                epic=rng.choice(tenant.epics),
            )
        )
    runaway = None
    # A day with three days of history before it, not taken by the others.
    runaway_days = [
        d for d in range(3, days - MISSING_DAYS) if d not in (spike_day, drop_day)
    ]
    if inject and runaway_days:
        # Drawn last, so that every other plan is what it was without it.
        runaway_day = rng.choice(runaway_days)
        day_start = window_start + runaway_day * _DAY_MICROS
        candidates = [
            n
            for n, plan in enumerate(plans)
            if plan.kind == "background"
            and day_start <= plan.start < day_start + _DAY_MICROS
        ]
        if candidates:
            n = rng.choice(candidates)
            plans[n] = dataclasses.replace(plans[n], factor=RUNAWAY_FACTOR)
            runaway = plans[n]
    plans.sort(key=lambda plan: plan.start)

    anomalies = []
    if inject:
        assert spike_day is not None and drop_day is not None
        last_days = tuple(
            first_day + timedelta(days=day) for day in range(days - MISSING_DAYS, days)
        )
        anomalies = [
            Anomaly(
                kind="cost_spike",
                tenant_slug=tenant.slug,
                scope="agent",
                value=spike_agent,
                project=spike_project,
                days=(first_day + timedelta(days=spike_day),),
                factor=SPIKE_FACTOR,
            ),
            Anomaly(
                kind="cost_drop",
                tenant_slug=tenant.slug,
                scope="agent",
                value=_DROP_AGENT,
                project=drop_project,
                days=(first_day + timedelta(days=drop_day),),
                factor=DROP_FACTOR,
            ),
            Anomaly(
                kind="missing_data",
                tenant_slug=tenant.slug,
                scope="agent",
                value=_STEADY_AGENT,
                project=None,
                days=last_days,
                factor=None,
            ),
        ]
    if runaway is not None:
        anomalies.append(
            Anomaly(
                kind="runaway_trace",
                tenant_slug=tenant.slug,
                scope="agent",
                value=runaway.agent,
                project=runaway.project,
                days=(first_day + timedelta(days=runaway_day),),
                factor=RUNAWAY_FACTOR,
            )
        )
    return plans, anomalies


class _TraceBuilder:
    """Turns plans into observations, drawing details from one rng in order."""

    def __init__(self, scenario: Scenario, tenant: ScenarioTenant) -> None:
        self.scenario = scenario
        self.tenant = tenant
        self.rng = random.Random(f"{scenario.seed}:{tenant.slug}:detail")
        # Its own stream, so that hostile strings do not move other details.
        self.hostile_rng = random.Random(f"{scenario.seed}:{tenant.slug}:hostile")
        self.now = to_micros(scenario.now)
        # Each agent leans on one model, as real agents do.
        agents = (*tenant.agents, _STEADY_AGENT, _DROP_AGENT)
        self.primary_model = {agent: self.rng.choice(CHAT_MODELS) for agent in agents}

    def build(self, plan: _Plan) -> ScenarioTrace:
        rng = self.rng
        trace_id = _hex(rng, 32)
        running = plan.kind == "running"
        metadata: dict[str, Any] = {"project_id": plan.project, "agent": plan.agent}
        if plan.epic is not None:
            metadata["epic"] = plan.epic
        common = {
            "traceId": trace_id,
            "userId": plan.user_id,
            "sessionId": f"sess-{_hex(rng, 12)}" if rng.random() < 0.5 else None,
            "traceName": plan.agent,
            "tags": [self.tenant.slug, plan.project],
            "release": f"v1.{rng.randint(0, 9)}",
            "environment": "production",
        }
        if plan.kind == "background" and (
            self.hostile_rng.random() < self.scenario.hostile_fraction
        ):
            hostile = self.hostile_rng.choice(HOSTILE_STRINGS)
            common["userId"] = f"{plan.user_id}\x00"
            common["sessionId"] = f"sess\x00{hostile[:40]}"
            metadata["note"] = hostile
        else:
            hostile = None
        root_id = _hex(rng, 16)
        root = {
            **common,
            "id": root_id,
            "type": "AGENT" if rng.random() < 0.5 else "SPAN",
            "name": hostile or plan.agent,
            "startTime": plan.start,
            "parentObservationId": None,
            "metadata": dict(metadata),
        }
        children = self._children(plan, root_id, common, metadata)
        late: list[dict[str, Any]] = []
        if (
            plan.kind == "background"
            and rng.random() < self.scenario.late_fraction
            and children[-1]["type"] == "GENERATION"
        ):
            late.append(children.pop())
        if running:
            # The last generation is still streaming: no end, no usage yet.
            generations = [c for c in children if c["type"] == "GENERATION"]
            if generations:
                generations[-1].update(
                    endTime=None,
                    completionStartTime=None,
                    usageDetails={},
                    costDetails={},
                    totalCost=None,
                )
            root["endTime"] = None
        elif plan.kind == "long_running":
            root["endTime"] = None  # a run that never ends
        else:
            last_end = max(c["endTime"] for c in (*children, *late))
            root["endTime"] = last_end + rng.randint(1, 40) * 1000
        observations = [root, *children]
        for observation in (*observations, *late):
            # Historical rows were last written when they ended (or, still
            # running, when they started): the settle rule reads updatedAt.
            stamp = observation.get("endTime") or observation["startTime"]
            observation.setdefault("createdAt", stamp)
            observation.setdefault("updatedAt", stamp)
            for key in (
                "startTime",
                "endTime",
                "completionStartTime",
                "createdAt",
                "updatedAt",
            ):
                if observation.get(key) is not None:
                    observation[key] = format_timestamp(observation[key])
        return ScenarioTrace(
            trace_id=trace_id,
            tenant_slug=self.tenant.slug,
            agent=plan.agent,
            project=plan.project,
            user_id=common["userId"],
            epic=plan.epic,
            start_time=datetime.fromtimestamp(plan.start / _MICROS, tz=UTC),
            observations=tuple(observations),
            late_observations=tuple(late),
            in_progress=running,
        )

    def _children(
        self,
        plan: _Plan,
        root_id: str,
        common: dict[str, Any],
        metadata: dict[str, Any],
    ) -> list[dict[str, Any]]:
        rng = self.rng
        if plan.kind == "series":
            kinds = ["GENERATION"]
        else:
            kinds = ["GENERATION"] * rng.choices((1, 2, 3, 4), (35, 35, 20, 10))[0]
            if rng.random() < 0.4:
                kinds.insert(rng.randrange(len(kinds) + 1), "TOOL")
            if rng.random() < 0.2:
                kinds.insert(0, "EMBEDDING")
        cursor = plan.start + rng.randint(5, 50) * 1000
        children = []
        for kind in kinds:
            # A running trace has had well under a minute; keep it compact.
            if plan.kind == "running" and cursor >= self.now - _MICROS:
                break
            child = {
                **common,
                "id": _hex(rng, 16),
                "type": kind,
                "startTime": cursor,
                "parentObservationId": root_id,
                "metadata": dict(metadata),
            }
            if kind == "TOOL":
                child["name"] = rng.choice(_TOOLS)
                duration = rng.randint(50, 2000) * 1000
            elif kind == "EMBEDDING":
                duration = rng.randint(50, 500) * 1000
                self._usage(child, EMBEDDING_MODEL, {"input": rng.randint(50, 2000)})
                child["name"] = "embed-query"
            else:
                duration = self._generation(child, plan)
            if plan.kind == "running":
                duration = max(1000, min(duration, 2 * _MICROS, self.now - cursor))
            child["endTime"] = cursor + duration
            if "completionStartTime" in child:
                ttft = min(duration, rng.randint(150, 1500) * 1000)
                child["completionStartTime"] = cursor + ttft
            children.append(child)
            cursor += duration + rng.randint(1, 50) * 1000
        return children

    def _generation(self, child: dict[str, Any], plan: _Plan) -> int:
        """Fill in a generation; return its duration in microseconds."""
        rng = self.rng
        child["name"] = f"{plan.agent}.llm"
        if plan.kind == "series":
            model = self.primary_model[plan.agent]
            prompt = round(2000 * rng.uniform(0.9, 1.1))
            output = round(500 * rng.uniform(0.9, 1.1))
        else:
            draw = rng.random()
            if draw < self.scenario.unpriced_fraction:
                model = UNPRICED_MODEL
            elif draw < self.scenario.unpriced_fraction + (
                self.scenario.unknown_model_fraction
            ):
                model = CUSTOM_PRICED_MODEL
            elif rng.random() < 0.7:
                model = self.primary_model[plan.agent]
            else:
                model = rng.choice(CHAT_MODELS)
            prompt = min(
                60_000, max(50, round(rng.lognormvariate(math.log(1500), 0.8)))
            )
            output = min(8_000, max(10, round(rng.lognormvariate(math.log(300), 0.7))))
        if plan.factor == RUNAWAY_FACTOR:
            # After the draws, so that later traces stay the same; at least a
            # typical call, so that the runaway is one at any hour it is made.
            model = RUNAWAY_MODEL
            prompt, output = max(prompt, 4000), max(output, 500)
        if plan.factor != 1.0:
            prompt = max(1, round(prompt * plan.factor))
            output = max(1, round(output * plan.factor))
        # The series stay steady: no cache or audio, whose shares vary.
        keys = usage_keys(model)
        usage = {"input": prompt, "output": output}
        if plan.kind != "series":
            if "cache_read" in keys and rng.random() < self.scenario.cache_fraction:
                cached = round(prompt * rng.uniform(0.3, 0.85))
                usage[keys["cache_read"]] = cached
                usage["input"] -= cached
            if "cache_write" in keys and rng.random() < CACHE_WRITE_FRACTION:
                written = round(usage["input"] * rng.uniform(0.2, 0.6))
                usage[keys["cache_write"]] = written
                usage["input"] -= written
            if "audio" in keys and rng.random() < AUDIO_FRACTION:
                usage[keys["audio"]] = rng.randint(200, 5000)
        if rng.random() < 0.02:
            child["level"] = "ERROR"
            child["statusMessage"] = "upstream provider returned 529 overloaded"
            usage["output"] = 0
        if "reasoning" in keys:
            usage[keys["reasoning"]] = REASONING_FACTOR * usage["output"]
        self._usage(child, model, usage)
        child["modelParameters"] = {
            "temperature": rng.choice((0.0, 0.2, 0.7)),
            "max_tokens": rng.choice((1024, 4096)),
        }
        child["completionStartTime"] = None  # set by the caller from the duration
        generated = usage["output"] + usage.get(keys.get("reasoning", ""), 0)
        return rng.randint(400, 2500) * 1000 + generated * 8000

    @staticmethod
    def _usage(child: dict[str, Any], model: str, usage: dict[str, int]) -> None:
        """Set the model, usage and Langfuse's cost of a generation."""
        usage["total"] = sum(usage.values())
        child["model"] = model
        child["usageDetails"] = usage
        if model == CUSTOM_PRICED_MODEL:
            details = _custom_cost(usage)
        else:
            costs = langfuse_cost(model, usage)
            details = {k: float(v) for k, v in costs.items()} if costs else {}
        known = langfuse_model_prices(model) is not None
        child["internalModelId"] = f"lf-model-{model}" if known else None
        child["costDetails"] = details
        child["totalCost"] = details.get("total")
