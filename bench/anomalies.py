"""
Precision and recall of the anomaly detection on labelled incidents.

    .venv/bin/python bench/anomalies.py [--seed 7] [--tenants 6] [--days 21]
        [--json PATH] [--database bench_anomalies] [--postgres-url URL]

In a dedicated Postgres database (``--database``, default ``bench_anomalies``,
dropped, created and migrated) it writes seeded usage straight into the
ledger (``UsageRecord.objects.bulk_create``, pending and unreported, so
billable; the ledger's triggers keep the daily scope usage current), runs
the app's own pipeline (``anomalies.pipeline.rollup_days`` over every day,
then ``detect_days`` over the evaluation days) and scores the
``CostAnomaly`` rows against the incidents it injected.

The usage: 35 warm-up days, then ``--days`` evaluation days ending
2026-11-29. Each tenant has 3 projects of 4-6 agents (median trace cost
log-uniform between $0.002 and $0.08 before scaling to the tenant's size,
10-300 traces a day, trace cost lognormal with sigma 0.8-1.0), 5 epics a
project (15% of traces without one) and 20-40 users picked with skew.
Tenants cost from about $5 to $500 a day; two have weekdays at 3x the
weekend, one has weekends at 3x the weekdays. Daily volumes are Poisson.

Labelled incidents, on evaluation days only, never two on one project and
day nor on one user and day, each agent at most once: ``expensive_trace``
(one trace at 100-1000x the agent's median), ``spike_2x`` / ``spike_5x`` /
``spike_20x`` (the agent's volume times N for a day; half of them all from
one user), ``drop_10pct`` (10% of the volume for a day), ``stopped`` (a
steady agent stops for good; labelled on its first missing day) and
``ramp`` (+10% volume a day over the last 14 days; never counted as in
target: no daily rule is required to catch it). Traps that should not be
flagged: ``weekly_seasonality`` (the seasonal tenants' weekends, when volume
is 3x or 1/3 of the trailing weeks' level), ``sparse`` (an agent in every
other tenant and two users a tenant with 0-3 traces a day), ``new_scope``
(an agent or user first seen on an evaluation day, from 18:00-22:00 UTC)
and ``outlier_peer`` (an agent that is always 10x the others of its project
in daily cost).

Each label's ground truth: scope_day_ratio (the agent's cost that day over
its median daily cost of the 28 days before) and trace_vs_p95 (the label's
most expensive trace over the 95th percentile of the agent's traces of the
7 days before). In target: ratio >= 3, ratio <= 0.1, or trace_vs_p95 >= 20.

An anomaly belongs to a label when one of its top traces is the label's, or
when it is on the label's day and its scope is the label's agent, project
or user. Any other anomaly is a false positive, put down to a trap when it
is on the trap's scope (on its first day, for new scopes), when its most
expensive trace is a trap agent's, or, for seasonality, when it is on a
seasonal weekend and within 2x of expected once the season's 3x (or 1/3)
is taken out; else to "background".

Prints precision per anomaly type, recall per incident kind, false
positives per trap, the review items per detected incident (distinct
incidents when ``CostAnomaly`` has an ``incident``, else rows), the timings,
PASS/FAIL against the targets (exit status 1 when one fails) and a line of
detail for some false positives and missed labels. Progress goes to stderr.
Takes about 2 minutes at the defaults (440k ledger rows, most of the time
writing them) on two cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import statistics
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from time import monotonic
from typing import Any, NamedTuple

from support import (
    DEFAULT_POSTGRES_URL,
    ROOT,
    Timer,
    django_env,
    log,
    recreate_database,
)

# This script is named as the app is: the repository root must come before
# bench/ on the import path (support.py only adds it when it is missing), or
# "import anomalies" finds this file.
sys.path.insert(0, str(ROOT))

DATABASE = "bench_anomalies"
EVALUATION_END = date(2026, 11, 29)
# The baseline rule looks 28 days back; a week more so that every
# evaluation day has a full window.
WARMUP_DAYS = 35
BATCH_SIZE = 5000
MONEY_PLACES = Decimal("1e-10")
ONE_DAY = timedelta(days=1)

# The world.
PROJECTS = 3
AGENTS_PER_PROJECT = (4, 6)
EPICS_PER_PROJECT = 5
USERS_PER_TENANT = (20, 40)
NO_EPIC = 0.15
AGENT_MEDIAN_COST = (0.002, 0.08)  # a distribution parameter, not money
AGENT_VOLUME = (10, 300)
TRACE_SIGMA = (0.8, 1.0)
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet-20241022", "o3-mini")
FLAT, WEEKDAYS, WEEKENDS = "flat", "weekdays", "weekends"
SEASON_RATIO = 3
# (daily cost in dollars, season) by tenant ordinal, cycled.
TENANT_SHAPES = (
    (5, FLAT),
    (150, WEEKDAYS),
    (500, FLAT),
    (20, WEEKDAYS),
    (60, FLAT),
    (40, WEEKENDS),
)
NORMAL, SPARSE, OUTLIER = "normal", "sparse", "outlier"
SPARSE_TRACES = (0, 3)
SPARSE_USERS = 2
NEW_SCOPE_HOURS = (18, 22)
NEW_USER_VOLUME = (20, 40)
OUTLIER_FACTOR = 10

# Incidents.
EXPENSIVE_TRACE = "expensive_trace"
DROP = "drop_10pct"
STOPPED = "stopped"
RAMP = "ramp"
SPIKES = {"spike_2x": 2, "spike_5x": 5, "spike_20x": 20}
INCIDENT_COUNTS = {
    EXPENSIVE_TRACE: 10,
    "spike_2x": 6,
    "spike_5x": 8,
    "spike_20x": 8,
    DROP: 6,
    STOPPED: 4,
    RAMP: 2,
}
INCIDENT_KINDS = tuple(INCIDENT_COUNTS)
EXPENSIVE_MULTIPLIER = (100, 1000)
DROP_SHARE = 0.1
RAMP_GROWTH = 1.1
RAMP_DAYS = 14
# Volume floors: a drop or a stop of a handful of traces is noise, and a
# stopped agent must have been steady to be missed.
DROP_MIN_VOLUME = 30
STOPPED_MIN_VOLUME = 50
RAMP_MAX_VOLUME = 150  # its last day is 3.8x: keeps the rows modest
PLACEMENT_TRIES = 200

# Ground truth.
BASELINE_DAYS = 28
P95_DAYS = 7
# The target: incidents that at least triple their scope-day or cost
# 20x their scope's p95 trace, and (its item 2) that are material at the
# tenant's default floor: a change of less than $1, or of less than 1% of the
# tenant's day, is one nobody would act on.
IN_TARGET_HIGH = Decimal(3)
IN_TARGET_TRACE = Decimal(20)
FLOOR_AMOUNT = Decimal("1.00")
FLOOR_SHARE = Decimal("0.01")

# Traps.
WEEKLY_SEASONALITY = "weekly_seasonality"
NEW_SCOPE = "new_scope"
OUTLIER_PEER = "outlier_peer"
TRAP_KINDS = (WEEKLY_SEASONALITY, SPARSE, NEW_SCOPE, OUTLIER_PEER)
BACKGROUND = "background"
# A season's day moves volume at least this far from the trailing weeks,
# and a finding it explains is within this of expected once it is taken out.
SEASON_SHIFT = 2

# Targets.
# An anomaly's direction, which a label's must match.
HIGH, LOW = "high", "low"
LOW_TYPES = ("suspiciously_low", "missing_data")
TARGET_PRECISION = 0.95
TARGET_RECALL = 0.95
TARGET_REVIEW_ITEMS = 1.2
DETAIL_LINES = 10


# --------------------------------------------------------------------------
# The world, its traps and its incidents
# --------------------------------------------------------------------------


@dataclass
class Agent:
    project_id: str
    agent_id: str
    median_cost: float  # of a trace; a distribution parameter, not money
    sigma: float
    volume: float  # traces on an average day
    model: str
    role: str = NORMAL
    first_day: date | None = None
    first_hour: int = 0
    stopped_from: date | None = None
    ramp_start: date | None = None

    @property
    def expected_daily_cost(self) -> float:
        return self.volume * self.median_cost * math.exp(self.sigma**2 / 2)

    def active_on(self, day: date) -> bool:
        if self.first_day and day < self.first_day:
            return False
        return not (self.stopped_from and day >= self.stopped_from)

    def ramp_factor(self, day: date) -> float:
        if not self.ramp_start or day < self.ramp_start:
            return 1.0
        return RAMP_GROWTH ** ((day - self.ramp_start).days + 1)


@dataclass
class NewUser:
    user_id: str
    first_day: date
    first_hour: int
    volume: int


@dataclass
class TenantShape:
    index: int
    slug: str
    season: str
    daily_cost: int
    epics: dict[str, list[str]]
    agents: list[Agent]
    users: list[str]  # picked with skew
    sparse_users: list[str] = field(default_factory=list)
    new_users: list[NewUser] = field(default_factory=list)
    cost_scale: float = 1.0
    tenant_id: int = 0  # the database's, once created


@dataclass
class Trap:
    kind: str
    tenant_index: int
    scope_type: str  # "tenant" for the whole tenant
    project_id: str = ""
    scope_id: str = ""
    days: frozenset[date] | None = None  # None: every day
    # Seasonality: per day, how far the season moves volume from the level
    # of the trailing weeks (3 or 1/3 on weekends).
    shifts: dict[date, float] = field(default_factory=dict)

    def matches(self, row: Flagged) -> bool:
        """The finding is on the trap's scope and days, or its most
        expensive trace is the trap agent's, or the season explains it."""
        if row.tenant_index != self.tenant_index:
            return False
        if self.days is not None and row.day not in self.days:
            return False
        if self.scope_type == "tenant":
            # The season's doing when taking its shift out leaves the
            # finding within SEASON_SHIFT of expected: a scope flagged 40x
            # on a 3x day is flagged for something else.
            if not row.expected or row.day not in self.shifts:
                return False
            left = float(row.observed / row.expected) / self.shifts[row.day]
            return 1 / SEASON_SHIFT < left < SEASON_SHIFT
        if self.scope_type == "agent" and row.cause_agent == (
            self.project_id,
            self.scope_id,
        ):
            return True
        return (
            row.scope_type == self.scope_type
            and row.project_id == self.project_id
            and row.scope_id == self.scope_id
        )

    def describe(self) -> str:
        if self.scope_type == "tenant":
            return f"seasonal tenant t{self.tenant_index}"
        scope = f"{self.project_id}/{self.scope_id}".lstrip("/")
        return f"t{self.tenant_index} {self.scope_type} {scope}"


