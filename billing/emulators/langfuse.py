"""
An HTTP emulator of the Langfuse public API endpoints the billing app reads.

Langfuse cannot be reached from the build machines, so tests and benchmarks
run the real ``langfuse`` client against this emulator over real HTTP. It
follows the generated client in ``langfuse.api`` (which mirrors Langfuse's
OpenAPI spec) for paths, parameters, field names and status codes:

- ``GET /api/public/health`` (no authentication, like Langfuse);
- ``GET /api/public/v2/observations`` with field groups, keyset cursors, the
  documented query-parameter filters and Basic authentication with the
  project's public key as username and secret key as password.

Two deliberate differences from Langfuse, both stricter than the real server:
an unknown field group and ``limit=0`` are rejected with a 400 (Langfuse drops
the unknown group and accepts zero), so typos in our client fail loudly.

Observations are served newest first, as Langfuse serves them (``startTime``
descending; the emulator breaks ties by id, also descending), so the cursor
pages backwards in time. ``newest_first=False`` serves them oldest first.

Stored usage is completed as Langfuse's ingestion completes it: a ``total``
(the sum) where the usage has none and, for an observation sent with usage
but no cost, Langfuse's own cost from its model prices (``langfuse_cost``).

Faults (``Faults``) are rolled per request after authentication and the
per-key rate limit; the health check, which needs no credentials, rolls them
before anything else. ``key_faults`` maps a public key to the ``Faults`` used
instead of the global ``faults`` for that key's requests (the health check
goes by the public key in its Authorization header, if any), so that one
tenant's Langfuse can fail while another's stays healthy.

``Faults.rate_malformed`` corrupts that fraction of the items of each page,
one way per item (``MALFORMED_KINDS``), always in a shape langfuse's pydantic
model still parses so that the page as a whole survives:

- ``missing_trace_id``: traceId is null;
- ``end_before_start``: endTime 90 minutes before startTime;
- ``negative_tokens``: a usageDetails count is negative;
- ``negative_cost``: totalCost and costDetails.total are negative;
- ``usage_total_mismatch``: usageDetails.total is not the sum of the others;
- ``model_without_cost``: model null, costDetails empty, totalCost null,
  usage kept;
- ``metadata_not_string``: metadata.project_id is a number.

Nothing in a corrupted item marks it; ``stats.malformed`` maps the ids served
corrupted to their kind.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import functools
import hashlib
import hmac
import json
import marshal
import re
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

from billing.emulators.base import (
    RESET,
    Faults,
    MinuteRateLimiter,
    Request,
    Response,
    apply_common_faults,
)

HEALTH_PATH = "/api/public/health"
OBSERVATIONS_PATH = "/api/public/v2/observations"
EMULATOR_VERSION = "3.x-emulator"

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
METADATA_TRUNCATE_CHARS = 200

# Field groups exactly as documented for ObservationsClient.get_many; `core`
# is always returned, `basic` only by default.
FIELD_GROUPS: dict[str, tuple[str, ...]] = {
    "core": (
        "id",
        "traceId",
        "startTime",
        "endTime",
        "projectId",
        "parentObservationId",
        "type",
    ),
    "basic": (
        "name",
        "level",
        "statusMessage",
        "version",
        "environment",
        "bookmarked",
        "public",
        "userId",
        "sessionId",
        "isRootObservation",
    ),
    "time": ("completionStartTime", "createdAt", "updatedAt"),
    "io": ("input", "output"),
    "metadata": ("metadata",),
    "model": ("model", "internalModelId", "modelParameters"),
    "usage": ("usageDetails", "costDetails", "totalCost", "usagePricingTierName"),
    "prompt": ("promptId", "promptName", "promptVersion"),
    "metrics": ("latency", "timeToFirstToken"),
    "trace_context": ("tags", "release", "traceName"),
}
DEFAULT_FIELD_GROUPS = ("core", "basic")
OBSERVATION_LEVELS = frozenset({"DEBUG", "DEFAULT", "WARNING", "ERROR"})

# The corruptions `Faults.rate_malformed` applies to items of a page. Each one
# still parses as langfuse's ObservationV2 (usageDetails is Dict[str, int],
# costDetails Dict[str, float], metadata Dict[str, Any], level an enum, so
# wrong *types* there would fail the whole page, which Langfuse never does),
# but billing code must reject it. A kind is only used when the field groups
# it touches were requested.
MALFORMED_KINDS: dict[str, str] = {
    "missing_trace_id": "traceId is null",
    "end_before_start": "endTime lies before startTime",
    "negative_tokens": "a usageDetails count is negative",
    "negative_cost": "totalCost and costDetails.total are negative",
    "usage_total_mismatch": "usageDetails.total disagrees with the other counts",
    "model_without_cost": "model is null and the usage carries no cost",
    "metadata_not_string": "metadata.project_id is a number, not a string",
}

# Fields kept outside the compact blob: the sort key, and what the cheap
# filters and the trace index read.
_ROW_FIELDS = frozenset({"id", "startTime", "traceId", "userId", "type"})
_STORED_FIELDS: tuple[str, ...] = tuple(
    name
    for group in FIELD_GROUPS.values()
    for name in group
    if name not in _ROW_FIELDS and name != "projectId"
)
_ACCEPTED_FIELDS = frozenset(_STORED_FIELDS) | _ROW_FIELDS | {"projectId"}
_TIME_FIELDS = ("endTime", "completionStartTime", "createdAt", "updatedAt")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# The models the emulated Langfuse prices: those of the app's price data,
# which are Langfuse's default model prices (standard tier) plus the few we
# added, as a Langfuse project that defined those itself would price them.
MODEL_PRICES_FILE = Path(__file__).resolve().parent.parent / "model_prices.json"
_COST_QUANTUM = Decimal("1e-12")  # Langfuse stores costs as Decimal64(12)


@functools.cache
def _model_prices() -> tuple[tuple[re.Pattern[str], Mapping[str, Decimal]], ...]:
    entries = json.loads(MODEL_PRICES_FILE.read_text())
    return tuple(
        (
            re.compile(entry["matchPattern"]),
            MappingProxyType(
                {key: Decimal(str(price)) for key, price in entry["prices"].items()}
            ),
        )
        for entry in entries
    )


@functools.lru_cache(maxsize=1024)
def langfuse_model_prices(model: str | None) -> Mapping[str, Decimal] | None:
    """The prices, USD per usage unit, the emulated Langfuse has for ``model``."""
    for pattern, prices in _model_prices():
        if model and pattern.search(model):
            return prices
    return None


def langfuse_cost(
    model: str | None, usage: Mapping[str, int]
) -> dict[str, Decimal] | None:
    """
    Langfuse's costDetails for ``usage`` of ``model``, as its ingestion
    computes them when none were sent (IngestionService.calculateUsageCosts):
    ``usage`` gets its ``total`` (the sum) if it has none, every key with a
    price of the model costs count * price, and ``total``, the totalCost, is
    the cost of the ``total`` key where the model prices it, else the sum.
    None when Langfuse prices neither the model nor any key of ``usage``.
    """
    prices = langfuse_model_prices(model)
    if prices is None:
        return None
    if "total" not in usage:
        usage = {**usage, "total": sum(usage.values())}
    details = {
        key: (count * prices[key]).quantize(_COST_QUANTUM)
        for key, count in usage.items()
        if key in prices
    }
    if not details:
        return None
    details.setdefault("total", sum(details.values(), Decimal(0)))
    return details


def _add_langfuse_cost(values: dict[str, Any]) -> None:
    """Complete stored usage as Langfuse does: its total, and the cost if none."""
    usage = values["usageDetails"]
    if not usage or not all(
        isinstance(count, int) and count >= 0 for count in usage.values()
    ):
        return  # nothing to complete, or corrupt on purpose: stored as given
    if "total" not in usage:
        usage = values["usageDetails"] = {**usage, "total": sum(usage.values())}
    if values["costDetails"] or values["totalCost"] is not None:
        return  # a cost sent with the observation is authoritative
    details = langfuse_cost(values["model"], usage)
    if details is not None:
        values["costDetails"] = {key: float(cost) for key, cost in details.items()}
        values["totalCost"] = values["costDetails"]["total"]


class _BadRequest(Exception):
    pass


def parse_timestamp(value: str | datetime) -> datetime:
    """
    Parse an ISO 8601 timestamp (or pass a datetime through) as aware UTC.

    A naive value is taken to be UTC, as Langfuse does.
    """
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def to_micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def format_timestamp(micros: int) -> str:
    """Format like Langfuse: ISO 8601, millisecond precision, trailing Z."""
    seconds, fraction = divmod(micros, 1_000_000)
    return f"{_format_second(seconds)}.{fraction // 1000:03d}Z"


@functools.lru_cache(maxsize=8192)
def _format_second(seconds: int) -> str:
    # Formatting dominates bulk loads; the observations of a trace share
    # their seconds, so a small cache saves most of it.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def _normalize_timestamp(value: str | datetime) -> tuple[str, int]:
    """Return the Langfuse formatting of a timestamp and its epoch micros."""
    if isinstance(value, str) and len(value) == 24 and value[19::4] == ".Z":
        # Already formatted like Langfuse (as the scenario writes it): skip the
        # full parse, which dominates bulk loads.
        try:
            return value, _second_micros(value[:19]) + int(value[20:23]) * 1000
        except ValueError:
            pass  # not a timestamp after all; the full parse says why
    micros = to_micros(parse_timestamp(value))
    return format_timestamp(micros), micros


@functools.lru_cache(maxsize=8192)
def _second_micros(text: str) -> int:
    return to_micros(datetime.fromisoformat(text).replace(tzinfo=UTC))


def encode_cursor(start_micros: int, trace_id: str | None, observation_id: str) -> str:
    """
    Encode a page position the way Langfuse does (base64 of a JSON object).

    The position is the last item's sort key, not an offset, so inserts before
    or after it do not shift the next page. Microseconds are kept so that a
    sub-millisecond start time cannot land on the wrong side of the cursor.
    """
    moment = _EPOCH + timedelta(microseconds=start_micros)
    payload = {
        "lastStartTimeTo": moment.isoformat(timespec="microseconds").replace(
            "+00:00", "Z"
        ),
        "lastTraceId": trace_id or "",
        "lastId": observation_id,
    }
    return base64.b64encode(json.dumps(payload).encode()).decode()


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Return the (start micros, id) sort key a cursor points after."""
    # Lenient like Langfuse's decoder: a "+" that arrived unquoted reads as a
    # space, and URL-safe base64 is as good as the standard alphabet.
    cursor = cursor.strip().replace(" ", "+").replace("-", "+").replace("_", "/")
    try:
        payload = json.loads(base64.b64decode(cursor, validate=True))
        key = (
            to_micros(parse_timestamp(payload["lastStartTimeTo"])),
            payload["lastId"],
        )
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise _BadRequest("Invalid cursor format") from exc
    if not isinstance(key[1], str):
        raise _BadRequest("Invalid cursor format")
    return key