@dataclass
class Label:
    id: str
    kind: str
    tenant_index: int
    days: list[date]
    project_id: str
    agent_id: str
    user_id: str = ""
    multiplier: float = 1.0  # expensive_trace: x the agent's median trace
    trace_ids: set[str] = field(default_factory=set)
    trace_costs: list[Decimal] = field(default_factory=list)
    observed: Decimal = Decimal(0)  # the agent's cost on the measured day
    baseline: Decimal = Decimal(0)  # its median daily cost before
    scope_day_ratio: Decimal | None = None
    trace_vs_p95: Decimal | None = None
    material: bool = False  # above the default floor
    in_target: bool = False
    rows: list[Flagged] = field(default_factory=list)

    @property
    def direction(self) -> str:
        return LOW if self.kind in (DROP, STOPPED) else HIGH

    def covers(self, row: Flagged) -> bool:
        """The anomaly is on this label's tenant, day and scope, its way."""
        if row.tenant_index != self.tenant_index or row.day not in self.days:
            return False
        if row.direction != self.direction:
            return False
        if row.scope_type == "agent":
            return (row.project_id, row.scope_id) == (self.project_id, self.agent_id)
        if row.scope_type == "project":
            return row.scope_id == self.project_id
        if row.scope_type == "user":
            return bool(self.user_id) and row.scope_id == self.user_id
        return False

    @property
    def detected(self) -> bool:
        return bool(self.rows)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "tenant": self.tenant_index,
            "days": [day.isoformat() for day in self.days],
            "project_id": self.project_id,
            "agent_id": self.agent_id,
            "user_id": self.user_id,
            "traces": len(self.trace_ids),
            "observed": str(self.observed),
            "baseline": str(self.baseline),
            "scope_day_ratio": _number(self.scope_day_ratio),
            "trace_vs_p95": _number(self.trace_vs_p95),
            "in_target": self.in_target,
            "rows": len(self.rows),
            "review_items": len({row.review_key for row in self.rows}),
        }


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def season_factor(season: str, day: date) -> float:
    """Volume on ``day`` relative to the tenant's average day."""
    weekend = day.weekday() >= 5
    if season == WEEKDAYS:
        high = 7 / (5 + 2 / SEASON_RATIO)
        return high / SEASON_RATIO if weekend else high
    if season == WEEKENDS:
        high = 7 / (2 + 5 / SEASON_RATIO)
        return high if weekend else high / SEASON_RATIO
    return 1.0


def _new_agent(rng: random.Random, project_id: str, agent_id: str) -> Agent:
    return Agent(
        project_id=project_id,
        agent_id=agent_id,
        median_cost=_log_uniform(rng, *AGENT_MEDIAN_COST),
        sigma=rng.uniform(*TRACE_SIGMA),
        volume=_log_uniform(rng, *AGENT_VOLUME),
        model=rng.choice(MODELS),
    )


def tenant_shape_build(rng: random.Random, index: int) -> TenantShape:
    """One tenant's projects, agents, epics and users, scaled to its size."""
    daily_cost, season = TENANT_SHAPES[index % len(TENANT_SHAPES)]
    epics: dict[str, list[str]] = {}
    agents: list[Agent] = []
    for p in range(1, PROJECTS + 1):
        project_id = f"proj-{p}"
        epics[project_id] = [f"EPIC-{p}{e}" for e in range(1, EPICS_PER_PROJECT + 1)]
        for a in range(1, rng.randint(*AGENTS_PER_PROJECT) + 1):
            agents.append(_new_agent(rng, project_id, f"agent-{p}{a}"))
    # Agents keep their relative levels; the tenant's size sets the scale.
    scale = daily_cost / sum(agent.expected_daily_cost for agent in agents)
    for agent in agents:
        agent.median_cost *= scale
    users = [f"user-{n:03d}" for n in range(1, rng.randint(*USERS_PER_TENANT) + 1)]
    return TenantShape(
        index=index,
        slug=f"bench-{index}",
        season=season,
        daily_cost=daily_cost,
        epics=epics,
        agents=agents,
        users=users,
        cost_scale=scale,
    )


def traps_plan(
    rng: random.Random, shapes: list[TenantShape], evaluation_days: list[date]
) -> list[Trap]:
    """Add the trap scopes to the tenants; return them for attribution."""
    traps = []
    for shape in shapes:
        i = shape.index
        if shape.season != FLAT:
            traps.append(_seasonality_trap(shape, evaluation_days))
        for n in range(1, SPARSE_USERS + 1):
            user_id = f"user-{len(shape.users) + n:03d}"
            shape.sparse_users.append(user_id)
            traps.append(Trap(SPARSE, i, "user", "", user_id))
        if i % 2 == 0:
            agent = _new_agent(rng, "proj-2", "agent-29")
            agent.median_cost *= shape.cost_scale
            agent.role = SPARSE
            shape.agents.append(agent)
            traps.append(Trap(SPARSE, i, "agent", agent.project_id, agent.agent_id))
        first_day = evaluation_days[(5 * i + 3) % len(evaluation_days)]
        first_hour = rng.randint(*NEW_SCOPE_HOURS)
        if i % 3 == 0:
            agent = _new_agent(rng, "proj-3", "agent-39")
            agent.median_cost *= shape.cost_scale
            agent.first_day, agent.first_hour = first_day, first_hour
            shape.agents.append(agent)
            traps.append(
                Trap(
                    NEW_SCOPE,
                    i,
                    "agent",
                    agent.project_id,
                    agent.agent_id,
                    frozenset([first_day]),
                )
            )
        if i % 3 == 2:
            user_id = f"user-{len(shape.users) + SPARSE_USERS + 1:03d}"
            volume = rng.randint(*NEW_USER_VOLUME)
            shape.new_users.append(NewUser(user_id, first_day, first_hour, volume))
            traps.append(
                Trap(NEW_SCOPE, i, "user", "", user_id, frozenset([first_day]))
            )
        if i % 3 == 1:
            traps.append(_outlier_make(shape, "proj-3"))
    return traps


def _seasonality_trap(shape: TenantShape, evaluation_days: list[date]) -> Trap:
    """The days whose season moves volume SEASON_SHIFT-fold or more away
    from the level of the trailing weeks, which a baseline rule sees."""
    shifts = {}
    for day in evaluation_days:
        trailing = statistics.median(
            season_factor(shape.season, day - timedelta(days=n))
            for n in range(1, BASELINE_DAYS + 1)
        )
        shift = season_factor(shape.season, day) / trailing
        if shift >= SEASON_SHIFT or shift <= 1 / SEASON_SHIFT:
            shifts[day] = shift
    return Trap(
        WEEKLY_SEASONALITY,
        shape.index,
        "tenant",
        days=frozenset(shifts),
        shifts=shifts,
    )


def _outlier_make(shape: TenantShape, project_id: str) -> Trap:
    """Make the project's last agent cost 10x the average of the others."""
    members = [agent for agent in shape.agents if agent.project_id == project_id]
    outlier, peers = members[-1], members[:-1]
    peer_cost = statistics.mean(agent.expected_daily_cost for agent in peers)
    outlier.median_cost *= OUTLIER_FACTOR * peer_cost / outlier.expected_daily_cost
    outlier.role = OUTLIER
    return Trap(OUTLIER_PEER, shape.index, "agent", project_id, outlier.agent_id)


def _pick_user(rng: random.Random, shape: TenantShape) -> str:
    # Squaring a uniform draw favours the first users: a few heavy users
    # and a long tail, as in a real team.
    return shape.users[int(len(shape.users) * rng.random() ** 2)]


def _incident_order() -> list[str]:
    """Ramps and stops first (they need the most room), then the one-day
    kinds interleaved, so that each kind is spread over tenants."""
    order = [RAMP] * INCIDENT_COUNTS[RAMP] + [STOPPED] * INCIDENT_COUNTS[STOPPED]
    rest = {k: n for k, n in INCIDENT_COUNTS.items() if k not in (RAMP, STOPPED)}
    for round_ in range(max(rest.values())):
        order += [kind for kind, count in rest.items() if count > round_]
    return order


def _eligible(kind: str, shape: TenantShape, agent: Agent) -> bool:
    if agent.role != NORMAL or agent.first_day:
        return False
    if kind == STOPPED:
        return shape.season == FLAT and agent.volume >= STOPPED_MIN_VOLUME
    if kind == DROP:
        return agent.volume >= DROP_MIN_VOLUME
    if kind == RAMP:
        return agent.volume <= RAMP_MAX_VOLUME
    return True


class _Placement:
    """What is taken: agents, (tenant, project, day) and (tenant, user, day)."""

    def __init__(self, shapes: list[TenantShape]) -> None:
        self.agents: set[tuple[int, str, str]] = set()
        self.project_days: set[tuple[int, str, date]] = set()
        self.user_days: set[tuple[int, str, date]] = set()
        for shape in shapes:
            for agent in shape.agents:
                # A trap's project is left alone, so that what is flagged
                # there is the trap's doing.
                if agent.role == OUTLIER:
                    self.agents.update(
                        (shape.index, a.project_id, a.agent_id)
                        for a in shape.agents
                        if a.project_id == agent.project_id
                    )
                if agent.first_day:
                    self.project_days.add(
                        (shape.index, agent.project_id, agent.first_day)
                    )


def incidents_plan(
    rng: random.Random, shapes: list[TenantShape], evaluation_days: list[date]
) -> list[Label]:
    """Choose where each labelled incident happens and mark its agent."""
    taken = _Placement(shapes)
    labels: list[Label] = []
    for n, kind in enumerate(_incident_order()):
        label = _incident_place(rng, n, kind, shapes, evaluation_days, taken)
        if label is None:
            log(f"no room for a {kind} incident; skipped")
            continue
        label.id = f"L{len(labels) + 1:02d}"
        labels.append(label)
    return labels