class _Row:
    """
    One stored observation.

    All but the sort key and the cheaply filtered fields sit in a marshalled
    list of values: a third of the memory of a dict, and fast to load.
    """

    __slots__ = ("blob", "key", "trace_id", "type", "user_id", "visible_at")

    def __init__(
        self,
        key: tuple[int, str],
        trace_id: str | None,
        user_id: str | None,
        type_: str,
        visible_at: float | None,
        blob: bytes,
    ) -> None:
        self.key = key
        self.trace_id = trace_id
        self.user_id = user_id
        self.type = type_
        self.visible_at = visible_at
        self.blob = blob

    def decode(self) -> dict[str, Any]:
        values = marshal.loads(self.blob)  # noqa: S302 - bytes we made ourselves
        return dict(zip(_STORED_FIELDS, values, strict=True))


class _Project:
    """One Langfuse project: its credentials and its observations."""

    def __init__(self, project_id: str, public_key: str, secret_key: str) -> None:
        self.id = project_id
        self.public_key = public_key
        self.secret_key = secret_key
        self.rows: dict[str, _Row] = {}
        # Sorted by (start micros, id) once `dirty` is false; a bulk load
        # appends and sorts once on the next read instead of per insert.
        self.keys: list[tuple[int, str]] = []
        self.dirty = False
        self.by_trace: dict[str, list[str]] = {}

    def put(self, row: _Row) -> _Row | None:
        observation_id = row.key[1]
        old = self.rows.get(observation_id)
        self.rows[observation_id] = row
        if old is not None and old.key != row.key:
            self._remove_key(old.key)
        if old is None or old.key != row.key:
            if not self.dirty and self.keys and row.key < self.keys[-1]:
                self.dirty = True
            self.keys.append(row.key)
        if old is not None and old.trace_id != row.trace_id and old.trace_id:
            self.by_trace[old.trace_id].remove(observation_id)
        if row.trace_id and (old is None or old.trace_id != row.trace_id):
            self.by_trace.setdefault(row.trace_id, []).append(observation_id)
        return old

    def _remove_key(self, key: tuple[int, str]) -> None:
        # Only an upsert that moves startTime gets here, which is rare.
        if self.dirty:
            self.keys.remove(key)
            return
        index = bisect.bisect_left(self.keys, key)
        del self.keys[index]

    def sorted_keys(self) -> list[tuple[int, str]]:
        if self.dirty:
            self.keys.sort()
            self.dirty = False
        return self.keys