def _incident_place(
    rng: random.Random,
    n: int,
    kind: str,
    shapes: list[TenantShape],
    evaluation_days: list[date],
    taken: _Placement,
) -> Label | None:
    for attempt in range(PLACEMENT_TRIES):
        shape = shapes[(n + attempt) % len(shapes)]
        agents = [
            agent
            for agent in shape.agents
            if _eligible(kind, shape, agent)
            and (shape.index, agent.project_id, agent.agent_id) not in taken.agents
        ]
        if not agents:
            continue
        agent = rng.choice(agents)
        days = (
            evaluation_days[-RAMP_DAYS:]
            if kind == RAMP
            else [rng.choice(evaluation_days)]
        )
        if any((shape.index, agent.project_id, d) in taken.project_days for d in days):
            continue
        user_id = ""
        if kind == EXPENSIVE_TRACE or (kind in SPIKES and n % 2 == 0):
            user_id = _pick_user(rng, shape)
            if (shape.index, user_id, days[0]) in taken.user_days:
                continue
            taken.user_days.add((shape.index, user_id, days[0]))
        taken.agents.add((shape.index, agent.project_id, agent.agent_id))
        taken.project_days.update((shape.index, agent.project_id, d) for d in days)
        if kind == STOPPED:
            agent.stopped_from = days[0]
        if kind == RAMP:
            agent.ramp_start = days[0]
        return Label(
            id="",
            kind=kind,
            tenant_index=shape.index,
            days=days,
            project_id=agent.project_id,
            agent_id=agent.agent_id,
            user_id=user_id,
            multiplier=_log_uniform(rng, *EXPENSIVE_MULTIPLIER),
        )
    return None


# --------------------------------------------------------------------------
# The ledger
# --------------------------------------------------------------------------


class Trace(NamedTuple):
    agent: Agent
    user_id: str
    epic_id: str
    cost: Decimal
    at: datetime
    label: Label | None = None


# {(tenant ordinal, project, agent): {day: [trace cost, ...]}}
AgentCosts = dict[tuple[int, str, str], dict[date, list[Decimal]]]


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean < 30:
        # Knuth's method: exact, and cheap for small means.
        limit, count, product = math.exp(-mean), 0, rng.random()
        while product > limit:
            count += 1
            product *= rng.random()
        return count
    return max(0, round(rng.gauss(mean, math.sqrt(mean))))


def _money(value: float) -> Decimal:
    return max(Decimal(f"{value:.10f}"), MONEY_PLACES)


def _trace_cost(rng: random.Random, agent: Agent) -> Decimal:
    return _money(agent.median_cost * math.exp(rng.gauss(0, agent.sigma)))


def _moment(
    rng: random.Random, day: date, first_hour: int = 0, hours: int = 0
) -> datetime:
    """A moment of ``day`` (UTC) from ``first_hour`` on, within ``hours`` of
    it when given (a burst), else until the day's end."""
    start = datetime.combine(day, time.min, tzinfo=UTC)
    low = first_hour * 3600
    high = min(86_399, low + hours * 3600) if hours else 86_399
    return start + timedelta(seconds=rng.uniform(low, high))


def _epic(rng: random.Random, shape: TenantShape, agent: Agent) -> str:
    return "" if rng.random() < NO_EPIC else rng.choice(shape.epics[agent.project_id])


def _agent_day(
    rng: random.Random,
    shape: TenantShape,
    agent: Agent,
    day: date,
    label: Label | None,
) -> list[Trace]:
    """The agent's traces of the day, its incident's included."""
    if not agent.active_on(day):
        return []
    first_hour = agent.first_hour if day == agent.first_day else 0
    if agent.role == SPARSE:
        count = rng.randint(*SPARSE_TRACES)
    else:
        mean = agent.volume * season_factor(shape.season, day) * agent.ramp_factor(day)
        mean *= (24 - first_hour) / 24
        if label and label.kind == DROP:
            mean *= DROP_SHARE
        count = _poisson(rng, mean)
    traces = [
        Trace(
            agent,
            _pick_user(rng, shape),
            _epic(rng, shape, agent),
            _trace_cost(rng, agent),
            _moment(rng, day, first_hour),
        )
        for _ in range(count)
    ]
    if label and label.kind in SPIKES:
        # A burst of a few hours: a batch job or a retry storm.
        burst_hour = rng.randrange(18)
        extra = round((SPIKES[label.kind] - 1) * count)
        traces += [
            Trace(
                agent,
                label.user_id or _pick_user(rng, shape),
                _epic(rng, shape, agent),
                _trace_cost(rng, agent),
                _moment(rng, day, burst_hour, hours=6),
                label,
            )
            for _ in range(extra)
        ]
    if label and label.kind == EXPENSIVE_TRACE:
        cost = _money(agent.median_cost * label.multiplier)
        at = _moment(rng, day)
        traces.append(
            Trace(agent, label.user_id, _epic(rng, shape, agent), cost, at, label)
        )
    return traces


def _user_traces(
    rng: random.Random,
    shape: TenantShape,
    day: date,
    user_id: str,
    count: int,
    hour: int,
) -> list[Trace]:
    """A user's traces on any of the tenant's active ordinary agents."""
    agents = [a for a in shape.agents if a.role == NORMAL and a.active_on(day)]
    traces = []
    for _ in range(count):
        agent = rng.choice(agents)
        traces.append(
            Trace(
                agent,
                user_id,
                _epic(rng, shape, agent),
                _trace_cost(rng, agent),
                _moment(rng, day, hour),
            )
        )
    return traces


def tenant_day_traces(
    rng: random.Random,
    shape: TenantShape,
    day: date,
    events: dict[tuple[int, str, str, date], Label],
) -> list[Trace]:
    traces: list[Trace] = []
    for agent in shape.agents:
        label = events.get((shape.index, agent.project_id, agent.agent_id, day))
        traces += _agent_day(rng, shape, agent, day, label)
    for user_id in shape.sparse_users:
        count = rng.randint(*SPARSE_TRACES)
        traces += _user_traces(rng, shape, day, user_id, count, 0)
    for user in shape.new_users:
        if day < user.first_day:
            continue
        hour = user.first_hour if day == user.first_day else 0
        mean = user.volume * season_factor(shape.season, day) * (24 - hour) / 24
        traces += _user_traces(rng, shape, day, user.user_id, _poisson(rng, mean), hour)
    return traces


def _record(shape: TenantShape, trace_id: str, trace: Trace) -> Any:
    from billing.models import UsageRecord

    cost = str(trace.cost)
    # Tokens roughly in line with the cost; no rule reads them.
    input_tokens = 50 + int(trace.cost * 150_000)
    output_tokens = 5 + int(trace.cost * 15_000)
    usage = {"input": input_tokens, "output": output_tokens, "cached": 0, "cost": cost}
    return UsageRecord(
        tenant_id=shape.tenant_id,
        trace_id=trace_id,
        trace_timestamp=trace.at,
        last_activity_at=trace.at + timedelta(seconds=40),
        project_id=trace.agent.project_id,
        agent_id=trace.agent.agent_id,
        user_id=trace.user_id,
        epic_id=trace.epic_id,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_tokens=0,
        cost=trace.cost,
        model_breakdown={trace.agent.model: usage},
        # Only the sync reads these (to add only news on a re-read); left
        # empty, the load writes less JSON for nothing the rules look at.
        observations={},
        price_source="price_table",
        content_hash=hashlib.sha256(trace_id.encode()).hexdigest(),
        status="pending",
    )


class LedgerWriter:
    """Usage records in batches, each in its own transaction as the sync
    writes pages (the ledger's statement-level triggers run per batch)."""

    def __init__(self) -> None:
        self.pending: list[Any] = []
        self.written = 0

    def add(self, record: Any) -> None:
        self.pending.append(record)
        if len(self.pending) >= BATCH_SIZE:
            self.flush()

    def flush(self) -> None:
        from billing.models import UsageRecord
        from billing.tenancy import tenant_context

        if not self.pending:
            return
        with tenant_context(all_tenants=True):
            UsageRecord.objects.bulk_create(self.pending)
        self.written += len(self.pending)
        self.pending = []


def ledger_generate(
    seed: int, shapes: list[TenantShape], labels: list[Label], days: list[date]
) -> tuple[int, AgentCosts]:
    """Write every day's usage; return the rows written and every agent's
    trace costs per day (the ground truth's input)."""
    rng = random.Random(f"{seed}-ledger")
    events = {
        (label.tenant_index, label.project_id, label.agent_id, label.days[0]): label
        for label in labels
        if label.kind not in (STOPPED, RAMP)
    }
    costs: AgentCosts = defaultdict(lambda: defaultdict(list))
    writer = LedgerWriter()
    for day in days:
        for shape in shapes:
            for n, trace in enumerate(tenant_day_traces(rng, shape, day, events), 1):
                trace_id = f"{shape.slug}-{day:%Y%m%d}-{n:06d}"
                writer.add(_record(shape, trace_id, trace))
                agent = trace.agent
                costs[(shape.index, agent.project_id, agent.agent_id)][day].append(
                    trace.cost
                )
                if trace.label:
                    trace.label.trace_ids.add(trace_id)
                    trace.label.trace_costs.append(trace.cost)
        if day.day == 1 or day == days[-1]:
            log(f"ledger up to {day}: {writer.written + len(writer.pending):,} rows")
    writer.flush()
    return writer.written, costs


def tenants_create(shapes: list[TenantShape]) -> None:
    from billing.models import Tenant

    for shape in shapes:
        tenant = Tenant.objects.create(
            name=f"Bench tenant {shape.index}",
            slug=shape.slug,
            stripe_customer_id=f"cus_bench{shape.index}",
            langfuse_host="http://127.0.0.1:1",
        )
        shape.tenant_id = tenant.pk


def label_effects(label: Label, costs: AgentCosts, daily_cost: Decimal) -> None:
    """
    The label's ground truth, from what was written to the ledger;
    ``daily_cost`` is its tenant's usual day.
    """
    daily = costs.get((label.tenant_index, label.project_id, label.agent_id), {})
    # A ramp is measured where it is steepest: its last day.
    day = label.days[-1] if label.kind == RAMP else label.days[0]

    def cost_on(offset: int) -> Decimal:
        return sum(daily.get(day - timedelta(days=offset), ()), Decimal(0))

    label.observed = cost_on(0)
    label.baseline = statistics.median(
        cost_on(offset) for offset in range(1, BASELINE_DAYS + 1)
    )
    if label.baseline:
        label.scope_day_ratio = label.observed / label.baseline
    week = sorted(
        cost
        for offset in range(1, P95_DAYS + 1)
        for cost in daily.get(day - timedelta(days=offset), ())
    )
    # The money at stake as its rule measures it: the trace over the p95 for
    # a runaway trace, the day over the median for the rest.
    stake = abs(label.observed - label.baseline)
    if label.trace_costs and week:
        p95 = week[math.ceil(0.95 * len(week)) - 1]
        label.trace_vs_p95 = max(label.trace_costs) / p95
        if label.kind == EXPENSIVE_TRACE:
            stake = max(label.trace_costs) - p95
    ratio, trace = label.scope_day_ratio, label.trace_vs_p95
    label.material = stake >= max(FLOOR_AMOUNT, FLOOR_SHARE * daily_cost)
    label.in_target = (
        label.kind != RAMP
        and label.material
        and (
            (ratio is not None and ratio >= IN_TARGET_HIGH)
            or (trace is not None and trace >= IN_TARGET_TRACE)
        )
    )


# --------------------------------------------------------------------------
# Detection and scoring
# --------------------------------------------------------------------------


@dataclass
class Flagged:
    """A CostAnomaly row of an evaluation day, as scored."""

    pk: int
    anomaly_type: str
    tenant_index: int
    scope_type: str
    project_id: str
    scope_id: str
    day: date
    observed: Decimal
    expected: Decimal
    trace_ids: list[str]
    # What an operator reviews it as: its incident, else the row itself.
    review_key: tuple[str, int]
    # (project, agent) of its most expensive trace, when it has one.
    cause_agent: tuple[str, str] | None = None
    labels: list[Label] = field(default_factory=list)
    trap: Trap | None = None
    # Attributed only through its incident (reported apart).
    via_incident: bool = False

    @property
    def direction(self) -> str:
        """Whether the row says "more than expected" or "less"."""
        return LOW if self.anomaly_type in LOW_TYPES else HIGH

    @property
    def scope(self) -> str:
        scope = (
            f"{self.project_id}/{self.scope_id}" if self.project_id else self.scope_id
        )
        return f"t{self.tenant_index} {self.scope_type} {scope}"

    @property
    def false_positive_kind(self) -> str:
        return self.trap.kind if self.trap else BACKGROUND


def pipeline_run(days: list[date], evaluation_days: list[date]) -> dict[str, float]:
    from anomalies.pipeline import detect_days, rollup_days

    with Timer() as rollup:
        rollup_days(days, job_id="bench")
    log(f"rollup of {len(days)} days in {rollup.seconds:.1f} s")
    with Timer() as detect:
        detect_days(evaluation_days, job_id="bench")
    log(f"detection of {len(evaluation_days)} days in {detect.seconds:.1f} s")
    return {"rollup_seconds": rollup.seconds, "detect_seconds": detect.seconds}