@dataclass
class _Query:
    groups: tuple[str, ...]
    limit: int
    cursor: tuple[int, str] | None
    from_micros: int | None
    to_micros: int | None
    # traceId, or the traceIds of a structured "any of" filter.
    trace_ids: frozenset[str] | None
    user_id: str | None
    type: str | None
    # Filters that need the decoded blob: field name -> accepted values.
    blob_filters: dict[str, frozenset[Any]]
    expand_metadata: frozenset[str]


class LangfuseEmulatorStats:
    """Thread-safe request counters for tests and benchmarks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.by_path: Counter[str] = Counter()
            self.by_status: Counter[int] = Counter()
            self.rate_limited = 0
            self.connection_resets = 0
            # Observation id -> MALFORMED_KINDS key, for every corrupted item
            # served; the item itself carries no such marker.
            self.malformed: dict[str, str] = {}

    def record(self, path: str, response: Response | type[RESET]) -> None:
        with self._lock:
            self.by_path[path] += 1
            if response is RESET:
                self.connection_resets += 1
                return
            assert isinstance(response, Response)
            self.by_status[response.status] += 1
            if response.status == 429:
                self.rate_limited += 1

    def record_malformed(self, observation_id: str, kind: str) -> None:
        with self._lock:
            self.malformed[observation_id] = kind

    @property
    def requests(self) -> int:
        with self._lock:
            return sum(self.by_path.values())

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": sum(self.by_path.values()),
                "by_path": dict(self.by_path),
                "by_status": dict(self.by_status),
                "rate_limited": self.rate_limited,
                "connection_resets": self.connection_resets,
                "malformed": dict(self.malformed),
            }


class LangfuseEmulator:
    """
    The Langfuse public API for any number of projects, in memory.

    ``faults``, ``key_faults`` and ``rate_limiter`` are public so that a test
    can swap them between runs; ``clock`` (epoch seconds) drives the rate-limit
    windows and the visibility of late observations and can be replaced the
    same way. ``key_faults`` (public key -> ``Faults``) overrides ``faults``
    for the requests made with that key, every kind of fault included.
    """

    def __init__(
        self,
        *,
        rate_limit_per_minute: int | None = None,
        faults: Faults | None = None,
        clock: Callable[[], float] = time.time,
        newest_first: bool = True,
    ) -> None:
        self.clock = clock
        self.faults = faults or Faults()
        self.key_faults: dict[str, Faults] = {}
        # Through a lambda so that replacing `self.clock` moves the windows too.
        self.rate_limiter = MinuteRateLimiter(
            rate_limit_per_minute, clock=lambda: self.clock()
        )
        self.newest_first = newest_first
        self.stats = LangfuseEmulatorStats()
        self._projects: dict[str, _Project] = {}  # by public key
        self._lock = threading.RLock()
        self._routes: dict[str, dict[str, Callable[..., Response]]] = {
            HEALTH_PATH: {"GET": self._health},
            OBSERVATIONS_PATH: {"GET": self._observations},
        }

    # Set-up ---------------------------------------------------------------

    def add_project(
        self, *, public_key: str, secret_key: str, project_id: str | None = None
    ) -> str:
        """Register a project and its API key pair; return the project id."""
        if project_id is None:
            digest = hashlib.sha256(public_key.encode()).hexdigest()
            project_id = f"cl{digest[:23]}"
        with self._lock:
            existing = self._projects.get(public_key)
            if existing is not None:
                if existing.secret_key != secret_key or existing.id != project_id:
                    raise ValueError("That public key is already registered.")
                return existing.id
            self._projects[public_key] = _Project(project_id, public_key, secret_key)
        return project_id

    def add_observations(
        self,
        public_key: str,
        observations: Iterable[dict[str, Any]],
        *,
        visible_at: float | None = None,
    ) -> None:
        """
        Store observations given in the API's camelCase shape.

        An observation whose id is already stored replaces it, as Langfuse
        upserts by id (e.g. when a span ends); its createdAt is kept. With
        ``visible_at`` (epoch seconds on the emulator clock) the observations
        stay hidden from reads until then, like ones ingested late.
        """
        with self._lock:
            project = self._project(public_key)
            now_iso = format_timestamp(int(self.clock() * 1_000_000))
            for observation in observations:
                row = self._to_row(observation, visible_at, now_iso)
                old = project.put(row)
                if old is not None and "createdAt" not in observation:
                    self._keep_created_at(project, row, old)

    def observation_count(self, public_key: str) -> int:
        """Count the stored observations, hidden ones included."""
        with self._lock:
            return len(self._project(public_key).rows)

    def faults_for(self, public_key: str | None) -> Faults:
        """Return the faults that apply to a request made with ``public_key``."""
        if public_key is not None:
            faults = self.key_faults.get(public_key)
            if faults is not None:
                return faults
        return self.faults

    def _project(self, public_key: str) -> _Project:
        try:
            return self._projects[public_key]
        except KeyError:
            raise ValueError("No project is registered for that public key.") from None

    @staticmethod
    def _keep_created_at(project: _Project, row: _Row, old: _Row) -> None:
        index = _STORED_FIELDS.index("createdAt")
        values = marshal.loads(row.blob)  # noqa: S302 - bytes we made ourselves
        values[index] = marshal.loads(old.blob)[index]  # noqa: S302
        row.blob = marshal.dumps(values)

    @staticmethod
    def _to_row(
        observation: dict[str, Any], visible_at: float | None, now_iso: str
    ) -> _Row:
        unknown = observation.keys() - _ACCEPTED_FIELDS
        if unknown:
            raise ValueError(f"Unknown observation fields: {sorted(unknown)}")
        try:
            observation_id = observation["id"]
            start = observation["startTime"]
        except KeyError as exc:
            raise ValueError(f"An observation needs {exc.args[0]!r}.") from exc
        _, start_micros = _normalize_timestamp(start)
        values = {name: observation.get(name) for name in _STORED_FIELDS}
        micros: dict[str, int] = {}
        for name in _TIME_FIELDS:
            if values[name] is not None:
                values[name], micros[name] = _normalize_timestamp(values[name])
        for name in ("input", "output"):
            # The v2 endpoint always returns input and output as raw strings.
            if values[name] is not None and not isinstance(values[name], str):
                values[name] = json.dumps(values[name])
        parent = values["parentObservationId"]
        defaults = {
            "level": "DEFAULT",
            "environment": "default",
            "bookmarked": False,
            "public": False,
            "isRootObservation": parent is None,
            "usageDetails": {},
            "costDetails": {},
            "tags": [],
            "createdAt": now_iso,
            "updatedAt": now_iso,
        }
        for name, default in defaults.items():
            if values[name] is None:
                values[name] = default
        _add_langfuse_cost(values)
        # Langfuse derives the metrics group from the timestamps.
        if values["latency"] is None and "endTime" in micros:
            seconds = (micros["endTime"] - start_micros) / 1_000_000
            values["latency"] = round(seconds, 3)
        if values["timeToFirstToken"] is None and "completionStartTime" in micros:
            seconds = (micros["completionStartTime"] - start_micros) / 1_000_000
            values["timeToFirstToken"] = round(seconds, 3)
        user_id = observation.get("userId")
        return _Row(
            key=(start_micros, observation_id),
            trace_id=observation.get("traceId"),
            # Interned: a few hundred users and types repeat over 100k rows.
            user_id=sys.intern(user_id) if user_id else None,
            type_=sys.intern(observation.get("type") or "SPAN"),
            visible_at=visible_at,
            blob=marshal.dumps([values[name] for name in _STORED_FIELDS]),
        )

    # HTTP -----------------------------------------------------------------

    def handle(self, request: Request) -> Response | type[RESET]:
        response = self._respond(request)
        self.stats.record(request.path, response)
        return response

    def _respond(self, request: Request) -> Response | type[RESET]:
        path = request.path.rstrip("/") or "/"
        methods = self._routes.get(path)
        if methods is None:
            return _error(404, f"Not found: {path}")
        handler = methods.get(request.method)
        if handler is None:
            response = _error(405, f"Method {request.method} not allowed")
            response.headers["Allow"] = ", ".join(methods)
            return response
        if path == HEALTH_PATH:
            # Unauthenticated, but the client sends its key pair anyway: a
            # tenant whose Langfuse is down should see its health check fail.
            credentials = _basic_credentials(request)
            faults = self.faults_for(credentials[0] if credentials else None)
            return apply_common_faults(faults) or handler(request)

        project = self._authenticate(request)
        if project is None:
            return _error(
                401,
                "Invalid credentials. Confirm that you've configured the correct "
                "public key, secret key and host.",
            )
        allowed, remaining, reset_in = self.rate_limiter.hit(project.public_key)
        headers: dict[str, str] = {}
        if self.rate_limiter.per_minute is not None:
            headers = {
                "X-RateLimit-Limit": str(self.rate_limiter.per_minute),
                "X-RateLimit-Remaining": str(remaining),
                # Epoch seconds, which is how the generated client reads it.
                "X-RateLimit-Reset": str(int(self.clock()) + reset_in),
            }
        if not allowed:
            return _error(
                429, "Rate limit exceeded", {**headers, "Retry-After": str(reset_in)}
            )
        # Looked up once, so that a test swapping key_faults mid-request
        # cannot mix two configurations within one response.
        faults = self.faults_for(project.public_key)
        fault = apply_common_faults(faults)
        if fault is RESET:
            return RESET
        if isinstance(fault, Response):
            fault.headers.update(headers)
            return fault
        if faults.roll(faults.rate_429):
            retry_after = {"Retry-After": str(faults.retry_after)}
            return _error(429, "Rate limit exceeded", {**headers, **retry_after})
        try:
            response = handler(request, project, faults)
        except _BadRequest as exc:
            response = _error(400, str(exc))
        response.headers.update(headers)
        return response

    def _authenticate(self, request: Request) -> _Project | None:
        credentials = _basic_credentials(request)
        if credentials is None:
            return None
        public_key, secret_key = credentials
        with self._lock:
            project = self._projects.get(public_key)
        if project is None or not hmac.compare_digest(
            project.secret_key.encode(), secret_key.encode()
        ):
            return None
        return project

    def _health(self, request: Request) -> Response:
        return Response(200, {"status": "OK", "version": EMULATOR_VERSION})

    def _observations(
        self, request: Request, project: _Project, faults: Faults
    ) -> Response:
        query = self._parse_query(request)
        with self._lock:
            rows = list(self._select(project, query))
        has_more = len(rows) > query.limit
        rows = rows[: query.limit]
        data = [
            self._render(project, row, decoded, query, faults) for row, decoded in rows
        ]
        meta: dict[str, str] = {}
        if has_more and rows:
            last = rows[-1][0]
            meta["cursor"] = encode_cursor(last.key[0], last.trace_id, last.key[1])
        return Response(
            200, {"data": data, "meta": meta}, cut=faults.roll(faults.rate_cut_body)
        )

    def _select(
        self, project: _Project, query: _Query
    ) -> Iterator[tuple[_Row, dict[str, Any] | None]]:
        """Yield up to limit + 1 matching rows in page order."""
        if query.trace_ids is not None:
            keys = sorted(
                project.rows[observation_id].key
                for trace_id in query.trace_ids
                for observation_id in project.by_trace.get(trace_id, ())
            )
        else:
            keys = project.sorted_keys()
        low, high = 0, len(keys)
        if query.from_micros is not None:
            low = bisect.bisect_left(keys, (query.from_micros, ""))
        if query.to_micros is not None:
            high = bisect.bisect_left(keys, (query.to_micros, ""))
        if query.cursor is not None:
            if self.newest_first:
                high = min(high, bisect.bisect_left(keys, query.cursor))
            else:
                low = max(low, bisect.bisect_right(keys, query.cursor))
        indexes = (
            range(high - 1, low - 1, -1) if self.newest_first else range(low, high)
        )
        now = self.clock()
        found = 0
        for index in indexes:
            row = project.rows[keys[index][1]]
            if row.visible_at is not None and row.visible_at > now:
                continue
            if query.user_id is not None and row.user_id != query.user_id:
                continue
            if query.type is not None and row.type != query.type:
                continue
            decoded = None
            if query.blob_filters:
                decoded = row.decode()
                if any(
                    decoded[name] not in accepted
                    for name, accepted in query.blob_filters.items()
                ):
                    continue
            yield row, decoded
            found += 1
            if found > query.limit:
                return

    def _parse_query(self, request: Request) -> _Query:
        value = request.query_value

        fields = value("fields")
        groups = list(DEFAULT_FIELD_GROUPS)
        if fields:
            requested = [group.strip() for group in fields.split(",") if group.strip()]
            unknown = [group for group in requested if group not in FIELD_GROUPS]
            if unknown:
                raise _BadRequest(
                    f"Unknown field group(s) {', '.join(unknown)}; expected any of "
                    f"{', '.join(FIELD_GROUPS)}."
                )
            groups = ["core", *(group for group in requested if group != "core")]

        raw_limit = value("limit")
        limit = DEFAULT_LIMIT
        if raw_limit is not None:
            try:
                limit = int(raw_limit)
            except ValueError:
                raise _BadRequest(
                    f"limit must be an integer between 1 and {MAX_LIMIT}."
                ) from None
            if not 1 <= limit <= MAX_LIMIT:
                raise _BadRequest(f"limit must be between 1 and {MAX_LIMIT}.")

        parse_io = value("parseIoAsJson")
        if parse_io == "true":
            raise _BadRequest(
                "parseIoAsJson=true is no longer supported on the v2 observations "
                "endpoint. Input/output fields are always returned as raw strings. "
                "Remove the parseIoAsJson parameter or set it to false."
            )
        if parse_io not in (None, "false"):
            raise _BadRequest("parseIoAsJson must be true or false.")

        cursor = value("cursor")
        blob_filters: dict[str, frozenset[Any]] = {}
        for param in ("name", "sessionId", "version"):
            if value(param) is not None:
                blob_filters[param] = frozenset({value(param)})
        level = value("level")
        if level is not None:
            if level not in OBSERVATION_LEVELS:
                raise _BadRequest(f"level must be one of {sorted(OBSERVATION_LEVELS)}.")
            blob_filters["level"] = frozenset({level})
        environments = request.query.get("environment")
        if environments:
            blob_filters["environment"] = frozenset(environments)
        parent = value("parentObservationId")
        if parent is not None:
            # An empty value asks for observations without a physical parent.
            blob_filters["parentObservationId"] = frozenset({parent or None})
        is_root = value("isRootObservation")
        if is_root is not None:
            if is_root not in ("true", "false"):
                raise _BadRequest("isRootObservation must be true or false.")
            blob_filters["isRootObservation"] = frozenset({is_root == "true"})

        expand = value("expandMetadata") or ""
        trace_id = value("traceId")
        from_micros = self._parse_time_param(value("fromStartTime"), "fromStartTime")
        to_micros = self._parse_time_param(value("toStartTime"), "toStartTime")
        if value("filter"):
            # The structured filter takes precedence over the query parameters.
            trace_ids, from_micros, to_micros = _parse_filter(value("filter"))
        else:
            trace_ids = None if trace_id is None else frozenset({trace_id})
        return _Query(
            groups=tuple(groups),
            limit=limit,
            cursor=decode_cursor(cursor) if cursor else None,
            from_micros=from_micros,
            to_micros=to_micros,
            trace_ids=trace_ids,
            user_id=value("userId"),
            type=value("type"),
            blob_filters=blob_filters,
            expand_metadata=frozenset(k.strip() for k in expand.split(",") if k),
        )

    @staticmethod
    def _parse_time_param(raw: str | None, name: str) -> int | None:
        if raw is None:
            return None
        try:
            return to_micros(parse_timestamp(raw))
        except ValueError:
            raise _BadRequest(f"{name} must be an ISO 8601 datetime.") from None

    def _render(
        self,
        project: _Project,
        row: _Row,
        decoded: dict[str, Any] | None,
        query: _Query,
        faults: Faults,
    ) -> dict[str, Any]:
        stored = decoded if decoded is not None else row.decode()
        stored["id"] = row.key[1]
        stored["traceId"] = row.trace_id
        stored["startTime"] = format_timestamp(row.key[0])
        stored["projectId"] = project.id
        stored["userId"] = row.user_id
        stored["type"] = row.type
        item = {
            name: stored[name] for group in query.groups for name in FIELD_GROUPS[group]
        }
        metadata = item.get("metadata")
        # Stored as given: a test may store what the schema does not allow.
        if metadata and isinstance(metadata, dict):
            item["metadata"] = {
                key: _truncate(value) if key not in query.expand_metadata else value
                for key, value in metadata.items()
            }
        if faults.roll(faults.rate_malformed):
            kind = _corrupt(item, stored, query.groups)
            if kind is not None:
                self.stats.record_malformed(row.key[1], kind)
        return item


def _parse_filter(
    raw: str,
) -> tuple[frozenset[str] | None, int | None, int | None]:
    """
    The part of Langfuse's structured ``filter`` the billing app uses:
    ``traceId`` "any of" (stringOptions) and ``startTime`` bounds (datetime).
    Anything else is a 400, so that a query we do not emulate fails loudly.
    """
    try:
        conditions = json.loads(raw)
    except ValueError:
        raise _BadRequest("filter must be a JSON array of filter conditions.") from None
    if not isinstance(conditions, list):
        raise _BadRequest("filter must be a JSON array of filter conditions.")
    trace_ids, low, high = None, None, None
    for condition in conditions:
        if not isinstance(condition, dict):
            raise _BadRequest("Each filter condition must be an object.")
        kind, column = condition.get("type"), condition.get("column")
        operator, value = condition.get("operator"), condition.get("value")
        if (kind, column, operator) == ("stringOptions", "traceId", "any of"):
            if not isinstance(value, list) or not all(
                isinstance(v, str) for v in value
            ):
                raise _BadRequest("stringOptions value must be a list of strings.")
            trace_ids = frozenset(value) & (trace_ids or frozenset(value))
        elif (kind, column) == ("datetime", "startTime") and operator in (">=", "<"):
            try:
                micros = to_micros(parse_timestamp(value))
            except (TypeError, ValueError):
                raise _BadRequest("datetime value must be ISO 8601.") from None
            if operator == ">=":
                low = micros if low is None else max(low, micros)
            else:
                high = micros if high is None else min(high, micros)
        else:
            raise _BadRequest(
                f"Filter {kind} {column} {operator!r} is not supported by the emulator."
            )
    return trace_ids, low, high


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    """Return the (public key, secret key) of a Basic Authorization header."""
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    public_key, separator, secret_key = decoded.partition(":")
    if not separator:
        return None
    return public_key, secret_key


def _truncate(value: Any) -> Any:
    if isinstance(value, str) and len(value) > METADATA_TRUNCATE_CHARS:
        return value[:METADATA_TRUNCATE_CHARS]
    return value


def _corrupt(
    item: dict[str, Any], stored: dict[str, Any], groups: tuple[str, ...]
) -> str | None:
    """Apply one MALFORMED_KINDS corruption that the item's groups can show."""
    usage = stored["usageDetails"] or {}
    kinds = ["missing_trace_id", "end_before_start"]
    if "usage" in groups:
        kinds += ["negative_tokens", "negative_cost"]
        if usage:
            kinds.append("usage_total_mismatch")
    if "model" in groups and usage:
        kinds.append("model_without_cost")
    if "metadata" in groups:
        kinds.append("metadata_not_string")
    # Keyed by the id so that a rerun corrupts an item the same way.
    kind = kinds[zlib.crc32(item["id"].encode()) % len(kinds)]
    if kind == "missing_trace_id":
        item["traceId"] = None
    elif kind == "end_before_start":
        start = to_micros(parse_timestamp(item["startTime"]))
        item["endTime"] = format_timestamp(start - 90 * 60 * 1_000_000)
    elif kind == "negative_tokens":
        details = dict(usage) or {"input": 0}
        name = "output" if "output" in details else next(iter(details))
        details[name] = -max(1, details[name])
        item["usageDetails"] = details
    elif kind == "negative_cost":
        total = -abs(stored["totalCost"] or 0.0123)
        item["totalCost"] = total
        item["costDetails"] = {**(stored["costDetails"] or {}), "total": total}
    elif kind == "usage_total_mismatch":
        parts = sum(count for name, count in usage.items() if name != "total")
        item["usageDetails"] = {**usage, "total": parts * 3 + 1000}
    elif kind == "model_without_cost":
        item["model"] = None
        item["internalModelId"] = None
        if "usage" in groups:
            item["costDetails"] = {}
            item["totalCost"] = None
    elif kind == "metadata_not_string":
        item["metadata"] = {**(item["metadata"] or {}), "project_id": 40417}
    return kind


def _error(
    status: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    return Response(status, {"message": message}, dict(headers or {}))