def anomalies_read(
    shapes: list[TenantShape], evaluation_days: list[date]
) -> list[Flagged]:
    from anomalies.models import CostAnomaly
    from billing.tenancy import tenant_context

    # The incident link is being added; without it each row is reviewed alone.
    has_incident = hasattr(CostAnomaly, "incident")
    fields = ["pk", "tenant_id", "scope_type", "project_id", "scope_id"]
    fields += ["period_start", "anomaly_type", "observed", "expected"]
    fields += ["top_contributors"] + (["incident_id"] if has_incident else [])
    start = datetime.combine(evaluation_days[0], time.min, tzinfo=UTC)
    end = datetime.combine(evaluation_days[-1], time.min, tzinfo=UTC) + ONE_DAY
    ordinal = {shape.tenant_id: shape.index for shape in shapes}
    with tenant_context(all_tenants=True):
        rows = list(
            CostAnomaly.objects.filter(period_start__gte=start, period_start__lt=end)
            .order_by("period_start", "tenant_id", "scope_type", "scope_id", "pk")
            .values(*fields)
        )
    flagged = []
    for row in rows:
        incident_id = row.get("incident_id")
        traces = (row["top_contributors"] or {}).get("traces") or []
        flagged.append(
            Flagged(
                pk=row["pk"],
                anomaly_type=row["anomaly_type"],
                tenant_index=ordinal[row["tenant_id"]],
                scope_type=row["scope_type"],
                project_id=row["project_id"],
                scope_id=row["scope_id"],
                day=row["period_start"].astimezone(UTC).date(),
                observed=row["observed"],
                expected=row["expected"],
                trace_ids=[trace[0] for trace in traces],
                review_key=("incident", incident_id)
                if incident_id is not None
                else ("anomaly", row["pk"]),
            )
        )
    _cause_agents_read(flagged)
    return flagged


def _cause_agents_read(rows: list[Flagged]) -> None:
    """Set each row's cause_agent from the ledger: the agent of its most
    expensive trace, which puts a user's or an epic's finding down to a
    trap agent's traces."""
    from billing.models import UsageRecord
    from billing.tenancy import tenant_context

    # Trace ids start with the tenant's slug: unique across tenants too.
    wanted = {row.trace_ids[0] for row in rows if row.trace_ids}
    with tenant_context(all_tenants=True):
        agents = {
            trace_id: (project_id, agent_id)
            for trace_id, project_id, agent_id in UsageRecord.objects.filter(
                trace_id__in=wanted
            ).values_list("trace_id", "project_id", "agent_id")
        }
    for row in rows:
        if row.trace_ids:
            row.cause_agent = agents.get(row.trace_ids[0])


def anomalies_attribute(
    rows: list[Flagged],
    labels: list[Label],
    traps: list[Trap],
    shapes: list[TenantShape],
) -> None:
    """
    Give each row its labels (true positive) or its trap (false positive). A
    row is a label's when one of its top traces is, when it is the label's
    agent, project or user that day, when the label's traces are a quarter
    of its scope's day, or when it shares an incident with a label's row.
    """
    by_trace = {
        (label.tenant_index, trace_id): label
        for label in labels
        for trace_id in label.trace_ids
    }
    for row in rows:
        # A label's traces are ones it added: they explain costs going up.
        matched = [
            by_trace.get((row.tenant_index, t))
            for t in row.trace_ids
            if row.direction == HIGH
        ]
        matched += [label for label in labels if label.covers(row)]
        # One row may be two labels' (a user's day holding both); it counts
        # once for precision and once for each label.
        row.labels = list({label.id: label for label in matched if label}.values())
    for row in rows:
        if not row.labels and row.direction == HIGH:
            row.labels = _labels_of_day(row, labels, shapes)
    # What the operator reviews as one incident with a label's rows is that
    # label's too: an epic that spiked with its agent's 20x day.
    by_incident: dict[tuple[str, int], dict[str, Label]] = {}
    for row in rows:
        if row.review_key[0] == "incident":
            by_incident.setdefault(row.review_key, {}).update(
                {label.id: label for label in row.labels}
            )
    for row in rows:
        if not row.labels:
            row.labels = list(by_incident.get(row.review_key, {}).values())
            row.via_incident = bool(row.labels)
        for label in row.labels:
            label.rows.append(row)
        if not row.labels:
            row.trap = next((trap for trap in traps if trap.matches(row)), None)


# A scope's day is a label's when at least this share of its traces are the
# label's (the spike's extra traces spread over users and epics).
LABEL_SHARE = 0.25
SCOPE_COLUMNS = {
    "project": "project_id",
    "agent": "agent_id",
    "epic": "epic_id",
    "user": "user_id",
}


def _labels_of_day(
    row: Flagged, labels: list[Label], shapes: list[TenantShape]
) -> list[Label]:
    """The labels whose traces make LABEL_SHARE of the row's scope-day."""
    from billing.models import UsageRecord
    from billing.tenancy import tenant_context

    candidates = [
        label
        for label in labels
        if label.tenant_index == row.tenant_index
        and row.day in label.days
        and label.trace_ids
    ]
    if not candidates:
        return []
    tenant_id = shapes[row.tenant_index].tenant_id
    start = datetime.combine(row.day, time.min, tzinfo=UTC)
    scope = {SCOPE_COLUMNS[row.scope_type]: row.scope_id}
    if row.project_id:
        scope["project_id"] = row.project_id
    with tenant_context([tenant_id]):
        traces = set(
            UsageRecord.objects.filter(
                tenant_id=tenant_id,
                trace_timestamp__gte=start,
                trace_timestamp__lt=start + ONE_DAY,
                **scope,
            ).values_list("trace_id", flat=True)
        )
    return [
        label
        for label in candidates
        if traces and len(traces & label.trace_ids) >= LABEL_SHARE * len(traces)
    ]


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _number(value: Decimal | float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _review_items(labels: list[Label]) -> float | None:
    detected = [label for label in labels if label.detected]
    items = sum(len({row.review_key for row in label.rows}) for label in detected)
    return _ratio(items, len(detected))


def _scores_by_type(rows: list[Flagged]) -> list[dict[str, Any]]:
    from anomalies.models import AnomalyType

    scores = []
    # Every rule the app has, also one that flagged nothing here.
    for anomaly_type in sorted({*AnomalyType.values, *(r.anomaly_type for r in rows)}):
        of_type = [row for row in rows if row.anomaly_type == anomaly_type]
        true = sum(1 for row in of_type if row.labels)
        scores.append(
            {
                "anomaly_type": anomaly_type,
                "rows": len(of_type),
                "true_positives": true,
                "false_positives": len(of_type) - true,
                "precision": _ratio(true, len(of_type)),
            }
        )
    return scores


def _scores_of_labels(labels: list[Label]) -> dict[str, Any]:
    in_target = [label for label in labels if label.in_target]
    detected = [label for label in labels if label.detected]
    return {
        "labels": len(labels),
        "in_target": len(in_target),
        "detected": len(detected),
        "recall": _ratio(len(detected), len(labels)),
        "in_target_recall": _ratio(
            sum(1 for label in in_target if label.detected), len(in_target)
        ),
        "rows_per_detected": _ratio(
            sum(len(label.rows) for label in detected), len(detected)
        ),
        "review_items_per_detected": _review_items(labels),
    }


def scores_compute(
    rows: list[Flagged], labels: list[Label], traps: list[Trap]
) -> dict[str, Any]:
    by_type = _scores_by_type(rows)
    by_kind = [
        {"kind": kind, **_scores_of_labels([x for x in labels if x.kind == kind])}
        for kind in INCIDENT_KINDS
    ]
    false_positives = [row for row in rows if not row.labels]
    causes = Counter(
        (row.false_positive_kind, row.anomaly_type) for row in false_positives
    )
    by_trap = {
        kind: {
            entry["anomaly_type"]: causes[(kind, entry["anomaly_type"])]
            for entry in by_type
        }
        for kind in (*TRAP_KINDS, BACKGROUND)
    }
    overall = {
        "rows": len(rows),
        "true_positives": len(rows) - len(false_positives),
        "true_positives_via_incident": sum(1 for row in rows if row.via_incident),
        "false_positives": len(false_positives),
        "precision": _ratio(len(rows) - len(false_positives), len(rows)),
        **_scores_of_labels(labels),
        "review_items": len({row.review_key for row in rows}),
        "traps": dict(Counter(trap.kind for trap in traps)),
    }
    return {
        "by_type": by_type,
        "by_kind": by_kind,
        "false_positives_by_trap": by_trap,
        "overall": overall,
    }


def targets_check(scores: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per target: what was measured, the bar, PASS or not."""
    checks = [
        {
            "target": f"precision {entry['anomaly_type']}",
            "value": entry["precision"],
            "bar": f">= {TARGET_PRECISION}",
            "ok": (entry["precision"] or 0) >= TARGET_PRECISION,
        }
        for entry in scores["by_type"]
        if entry["rows"]
    ]
    overall = scores["overall"]
    recall = overall["in_target_recall"]
    checks.append(
        {
            "target": "in-target recall",
            "value": recall,
            "bar": f">= {TARGET_RECALL}",
            "ok": recall is not None and recall >= TARGET_RECALL,
        }
    )
    items = overall["review_items_per_detected"]
    checks.append(
        {
            "target": "review items per detected incident",
            "value": items,
            "bar": f"<= {TARGET_REVIEW_ITEMS}",
            "ok": items is not None and items <= TARGET_REVIEW_ITEMS,
        }
    )
    return checks


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float | Decimal):
        return f"{value:.2f}"
    return str(value)


def print_table(title: str, headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers] + [[_fmt(value) for value in row] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]
    print(f"\n{title}")
    for line in cells:
        text = [
            value.ljust(width) if i == 0 else value.rjust(width)
            for i, (value, width) in enumerate(zip(line, widths, strict=True))
        ]
        print("  " + "  ".join(text).rstrip())


def _columns(entries: list[dict[str, Any]], keys: list[str]) -> list[list[Any]]:
    return [[entry[key] for key in keys] for entry in entries]


def _agents_by_key(shapes: list[TenantShape]) -> dict[tuple[int, str, str], Agent]:
    return {
        (shape.index, agent.project_id, agent.agent_id): agent
        for shape in shapes
        for agent in shape.agents
    }


def _false_positives_pick(rows: list[Flagged]) -> list[Flagged]:
    """Up to DETAIL_LINES false positives, the largest (money off expected)
    of each type in turn, so that a rule with few is shown too."""
    queues: dict[str, list[Flagged]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: abs(r.observed - r.expected), reverse=True):
        if not row.labels:
            queues[row.anomaly_type].append(row)
    chosen: list[Flagged] = []
    while len(chosen) < DETAIL_LINES and any(queues.values()):
        for anomaly_type in sorted(queues):
            if queues[anomaly_type] and len(chosen) < DETAIL_LINES:
                chosen.append(queues[anomaly_type].pop(0))
    return chosen


def _labels_near(row: Flagged, labels: list[Label]) -> list[Label]:
    """Labels of the row's tenant and day that may have moved it without
    being its own: a spike lifts the peer average its neighbours are held
    to. Agents and epics are compared within their project."""
    return [
        label
        for label in labels
        if label.tenant_index == row.tenant_index
        and row.day in label.days
        and (not row.project_id or row.project_id == label.project_id)
    ]


def false_positive_details(
    rows: list[Flagged], shapes: list[TenantShape], labels: list[Label]
) -> list[str]:
    """A line per picked false positive: what, where, and why it is put
    down where it is (with the agent's normal level for an agent, and the
    labels nearby)."""
    agents = _agents_by_key(shapes)
    lines = []
    for row in _false_positives_pick(rows):
        ratio = _ratio(float(row.observed), float(row.expected))
        if row.trap:
            why = f"trap {row.trap.kind}: {row.trap.describe()}"
            if row.trap.scope_type == "agent" and row.scope_type != "agent":
                why += " (its most expensive trace)"
        else:
            why = "background: no label or trap on this scope and day"
        agent = agents.get((row.tenant_index, row.project_id, row.scope_id))
        if row.scope_type == "agent" and agent:
            why += (
                f"; agent's median trace ${agent.median_cost:.4f}, "
                f"~{agent.volume:.0f} traces/day"
            )
        near = _labels_near(row, labels)
        if near:
            why += "; same day as " + ", ".join(
                f"{label.id} {label.kind} on {label.project_id}/{label.agent_id}"
                for label in near
            )
        lines.append(
            f"  FP {row.anomaly_type:<18} {row.scope:<30} {row.day}  observed "
            f"{row.observed:.4f} expected {row.expected:.4f} "
            f"(x{_fmt(ratio)})  <- {why}"
        )
    return lines


def missed_details(labels: list[Label]) -> list[str]:
    missed = [label for label in labels if label.in_target and not label.detected]
    return [
        f"  missed {label.id} {label.kind:<15} t{label.tenant_index} "
        f"{label.project_id}/{label.agent_id}"
        f"{' user ' + label.user_id if label.user_id else ''}  {label.days[0]}  "
        f"agent day ${label.observed:.4f} vs median ${label.baseline:.4f}  "
        f"scope_day_ratio {_fmt(label.scope_day_ratio)}  "
        f"trace_vs_p95 {_fmt(label.trace_vs_p95)}  "
        f"{len(label.trace_ids)} traces added"
        for label in missed[:DETAIL_LINES]
    ]


def report_print(
    config: dict[str, Any],
    scores: dict[str, Any],
    checks: list[dict[str, Any]],
    fp_lines: list[str],
    missed_lines: list[str],
) -> None:
    print(
        f"Anomaly detection benchmark: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"seed {config['seed']}, {config['tenants']} tenants, "
        f"{config['warmup_days']} warm-up + {config['evaluation_days']} evaluation "
        f"days ({config['first_day']}..{config['last_day']}), "
        f"{config['ledger_rows']:,} ledger rows, {scores['overall']['labels']} "
        f"labelled incidents, incident link "
        f"{'present' if config['has_incident'] else 'absent'}"
    )
    print_table(
        "Per anomaly type",
        ["type", "rows", "true pos", "false pos", "precision"],
        _columns(
            scores["by_type"],
            ["anomaly_type", "rows", "true_positives", "false_positives", "precision"],
        ),
    )
    print_table(
        "Per incident kind",
        [
            "kind",
            "labels",
            "in target",
            "detected",
            "recall",
            "in-target recall",
            "rows/incident",
            "review items/incident",
        ],
        _columns(
            scores["by_kind"],
            [
                "kind",
                "labels",
                "in_target",
                "detected",
                "recall",
                "in_target_recall",
                "rows_per_detected",
                "review_items_per_detected",
            ],
        ),
    )
    types = [entry["anomaly_type"] for entry in scores["by_type"]]
    by_trap = scores["false_positives_by_trap"]
    print_table(
        "False positives by cause",
        ["cause", "traps", "total", *types],
        [
            [
                kind,
                scores["overall"]["traps"].get(kind, "-"),
                sum(counts.values()),
                *(counts[t] for t in types),
            ]
            for kind, counts in by_trap.items()
        ],
    )
    overall = scores["overall"]
    print(
        f"\nOverall: precision {_fmt(overall['precision'])} "
        f"({overall['true_positives']} of {overall['rows']} rows, "
        f"{overall['true_positives_via_incident']} of them only through their "
        "incident), recall "
        f"{_fmt(overall['recall'])} ({overall['detected']} of {overall['labels']}), "
        f"in-target recall {_fmt(overall['in_target_recall'])} "
        f"(of {overall['in_target']}), {overall['rows']} rows, "
        f"{overall['review_items']} review items, "
        f"{_fmt(overall['review_items_per_detected'])} per detected incident"
    )
    print(
        f"Time: generate {config['generate_seconds']:.1f} s, rollup "
        f"{config['rollup_seconds']:.1f} s ({config['days']} days), detection "
        f"{config['detect_seconds']:.1f} s ({config['evaluation_days']} days), "
        f"total {config['total_seconds']:.1f} s"
    )
    print(
        f"\nTargets: precision >= {TARGET_PRECISION} per rule, in-target recall "
        f">= {TARGET_RECALL}, <= {TARGET_REVIEW_ITEMS} review items per detected "
        "incident"
    )
    for check in checks:
        print(
            f"  {check['target']:<40} {_fmt(check['value']):>6} "
            f"{check['bar']:<8} {'PASS' if check['ok'] else 'FAIL'}"
        )
    print(f"\nFalse positives (up to {DETAIL_LINES}, the largest of each type):")
    print("\n".join(fp_lines) or "  none")
    print(f"\nMissed in-target labels (up to {DETAIL_LINES}):")
    print("\n".join(missed_lines) or "  none")


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/anomalies.py",
        description="Precision and recall of anomaly detection on labelled incidents.",
    )
    parser.add_argument("--seed", type=int, default=7, help="(default: %(default)s)")
    parser.add_argument("--tenants", type=int, default=6, help="(default: %(default)s)")
    parser.add_argument(
        "--days", type=int, default=21, help="evaluation days (default: %(default)s)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    parser.add_argument(
        "--database",
        default=DATABASE,
        help="database to drop, create and fill (default: %(default)s)",
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="server to create it on (default: %(default)s)",
    )
    return parser


def setup(postgres_url: str, database: str) -> None:
    """Recreate and migrate the bench database, then set Django up on it."""
    recreate_database(postgres_url, database)
    os.environ.update(django_env(postgres_url, database))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def analyze() -> None:
    from django.db import connection

    # As autovacuum would have by the time a nightly job runs: the detection
    # reads the day's ledger, and plans for a table it thinks is empty.
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE billing_usagerecord")
        cursor.execute("ANALYZE billing_dailyscopeusage")


def days_plan(evaluation: int) -> tuple[list[date], list[date]]:
    """Every generated day, and the evaluation days (the last ones)."""
    first = EVALUATION_END - timedelta(days=evaluation + WARMUP_DAYS - 1)
    days = [first + timedelta(days=n) for n in range(WARMUP_DAYS + evaluation)]
    return days, days[WARMUP_DAYS:]


def results_write(path: str, results: dict[str, Any]) -> None:
    with open(path, "w") as handle:
        json.dump(results, handle, indent=2, default=str)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    began = monotonic()
    days, evaluation_days = days_plan(args.days)

    rng = random.Random(args.seed)
    shapes = [tenant_shape_build(rng, index) for index in range(args.tenants)]
    traps = traps_plan(rng, shapes, evaluation_days)
    labels = incidents_plan(rng, shapes, evaluation_days)

    log(f"creating and migrating {args.database}")
    setup(args.postgres_url, args.database)
    from anomalies.models import CostAnomaly

    tenants_create(shapes)
    with Timer() as generate:
        ledger_rows, costs = ledger_generate(args.seed, shapes, labels, days)
        analyze()
    log(f"{ledger_rows:,} ledger rows in {generate.seconds:.1f} s")
    for label in labels:
        label_effects(label, costs, Decimal(shapes[label.tenant_index].daily_cost))

    timings = pipeline_run(days, evaluation_days)
    rows = anomalies_read(shapes, evaluation_days)
    anomalies_attribute(rows, labels, traps, shapes)
    scores = scores_compute(rows, labels, traps)
    checks = targets_check(scores)
    config = {
        "seed": args.seed,
        "tenants": args.tenants,
        "database": args.database,
        "warmup_days": WARMUP_DAYS,
        "evaluation_days": len(evaluation_days),
        "days": len(days),
        "first_day": days[0].isoformat(),
        "last_day": days[-1].isoformat(),
        "ledger_rows": ledger_rows,
        "has_incident": hasattr(CostAnomaly, "incident"),
        "generate_seconds": generate.seconds,
        **timings,
        "total_seconds": monotonic() - began,
    }
    fp_lines = false_positive_details(rows, shapes, labels)
    missed_lines = missed_details(labels)
    report_print(config, scores, checks, fp_lines, missed_lines)
    if args.json:
        results_write(
            args.json,
            {
                "config": config,
                **scores,
                "targets": checks,
                "labels": [label.as_dict() for label in labels],
                "traps": [
                    {"kind": t.kind, "tenant": t.tenant_index, "scope": t.describe()}
                    for t in traps
                ],
                "false_positive_details": [line.strip() for line in fp_lines],
                "missed_details": [line.strip() for line in missed_lines],
            },
        )
    return 0 if all(check["ok"] for check in checks) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
