"""
An HTTP emulator of the Stripe endpoints the billing app uses.

Stripe cannot be reached from CI, and localstripe has no billing meters, so
the contract tests and benchmarks drive the real ``stripe`` library against
this emulator over HTTP. It follows Stripe's OpenAPI spec (``spec3.json``) and
the way stripe-python interprets responses (``stripe/_api_requestor.py`` and
``stripe/_http_client.py``):

* errors are ``{"error": {"type", "message", "code"?, "param"?, "doc_url"?}}``;
  400/404 become ``InvalidRequestError`` (or ``IdempotencyError`` when the type
  is ``idempotency_error``), 401 ``AuthenticationError``, 429
  ``RateLimitError`` and anything else ``APIError``;
* stripe-python retries (when ``max_network_retries`` > 0) connection errors,
  409s, 5xx and any response carrying ``Stripe-Should-Retry: true``. Like real
  Stripe, a rate-limit 429 carries no such header, so the library does *not*
  retry it; a ``lock_timeout`` 429 does, so the library retries that one.

Where the emulator is deliberately stricter or simpler than Stripe:

* Meter events are validated synchronously and rejected with a 400 whose
  ``code`` is the one Stripe uses in its asynchronous
  ``billing.meter.error_report_triggered`` reports (``no_meter``,
  ``archived_meter``, ``meter_event_no_customer_defined``,
  ``meter_event_customer_not_found``, ``meter_event_value_not_found``,
  ``meter_event_invalid_value``, ``timestamp_too_far_in_past``,
  ``timestamp_in_future``). Real Stripe accepts many such events and reports
  them later; ``validation="async"`` reproduces that: the event is answered
  with a 200 but not counted, and the failure is kept in ``error_reports()``.
* ``identifier`` uniqueness: Stripe enforces it over a rolling window of at
  least 24 hours; the emulator keeps every identifier forever. A duplicate is
  a 400 whose shape ``duplicate_error`` picks: ``resource_already_exists``
  with param ``identifier`` (the default), ``duplicate_meter_event`` (the
  code Stripe's OpenAPI spec gives the refusal in its v2 error schemas) or
  ``message_only`` (no code, "An event already exists with identifier ...",
  as the v1 endpoint has been seen to answer). A client must read all three
  as "already recorded".
* Event values must be whole numbers (``-?[0-9]+``); negative values are
  accepted because Stripe documents them as the way to correct usage.
* Timestamps must be at most 35 * 86400 seconds old and at most 300 seconds
  in the future, measured against the emulator's clock.
* Event summaries are consistent immediately (Stripe aggregates
  asynchronously). ``start_time``/``end_time`` must be multiples of 60, of
  3600 with ``value_grouping_window=hour`` and of 86400 with ``day``. Without
  a window exactly one summary is returned (0 when no events); with a window
  only the windows holding events are returned. Summaries are listed newest
  first, like every Stripe list.
* Idempotency keys live 24 hours. Like Stripe, the first result of a key is
  saved once the endpoint has run, 500s included, and replayed for every
  later request with that key: a 2xx, or the 500 of the ``500_after_commit``
  fault (the event is recorded, then the API fails). Stripe saves no result
  for requests that failed validation (4xx here), and the other injected
  429/5xx/resets stand for infrastructure failures that never reached the
  API, so nothing is saved for them either.
* Answers lost after the API ran (``fail_next(..., after_processing=True)``
  and the ``cut_body`` fault, a 200 whose JSON is cut in half) keep the real
  result saved for the key: only the way back failed.
* A known path with the wrong method is a 405 (with Stripe's error body).
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import itertools
import re
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs

from billing.emulators.base import RESET, Faults, MinuteRateLimiter, Request, Response

DEFAULT_API_KEY = "sk_test_emulator"

IDEMPOTENCY_TTL_SECONDS = 24 * 3600
MAX_EVENT_AGE_SECONDS = 35 * 86400
MAX_EVENT_FUTURE_SECONDS = 5 * 60
MAX_IDENTIFIER_LENGTH = 100
MAX_IDEMPOTENCY_KEY_LENGTH = 255
FORMULAS = ("count", "last", "sum")
WINDOWS = {"hour": 3600, "day": 86400}

FaultKind = Literal[
    "500", "503", "429", "lock_timeout", "reset", "slow", "500_after_commit", "cut_body"
]
Validation = Literal["sync", "async"]
DuplicateError = Literal[
    "resource_already_exists", "duplicate_meter_event", "message_only"
]
_FAULT_KINDS = (
    "500",
    "503",
    "429",
    "lock_timeout",
    "reset",
    "slow",
    "500_after_commit",
    "cut_body",
)
# Faults that always let the request run first: they break the answer only.
_AFTER_COMMIT_KINDS = ("500_after_commit", "cut_body")
_DUPLICATE_ERRORS = ("resource_already_exists", "duplicate_meter_event", "message_only")

_KEY_PREFIX = re.compile(r"^(?:sk|rk|pk)_(?:test|live)_")
_PARAM_NAME = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PARAM_PART = re.compile(r"\[([^\[\]]*)\]")
_WHOLE_NUMBER = re.compile(r"^-?[0-9]+$")
_INTEGER = re.compile(r"^-?[0-9]+$")
# Codes for which stripe.com/docs/error-codes has a page; Stripe adds doc_url
# only for those.
_DOCUMENTED_CODES = {
    "email_invalid",
    "idempotency_key_in_use",
    "lock_timeout",
    "parameter_invalid_integer",
    "parameter_missing",
    "parameter_unknown",
    "parameters_exclusive",
    "rate_limit",
    "resource_already_exists",
    "resource_missing",
}


def mask_api_key(key: str) -> str:
    """
    Mask an API key the way Stripe echoes it in a 401: the ``sk_test_``-style
    prefix and the last four characters stay, the rest becomes asterisks.
    """
    match = _KEY_PREFIX.match(key)
    prefix = match.group(0) if match else ""
    rest = key[len(prefix) :]
    if len(rest) <= 4:
        return prefix + "*" * len(rest)
    return prefix + "*" * (len(rest) - 4) + rest[-4:]


class StripeError(Exception):
    """An error answered with Stripe's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - Stripe's field name
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def response(self) -> Response:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
            if self.code in _DOCUMENTED_CODES:
                slug = self.code.replace("_", "-")
                error["doc_url"] = f"https://stripe.com/docs/error-codes/{slug}"
        if self.param:
            error["param"] = self.param
        return Response(self.status, {"error": error}, dict(self.headers))


def _missing(param: str) -> StripeError:
    return StripeError(
        400,
        f"Missing required param: {param}.",
        code="parameter_missing",
        param=param,
    )


def _invalid(param: str, message: str, code: str | None = None) -> StripeError:
    return StripeError(400, message, code=code, param=param)


def _duplicate_identifier(identifier: str, style: DuplicateError) -> StripeError:
    if style == "duplicate_meter_event":
        return StripeError(
            400,
            "A meter event with a duplicate identifier has already been submitted.",
            code="duplicate_meter_event",
        )
    if style == "message_only":
        return StripeError(
            400, f"An event already exists with identifier {identifier}."
        )
    return _invalid(
        "identifier",
        f"A meter event with identifier '{identifier}' already exists.",
        code="resource_already_exists",
    )


def _not_found(kind: str, object_id: str, param: str, status: int) -> StripeError:
    return StripeError(
        status,
        f"No such {kind}: '{object_id}'",
        code="resource_missing",
        param=param,
    )


def parse_params(flat: dict[str, list[str]]) -> dict[str, Any]:
    """
    Turn Stripe's bracket notation (``payload[value]=25``) into nested dicts.

    Values stay strings, as on the wire; a key given twice keeps its last
    value. Lists (``expand[0]=...``) come out as dicts keyed by index, which
    is all the emulated endpoints need.
    """
    root: dict[str, Any] = {}
    for name, values in flat.items():
        match = _PARAM_NAME.match(name)
        if not match:
            raise _invalid(name, f"Invalid parameter name: {name}")
        parts = [match.group(1), *_PARAM_PART.findall(match.group(2))]
        node = root
        for depth, part in enumerate(parts):
            key = part if part != "" else str(len(node))
            shown = parts[0] + "".join(f"[{p}]" for p in parts[1 : depth + 1])
            if depth == len(parts) - 1:
                if isinstance(node.get(key), dict):
                    raise _invalid(shown, f"Invalid {shown}: must be an object")
                node[key] = values[-1]
            else:
                child = node.setdefault(key, {})
                if not isinstance(child, dict):
                    raise _invalid(shown, f"Invalid {shown}: must be an object")
                node = child
    return root


@dataclass
class _Total:
    """Running aggregate of one customer's events on one meter."""

    sum: int = 0
    count: int = 0
    last_key: tuple[int, int] = (-1, -1)  # (timestamp, arrival) of "last"
    last_value: int = 0

    def add(self, timestamp: int, seq: int, value: int) -> None:
        self.sum += value
        self.count += 1
        # Stripe's "last" is the value of the latest event by event time;
        # arrival order breaks ties.
        if (timestamp, seq) >= self.last_key:
            self.last_key = (timestamp, seq)
            self.last_value = value

    def value(self, formula: str) -> int:
        if formula == "count":
            return self.count
        if formula == "last":
            return self.last_value
        return self.sum


@dataclass
class _Stored:
    """A stored idempotent result."""

    path: str
    fingerprint: tuple[tuple[str, str], ...]
    status: int
    body: Any
    request_id: str
    expires_at: float


@dataclass
class _Account:
    """Everything one API key owns: each key is its own Stripe account."""

    api_key: str
    livemode: bool
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    meters: dict[str, dict[str, Any]] = field(default_factory=dict)
    active_meters: dict[str, str] = field(default_factory=dict)  # event_name -> id
    events: list[dict[str, Any]] = field(default_factory=list)
    identifiers: set[str] = field(default_factory=set)
    totals: dict[tuple[str, str], _Total] = field(default_factory=dict)
    # (meter id, customer) -> [(timestamp, arrival, value)] for summaries
    series: dict[tuple[str, str], list[tuple[int, int, int]]] = field(
        default_factory=dict
    )
    idempotency: OrderedDict[str, _Stored] = field(default_factory=OrderedDict)
    error_reports: list[dict[str, Any]] = field(default_factory=list)
    # Arrivals of events lost by ``lose_meter_event``: no longer counted.
    lost: set[int] = field(default_factory=set)


@dataclass
class _ScriptedFault:
    kind: FaultKind
    remaining: int
    after_processing: bool
    method: str | None
    path: str | None

    def matches(self, request: Request) -> bool:
        return (self.method is None or self.method == request.method) and (
            self.path is None or self.path == request.path
        )


@dataclass(frozen=True)
class StripeStats:
    """
    A snapshot of the emulator's counters.

    ``by_route`` maps ``"POST /v1/billing/meter_events"`` to a Counter of
    status codes (``"reset"`` for dropped connections).
    """

    requests: int
    by_route: dict[str, Counter[int | str]]
    rate_limited: int
    idempotent_replays: int
    duplicates_rejected: int
    faults_injected: int
    events_accepted: int

    def count(self, route: str, status: int | str | None = None) -> int:
        """Requests to ``route``, optionally only those answered ``status``."""
        counter = self.by_route.get(route, Counter())
        return sum(counter.values()) if status is None else counter[status]


Handler = Callable[..., tuple[int, Any]]


class StripeEmulator:
    """
    Emulate the Stripe API for customers, billing meters, meter events and
    meter event summaries; serve it with ``EmulatorServer``.

    ``faults`` and ``rate_limiter`` are public so tests can switch them per
    run; ``fail_next()`` scripts deterministic faults. The helper methods
    (``total_value``, ``meter_events``, ``stats``...) read the state directly,
    without HTTP, for assertions and benchmarks.
    """

    def __init__(
        self,
        *,
        api_keys: Iterable[str] = (DEFAULT_API_KEY,),
        rate_limit_per_minute: int | None = None,
        faults: Faults | None = None,
        clock: Callable[[], float] = time.time,
        validation: Validation = "sync",
        duplicate_error: DuplicateError = "resource_already_exists",
    ) -> None:
        if duplicate_error not in _DUPLICATE_ERRORS:
            raise ValueError(
                f"Unknown duplicate_error {duplicate_error!r}; "
                f"use one of {_DUPLICATE_ERRORS}."
            )
        self.duplicate_error: DuplicateError = duplicate_error
        self.faults = faults or Faults()
        self.clock = clock
        self.rate_limiter = MinuteRateLimiter(rate_limit_per_minute, clock=clock)
        self.validation: Validation = validation
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._request_ids = itertools.count(1)
        self._api_keys = list(api_keys)
        if not self._api_keys:
            raise ValueError("StripeEmulator needs at least one API key.")
        self._accounts: dict[str, _Account] = {}
        self._scripted: list[_ScriptedFault] = []
        self._reset_accounts()
        self._reset_counters()
        # (template, compiled pattern, {method: handler}); the template names
        # the route in stats so that ids do not blow up the counters.
        self._routes: list[tuple[str, re.Pattern[str], dict[str, Handler]]] = [
            (
                "/v1/customers",
                re.compile(r"^/v1/customers$"),
                {"GET": self._list_customers, "POST": self._create_customer},
            ),
            (
                "/v1/customers/{id}",
                re.compile(r"^/v1/customers/(?P<id>[^/]+)$"),
                {"GET": self._retrieve_customer},
            ),
            (
                "/v1/billing/meters",
                re.compile(r"^/v1/billing/meters$"),
                {"GET": self._list_meters, "POST": self._create_meter},
            ),
            (
                "/v1/billing/meters/{id}",
                re.compile(r"^/v1/billing/meters/(?P<id>[^/]+)$"),
                {"GET": self._retrieve_meter},
            ),
            (
                "/v1/billing/meters/{id}/deactivate",
                re.compile(r"^/v1/billing/meters/(?P<id>[^/]+)/deactivate$"),
                {"POST": self._deactivate_meter},
            ),
            (
                "/v1/billing/meters/{id}/reactivate",
                re.compile(r"^/v1/billing/meters/(?P<id>[^/]+)/reactivate$"),
                {"POST": self._reactivate_meter},
            ),
            (
                "/v1/billing/meters/{id}/event_summaries",
                re.compile(r"^/v1/billing/meters/(?P<id>[^/]+)/event_summaries$"),
                {"GET": self._list_event_summaries},
            ),
            (
                "/v1/billing/meter_events",
                re.compile(r"^/v1/billing/meter_events$"),
                {"POST": self._create_meter_event},
            ),
        ]

    # -- HTTP entry point --------------------------------------------------

    def handle(self, request: Request) -> Response | type[RESET]:
        """Answer one HTTP request (called by ``EmulatorServer``)."""
        request_id = self._new_request_id()
        template, handlers, path_args = self._route(request.path)
        route = f"{request.method} {template}"
        response = self._respond(request, request_id, handlers, path_args)
        if response is RESET:
            self._count(route, "reset")
            return RESET
        assert isinstance(response, Response)
        response.headers["Request-Id"] = request_id
        self._count(route, response.status)
        return response

    def _respond(
        self,
        request: Request,
        request_id: str,
        handlers: dict[str, Handler] | None,
        path_args: dict[str, str],
    ) -> Response | type[RESET]:
        scripted = self._take_scripted(request)
        after = scripted is not None and (
            scripted.after_processing or scripted.kind in _AFTER_COMMIT_KINDS
        )
        if scripted and not after:
            fault = self._fault(scripted.kind)
            if fault is not None:
                return fault
        else:
            fault = self._roll_faults()
            if fault is not None:
                return fault
        # The 500 the API answers after committing is what Stripe saves for
        # the Idempotency-Key, so every replay of the key answers it again.
        committed_error = (
            _server_error(500)
            if scripted and scripted.kind == "500_after_commit"
            else None
        )
        try:
            api_key = self._authenticate(request)
            self._check_rate_limit(api_key)
            response = self._dispatch(
                request, request_id, api_key, handlers, path_args, committed_error
            )
        except StripeError as exc:
            response = exc.response()
        if scripted and after:
            # The request went through (and an idempotent result may be
            # stored), but the client never sees the answer: what a retry
            # with the same Idempotency-Key exists for.
            if scripted.kind == "cut_body":
                self._bump("faults_injected")
                return Response(
                    response.status, response.body, response.headers, cut=True
                )
            fault = self._fault(scripted.kind)
            if fault is not None:
                return fault
        elif self.faults.roll(self.faults.rate_slow):
            self._bump("faults_injected")
            time.sleep(self.faults.slow_seconds)
        return response

    def _route(
        self, path: str
    ) -> tuple[str, dict[str, Handler] | None, dict[str, str]]:
        for template, pattern, handlers in self._routes:
            match = pattern.match(path)
            if match:
                return template, handlers, match.groupdict()
        return "(unknown)", None, {}

    def _dispatch(
        self,
        request: Request,
        request_id: str,
        api_key: str,
        handlers: dict[str, Handler] | None,
        path_args: dict[str, str],
        committed_error: StripeError | None = None,
    ) -> Response:
        """
        Run the endpoint; save its result for the request's Idempotency-Key.

        ``committed_error`` is an error the API answers after the endpoint
        ran: it is saved for the key in place of the endpoint's result.
        """
        unrecognized = (
            f"Unrecognized request URL ({request.method}: {request.path}). "
            "Please see https://stripe.com/docs or we can help at "
            "https://support.stripe.com/."
        )
        if handlers is None:
            raise StripeError(404, unrecognized)
        handler = handlers.get(request.method)
        if handler is None:
            raise StripeError(405, unrecognized, headers={"Allow": ", ".join(handlers)})
        flat = self._flat_params(request)
        params = parse_params(flat)
        idempotency_key = request.headers.get("idempotency-key")
        if request.method != "POST" or not idempotency_key:
            with self._lock:
                account = self._accounts[api_key]
                status, body = handler(account, params, **path_args)
            return Response(status, body)
        if len(idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            raise _invalid(
                "idempotency_key",
                "Invalid idempotency key: must be at most "
                f"{MAX_IDEMPOTENCY_KEY_LENGTH} characters",
            )
        fingerprint = tuple(sorted((name, values[-1]) for name, values in flat.items()))
        with self._lock:
            account = self._accounts[api_key]
            now = self.clock()
            self._expire_idempotency(account, now)
            stored = account.idempotency.get(idempotency_key)
            if stored is not None:
                return self._replay(stored, request.path, fingerprint, idempotency_key)
            status, body = handler(account, params, **path_args)
            if 200 <= status < 300:
                saved = committed_error.response() if committed_error else None
                account.idempotency[idempotency_key] = _Stored(
                    path=request.path,
                    fingerprint=fingerprint,
                    status=saved.status if saved else status,
                    body=saved.body if saved else body,
                    request_id=request_id,
                    expires_at=now + IDEMPOTENCY_TTL_SECONDS,
                )
        return Response(status, body)

    def _replay(
        self,
        stored: _Stored,
        path: str,
        fingerprint: tuple[tuple[str, str], ...],
        key: str,
    ) -> Response:
        retry_hint = f"Try using a key other than '{key}' if you meant to execute "
        retry_hint += "a different request."
        if stored.path != path:
            raise StripeError(
                400,
                "Keys for idempotent requests can only be used for the same "
                f"endpoint they were first used for ('{stored.path}' vs "
                f"'{path}'). {retry_hint}",
                type="idempotency_error",
            )
        if stored.fingerprint != fingerprint:
            raise StripeError(
                400,
                "Keys for idempotent requests can only be used with the same "
                f"parameters they were first used with. {retry_hint}",
                type="idempotency_error",
            )
        self._bump("idempotent_replays")
        return Response(
            stored.status,
            stored.body,
            {"Idempotent-Replayed": "true", "Original-Request": stored.request_id},
        )

    @staticmethod
    def _expire_idempotency(account: _Account, now: float) -> None:
        # Keys are kept in insertion order, so expired ones sit at the front:
        # amortised O(1) per request.
        store = account.idempotency
        while store:
            key, stored = next(iter(store.items()))
            if stored.expires_at > now:
                break
            del store[key]

    @staticmethod
    def _flat_params(request: Request) -> dict[str, list[str]]:
        if request.method != "POST":
            return request.query
        try:
            return parse_qs(request.body.decode(), keep_blank_values=True)
        except UnicodeDecodeError:
            raise StripeError(400, "Invalid request body: not UTF-8.") from None

    # -- auth, rate limits, faults ----------------------------------------

    def _authenticate(self, request: Request) -> str:
        key = _api_key_from(request.headers.get("authorization", ""))
        if not key:
            raise StripeError(
                401,
                "You did not provide an API key. You need to provide your API "
                "key in the Authorization header, using Bearer auth (e.g. "
                "'Authorization: Bearer YOUR_SECRET_KEY'). See "
                "https://stripe.com/docs/api#authentication for details, or we "
                "can help at https://support.stripe.com/.",
                headers={"WWW-Authenticate": 'Basic realm="Stripe"'},
            )
        if key not in self._accounts:
            raise StripeError(
                401,
                f"Invalid API Key provided: {mask_api_key(key)}",
                headers={"WWW-Authenticate": 'Basic realm="Stripe"'},
            )
        return key

    def _check_rate_limit(self, api_key: str) -> None:
        allowed, _remaining, reset_in = self.rate_limiter.hit(api_key)
        if not allowed:
            self._bump("rate_limited")
            raise _rate_limit_error(reset_in)

    def _roll_faults(self) -> Response | type[RESET] | None:
        faults = self.faults
        if faults.roll(faults.rate_reset):
            return self._fault("reset")
        if faults.roll(faults.rate_5xx):
            return self._fault("500" if faults.roll(0.5) else "503")
        if faults.roll(faults.rate_429):
            return self._fault("429")
        return None

    def _fault(self, kind: FaultKind) -> Response | type[RESET] | None:
        """The answer for an injected fault; None for "slow" (after sleeping)."""
        self._bump("faults_injected")
        if kind == "reset":
            return RESET
        if kind == "slow":
            time.sleep(self.faults.slow_seconds)
            return None
        if kind == "429":
            self._bump("rate_limited")
            return _rate_limit_error(self.faults.retry_after).response()
        if kind == "lock_timeout":
            return StripeError(
                429,
                "This object cannot be accessed right now because another API "
                "request or Stripe process is currently accessing it. If you "
                "see this error intermittently, retry the request.",
                code="lock_timeout",
                headers={"Stripe-Should-Retry": "true"},
            ).response()
        status = 500 if kind == "500_after_commit" else int(kind)
        return _server_error(status).response()

    def _take_scripted(self, request: Request) -> _ScriptedFault | None:
        if not self._scripted:  # cheap unlocked check on the hot path
            return None
        with self._lock:
            for fault in self._scripted:
                if fault.matches(request):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._scripted.remove(fault)
                    return fault
        return None

    def fail_next(
        self,
        kind: FaultKind,
        times: int = 1,
        *,
        after_processing: bool = False,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """
        Fail the next ``times`` matching requests with ``kind``.

        ``kind`` is "500"/"503" (api_error + ``Stripe-Should-Retry: true``),
        "429" (rate limit, not retried by stripe-python), "lock_timeout" (429
        that stripe-python retries), "reset" (connection reset) or "slow".
        With ``after_processing`` the request is processed (objects created,
        idempotent result stored) and only the answer is lost. ``method`` and
        ``path`` (exact, e.g. "/v1/billing/meter_events") narrow the match.

        Two kinds always process the request first, like real Stripe:
        "500_after_commit" records it, answers a 500 and saves that 500 as
        the Idempotency-Key's result, so the key replays the 500 from then
        on; "cut_body" records it (the real result saved for the key) and
        answers the status with only the first half of the JSON body.
        """
        if kind not in _FAULT_KINDS:
            raise ValueError(f"Unknown fault kind {kind!r}; use one of {_FAULT_KINDS}.")
        with self._lock:
            self._scripted.append(
                _ScriptedFault(kind, times, after_processing, method, path)
            )

    # -- ids and stats ------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):014d}"

    def _new_request_id(self) -> str:
        return f"req_{next(self._request_ids):014d}"

    def _count(self, route: str, status: int | str) -> None:
        with self._stats_lock:
            self._requests += 1
            self._by_route.setdefault(route, Counter())[status] += 1

    def _bump(self, counter: str) -> None:
        with self._stats_lock:
            self._counters[counter] += 1

    def _reset_counters(self) -> None:
        with self._stats_lock:
            self._requests = 0
            self._by_route: dict[str, Counter[int | str]] = {}
            self._counters: Counter[str] = Counter()

    def stats(self) -> StripeStats:
        """Return a snapshot of the request counters."""
        with self._stats_lock:
            return StripeStats(
                requests=self._requests,
                by_route={k: Counter(v) for k, v in self._by_route.items()},
                rate_limited=self._counters["rate_limited"],
                idempotent_replays=self._counters["idempotent_replays"],
                duplicates_rejected=self._counters["duplicates_rejected"],
                faults_injected=self._counters["faults_injected"],
                events_accepted=self._counters["events_accepted"],
            )

    def reset_stats(self) -> None:
        """Zero the request counters (the stored data stays)."""
        self._reset_counters()

    def reset(self) -> None:
        """Forget all data, counters and scripted faults; keep the API keys."""
        with self._lock:
            self._reset_accounts()
            self._scripted.clear()
        self._reset_counters()

    def _reset_accounts(self) -> None:
        self._accounts = {
            key: _Account(api_key=key, livemode="_live_" in key)
            for key in self._api_keys
        }

    # -- plain-Python helpers for tests and benchmarks ----------------------

    @property
    def api_keys(self) -> tuple[str, ...]:
        return tuple(self._api_keys)

    def _account(self, api_key: str | None) -> _Account:
        return self._accounts[api_key or self._api_keys[0]]

    def create_customer(
        self, *, api_key: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """
        Create a customer without HTTP (seeding). ``fields`` are the API's
        parameters (``name``, ``email``, ``metadata``...).
        """
        params = {k: v for k, v in fields.items() if v is not None}
        with self._lock:
            _status, body = self._create_customer(self._account(api_key), params)
        return body

    def create_meter(
        self,
        *,
        event_name: str,
        api_key: str | None = None,
        display_name: str | None = None,
        formula: str = "sum",
        customer_key: str = "stripe_customer_id",
        value_key: str = "value",
    ) -> dict[str, Any]:
        """Create an active meter without HTTP (seeding)."""
        params = {
            "display_name": display_name or event_name,
            "event_name": event_name,
            "default_aggregation": {"formula": formula},
            "customer_mapping": {"event_payload_key": customer_key, "type": "by_id"},
            "value_settings": {"event_payload_key": value_key},
        }
        with self._lock:
            _status, body = self._create_meter(self._account(api_key), params)
        return body

    def customers(self, *, api_key: str | None = None) -> list[dict[str, Any]]:
        """The account's customers, oldest first."""
        with self._lock:
            return copy.deepcopy(list(self._account(api_key).customers.values()))

    def meters(self, *, api_key: str | None = None) -> list[dict[str, Any]]:
        """The account's meters, oldest first."""
        with self._lock:
            return copy.deepcopy(list(self._account(api_key).meters.values()))

    def meter_events(self, *, api_key: str | None = None) -> list[dict[str, Any]]:
        """The account's accepted (counted) meter events, in arrival order."""
        with self._lock:
            account = self._account(api_key)
            return copy.deepcopy(
                [e for n, e in enumerate(account.events) if n not in account.lost]
            )

    def lose_meter_event(self, identifier: str, *, api_key: str | None = None) -> None:
        """
        Lose an accepted event as if Stripe had never recorded it: it leaves
        the totals and summaries, and its identifier may be sent again.
        (What a reconciliation must notice; no real API does this.)
        """
        with self._lock:
            account = self._account(api_key)
            arrival = next(
                n
                for n, event in enumerate(account.events)
                if event["identifier"] == identifier and n not in account.lost
            )
            account.lost.add(arrival)
            account.identifiers.discard(identifier)
            for key, points in account.series.items():
                account.series[key] = [p for p in points if p[1] != arrival]
                total = _Total()
                for timestamp, seq, value in account.series[key]:
                    total.add(timestamp, seq, value)
                account.totals[key] = total

    def error_reports(self, *, api_key: str | None = None) -> list[dict[str, Any]]:
        """
        Events accepted but not counted in ``validation="async"`` mode, as
        ``{"code", "message", "identifier", "event_name", "payload"}``.
        """
        with self._lock:
            return copy.deepcopy(self._account(api_key).error_reports)

    def total_value(
        self,
        *,
        customer: str,
        event_name: str | None = None,
        meter: str | None = None,
        api_key: str | None = None,
    ) -> int:
        """
        A customer's all-time aggregate on a meter, with the meter's formula.

        The meter is ``meter`` (id) or else the active meter for
        ``event_name`` (or, with none active, the newest one of that name).
        An unknown meter gives 0.
        """
        with self._lock:
            account = self._account(api_key)
            meter_obj = self._find_meter(account, event_name=event_name, meter=meter)
            if meter_obj is None:
                return 0
            total = account.totals.get((meter_obj["id"], customer))
            formula = meter_obj["default_aggregation"]["formula"]
            return total.value(formula) if total else 0

    @staticmethod
    def _find_meter(
        account: _Account, *, event_name: str | None, meter: str | None
    ) -> dict[str, Any] | None:
        if meter is not None:
            return account.meters.get(meter)
        if event_name is None:
            raise ValueError("total_value() needs event_name or meter.")
        active = account.active_meters.get(event_name)
        if active:
            return account.meters[active]
        named = [m for m in account.meters.values() if m["event_name"] == event_name]
        return named[-1] if named else None

    # -- endpoints (called with self._lock held) -----------------------------
    #
    # Each returns (status, body) where body is a fresh copy, never a live
    # state object: it is serialised outside the lock and may be stored as an
    # idempotent result.

    def _create_customer(
        self, account: _Account, params: dict[str, Any]
    ) -> tuple[int, Any]:
        _check_known(params, {"name", "email", "description", "phone", "metadata"})
        email = _optional_string(params, "email")
        if email is not None and "@" not in email:
            raise _invalid(
                "email", f"Invalid email address: {email}", code="email_invalid"
            )
        now = int(self.clock())
        customer_id = self._new_id("cus")
        customer = {
            "id": customer_id,
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": now,
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": _optional_string(params, "description"),
            "discount": None,
            "email": email,
            "invoice_prefix": hashlib.sha1(customer_id.encode())  # noqa: S324
            .hexdigest()[:8]
            .upper(),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": account.livemode,
            "metadata": _metadata(params),
            "name": _optional_string(params, "name"),
            "next_invoice_sequence": 1,
            "phone": _optional_string(params, "phone"),
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        account.customers[customer_id] = customer
        return 200, copy.deepcopy(customer)

    def _retrieve_customer(
        self,
        account: _Account,
        params: dict[str, Any],
        id: str,  # noqa: A002
    ) -> tuple[int, Any]:
        _check_known(params, set())
        customer = account.customers.get(id)
        if customer is None:
            raise _not_found("customer", id, "id", 404)
        return 200, copy.deepcopy(customer)

    def _list_customers(
        self, account: _Account, params: dict[str, Any]
    ) -> tuple[int, Any]:
        _check_known(params, {"email", *_LIST_PARAMS})
        email = _optional_string(params, "email")
        items = [
            c
            for c in reversed(account.customers.values())
            if email is None or c["email"] == email
        ]
        return 200, _paginate(items, params, "/v1/customers", "customer")

    def _create_meter(
        self, account: _Account, params: dict[str, Any]
    ) -> tuple[int, Any]:
        _check_known(
            params,
            {
                "display_name",
                "event_name",
                "default_aggregation",
                "customer_mapping",
                "value_settings",
                "event_time_window",
            },
        )
        display_name = _required_string(params, "display_name")
        event_name = _required_string(params, "event_name")
        if len(event_name) > 100:
            raise _invalid(
                "event_name", "Invalid event_name: must be at most 100 characters"
            )
        aggregation = _required_object(params, "default_aggregation")
        _check_known(aggregation, {"formula"}, prefix="default_aggregation")
        formula = _required_string(aggregation, "formula", "default_aggregation")
        _check_enum("default_aggregation[formula]", formula, FORMULAS)
        customer_key = "stripe_customer_id"
        if "customer_mapping" in params:
            mapping = _required_object(params, "customer_mapping")
            _check_known(mapping, {"event_payload_key", "type"}, "customer_mapping")
            customer_key = _required_string(
                mapping, "event_payload_key", "customer_mapping"
            )
            mapping_type = _required_string(mapping, "type", "customer_mapping")
            _check_enum("customer_mapping[type]", mapping_type, ("by_id",))
        value_key = "value"
        if "value_settings" in params:
            settings = _required_object(params, "value_settings")
            _check_known(settings, {"event_payload_key"}, "value_settings")
            value_key = _required_string(
                settings, "event_payload_key", "value_settings"
            )
        window = _optional_string(params, "event_time_window")
        if window is not None:
            _check_enum("event_time_window", window, tuple(WINDOWS))
        if event_name in account.active_meters:
            raise _invalid(
                "event_name",
                f"An active meter with event_name '{event_name}' already exists.",
                code="resource_already_exists",
            )
        now = int(self.clock())
        meter_id = self._new_id("mtr")
        meter = {
            "id": meter_id,
            "object": "billing.meter",
            "created": now,
            "customer_mapping": {"event_payload_key": customer_key, "type": "by_id"},
            "default_aggregation": {"formula": formula},
            "display_name": display_name,
            "event_name": event_name,
            "event_time_window": window,
            "livemode": account.livemode,
            "status": "active",
            "status_transitions": {"deactivated_at": None},
            "updated": now,
            "value_settings": {"event_payload_key": value_key},
        }
        account.meters[meter_id] = meter
        account.active_meters[event_name] = meter_id
        return 200, copy.deepcopy(meter)

    def _meter(self, account: _Account, meter_id: str) -> dict[str, Any]:
        meter = account.meters.get(meter_id)
        if meter is None:
            raise _not_found("billing meter", meter_id, "id", 404)
        return meter

    def _retrieve_meter(
        self,
        account: _Account,
        params: dict[str, Any],
        id: str,  # noqa: A002
    ) -> tuple[int, Any]:
        _check_known(params, set())
        return 200, copy.deepcopy(self._meter(account, id))

    def _list_meters(
        self, account: _Account, params: dict[str, Any]
    ) -> tuple[int, Any]:
        _check_known(params, {"status", *_LIST_PARAMS})
        status = _optional_string(params, "status")
        if status is not None:
            _check_enum("status", status, ("active", "inactive"))
        items = [
            m
            for m in reversed(account.meters.values())
            if status is None or m["status"] == status
        ]
        return 200, _paginate(items, params, "/v1/billing/meters", "billing meter")

    def _deactivate_meter(
        self,
        account: _Account,
        params: dict[str, Any],
        id: str,  # noqa: A002
    ) -> tuple[int, Any]:
        _check_known(params, set())
        meter = self._meter(account, id)
        if meter["status"] == "active":
            now = int(self.clock())
            meter.update(status="inactive", updated=now)
            meter["status_transitions"] = {"deactivated_at": now}
            del account.active_meters[meter["event_name"]]
        return 200, copy.deepcopy(meter)

    def _reactivate_meter(
        self,
        account: _Account,
        params: dict[str, Any],
        id: str,  # noqa: A002
    ) -> tuple[int, Any]:
        _check_known(params, set())
        meter = self._meter(account, id)
        if meter["status"] == "inactive":
            if meter["event_name"] in account.active_meters:
                raise _invalid(
                    "event_name",
                    f"An active meter with event_name '{meter['event_name']}' "
                    "already exists.",
                    code="resource_already_exists",
                )
            meter.update(status="active", updated=int(self.clock()))
            meter["status_transitions"] = {"deactivated_at": None}
            account.active_meters[meter["event_name"]] = meter["id"]
        return 200, copy.deepcopy(meter)

    def _create_meter_event(
        self, account: _Account, params: dict[str, Any]
    ) -> tuple[int, Any]:
        # Shape errors are synchronous at Stripe too (request validation).
        _check_known(params, {"event_name", "payload", "identifier", "timestamp"})
        event_name = _required_string(params, "event_name")
        payload = _required_object(params, "payload")
        for key, value in payload.items():
            if not isinstance(value, str):
                raise _invalid(
                    f"payload[{key}]", f"Invalid payload[{key}]: must be a string"
                )
        identifier = _optional_string(params, "identifier")
        if identifier is not None and len(identifier) > MAX_IDENTIFIER_LENGTH:
            raise _invalid(
                "identifier",
                f"Invalid identifier: must be at most {MAX_IDENTIFIER_LENGTH} "
                "characters",
            )
        now = int(self.clock())
        timestamp = _optional_integer(params, "timestamp")
        if timestamp is None:
            timestamp = now

        def reject_duplicate() -> None:
            if identifier is not None and identifier in account.identifiers:
                self._bump("duplicates_rejected")
                raise _duplicate_identifier(identifier, self.duplicate_error)

        if self.validation == "async":
            # Stripe dedupes on arrival and validates the content later.
            reject_duplicate()
        try:
            meter, customer, value = self._validate_event(
                account, event_name, payload, timestamp, now
            )
        except StripeError as exc:
            if self.validation == "sync":
                raise
            meter = None
            account.error_reports.append(
                {
                    "code": exc.code,
                    "message": exc.message,
                    "identifier": identifier,
                    "event_name": event_name,
                    "payload": dict(payload),
                }
            )
        if self.validation == "sync":
            reject_duplicate()
        if identifier is None:
            identifier = str(uuid.uuid4())
        account.identifiers.add(identifier)
        event = {
            "object": "billing.meter_event",
            "created": now,
            "event_name": event_name,
            "identifier": identifier,
            "livemode": account.livemode,
            "payload": dict(payload),
            "timestamp": timestamp,
        }
        if meter is not None:
            seq = len(account.events)
            account.events.append(event)
            series_key = (meter["id"], customer)
            account.totals.setdefault(series_key, _Total()).add(timestamp, seq, value)
            account.series.setdefault(series_key, []).append((timestamp, seq, value))
            self._bump("events_accepted")
        return 200, copy.deepcopy(event)

    def _validate_event(
        self,
        account: _Account,
        event_name: str,
        payload: dict[str, str],
        timestamp: int,
        now: int,
    ) -> tuple[dict[str, Any], str, int]:
        """Check what Stripe checks asynchronously; return (meter, customer, value)."""
        meter_id = account.active_meters.get(event_name)
        if meter_id is None:
            if any(m["event_name"] == event_name for m in account.meters.values()):
                raise _invalid(
                    "event_name",
                    f"The meter for event_name '{event_name}' is inactive.",
                    code="archived_meter",
                )
            raise _invalid(
                "event_name",
                f"No active meter was found matching event_name '{event_name}'.",
                code="no_meter",
            )
        meter = account.meters[meter_id]
        customer_key = meter["customer_mapping"]["event_payload_key"]
        customer = payload.get(customer_key)
        if not customer:
            raise _invalid(
                f"payload[{customer_key}]",
                f"Missing customer in payload[{customer_key}].",
                code="meter_event_no_customer_defined",
            )
        if customer not in account.customers:
            raise _invalid(
                f"payload[{customer_key}]",
                f"No such customer: '{customer}'",
                code="meter_event_customer_not_found",
            )
        value_key = meter["value_settings"]["event_payload_key"]
        raw_value = payload.get(value_key)
        formula = meter["default_aggregation"]["formula"]
        if raw_value is None and formula != "count":
            raise _invalid(
                f"payload[{value_key}]",
                f"Missing value in payload[{value_key}].",
                code="meter_event_value_not_found",
            )
        if raw_value is not None and not _WHOLE_NUMBER.match(raw_value):
            raise _invalid(
                f"payload[{value_key}]",
                f"Invalid payload[{value_key}]: must be a whole number, got "
                f"'{raw_value}'.",
                code="meter_event_invalid_value",
            )
        if timestamp < now - MAX_EVENT_AGE_SECONDS:
            raise _invalid(
                "timestamp",
                "Invalid timestamp: must be within the past 35 calendar days.",
                code="timestamp_too_far_in_past",
            )
        if timestamp > now + MAX_EVENT_FUTURE_SECONDS:
            raise _invalid(
                "timestamp",
                "Invalid timestamp: must be no more than 5 minutes in the future.",
                code="timestamp_in_future",
            )
        return meter, customer, int(raw_value) if raw_value is not None else 1

    def _list_event_summaries(
        self,
        account: _Account,
        params: dict[str, Any],
        id: str,  # noqa: A002
    ) -> tuple[int, Any]:
        _check_known(
            params,
            {
                "customer",
                "start_time",
                "end_time",
                "value_grouping_window",
                *_LIST_PARAMS,
            },
        )
        meter = self._meter(account, id)
        customer = _required_string(params, "customer")
        start = _required_integer(params, "start_time")
        end = _required_integer(params, "end_time")
        window_name = _optional_string(params, "value_grouping_window")
        if window_name is not None:
            _check_enum("value_grouping_window", window_name, tuple(WINDOWS))
        step = WINDOWS[window_name] if window_name else 60
        boundary = {60: "minute", 3600: "hour", 86400: "day"}[step]
        for name, value in (("start_time", start), ("end_time", end)):
            if value % step:
                raise _invalid(
                    name, f"Invalid {name}: must be aligned with {boundary} boundaries."
                )
        if end <= start:
            raise _invalid("end_time", "Invalid end_time: must be after start_time.")
        if customer not in account.customers:
            raise _not_found("customer", customer, "customer", 400)

        formula = meter["default_aggregation"]["formula"]
        buckets: dict[int, _Total] = {}
        for timestamp, seq, value in account.series.get((id, customer), ()):
            if start <= timestamp < end:
                bucket = (
                    timestamp - (timestamp - start) % step if window_name else start
                )
                buckets.setdefault(bucket, _Total()).add(timestamp, seq, value)
        if not window_name:
            buckets.setdefault(start, _Total())
        summaries = []
        for bucket in sorted(buckets, reverse=True):
            bucket_end = min(bucket + step, end) if window_name else end
            digest = hashlib.sha1(  # noqa: S324 - an id, not security
                f"{id}:{customer}:{bucket}:{bucket_end}".encode()
            ).hexdigest()[:20]
            summaries.append(
                {
                    "id": f"mtrusg_{digest}",
                    "object": "billing.meter_event_summary",
                    "aggregated_value": float(buckets[bucket].value(formula)),
                    "end_time": bucket_end,
                    "livemode": account.livemode,
                    "meter": id,
                    "start_time": bucket,
                }
            )
        url = f"/v1/billing/meters/{id}/event_summaries"
        return 200, _paginate(summaries, params, url, "billing meter event summary")


_LIST_PARAMS = {"limit", "starting_after", "ending_before"}


def _api_key_from(authorization: str) -> str | None:
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0] or None
    return None


def _server_error(status: int) -> StripeError:
    return StripeError(
        status,
        "An unknown error occurred",
        type="api_error",
        headers={"Stripe-Should-Retry": "true"},
    )


def _rate_limit_error(retry_after: int) -> StripeError:
    return StripeError(
        429,
        "Request rate limit exceeded. Learn more about rate limits here "
        "https://stripe.com/docs/rate-limits.",
        code="rate_limit",
        headers={"Retry-After": str(max(1, int(retry_after)))},
    )


def _shown(name: str, prefix: str | None) -> str:
    return f"{prefix}[{name}]" if prefix else name


def _check_known(
    params: dict[str, Any], allowed: set[str], prefix: str | None = None
) -> None:
    for name in params:
        if name not in allowed and name != "expand":
            shown = _shown(name, prefix)
            raise _invalid(
                shown, f"Received unknown parameter: {shown}", code="parameter_unknown"
            )


def _optional_string(
    params: dict[str, Any], name: str, prefix: str | None = None
) -> str | None:
    value = params.get(name)
    if isinstance(value, dict):
        shown = _shown(name, prefix)
        raise _invalid(shown, f"Invalid {shown}: must be a string")
    # Stripe reads an empty string as "not set".
    return value or None


def _required_string(
    params: dict[str, Any], name: str, prefix: str | None = None
) -> str:
    value = _optional_string(params, name, prefix)
    if value is None:
        raise _missing(_shown(name, prefix))
    return value


def _required_object(params: dict[str, Any], name: str) -> dict[str, Any]:
    value = params.get(name)
    if value is None or value == "":
        raise _missing(name)
    if not isinstance(value, dict):
        raise _invalid(name, f"Invalid {name}: must be an object")
    return value


def _optional_integer(params: dict[str, Any], name: str) -> int | None:
    value = _optional_string(params, name)
    if value is None:
        return None
    if not _INTEGER.match(value):
        raise _invalid(
            name, f"Invalid integer: {value}", code="parameter_invalid_integer"
        )
    return int(value)


def _required_integer(params: dict[str, Any], name: str) -> int:
    value = _optional_integer(params, name)
    if value is None:
        raise _missing(name)
    return value


def _check_enum(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        listed = ", ".join(choices[:-1]) + f", or {choices[-1]}"
        if len(choices) == 1:
            listed = choices[0]
        elif len(choices) == 2:
            listed = f"{choices[0]} or {choices[1]}"
        raise _invalid(name, f"Invalid {name}: must be one of {listed}")


def _metadata(params: dict[str, Any]) -> dict[str, str]:
    raw = params.get("metadata")
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, dict):
        raise _invalid("metadata", "Invalid metadata: must be an object")
    if len(raw) > 50:
        raise _invalid("metadata", "Invalid metadata: at most 50 keys are allowed")
    metadata = {}
    for key, value in raw.items():
        if not isinstance(value, str):
            raise _invalid(
                f"metadata[{key}]", f"Invalid metadata[{key}]: must be a string"
            )
        if len(key) > 40 or len(value) > 500:
            raise _invalid(
                f"metadata[{key}]",
                "Invalid metadata: keys are at most 40 characters and values at "
                "most 500",
            )
        if value:  # an empty value unsets the key
            metadata[key] = value
    return metadata


def _paginate(
    items: list[dict[str, Any]], params: dict[str, Any], url: str, kind: str
) -> dict[str, Any]:
    """Build Stripe's list object from ``items`` (already newest first)."""
    raw_limit = _optional_integer(params, "limit")
    limit = 10 if raw_limit is None else raw_limit
    if not 1 <= limit <= 100:
        raise _invalid("limit", "Invalid limit: must be between 1 and 100")
    starting_after = _optional_string(params, "starting_after")
    ending_before = _optional_string(params, "ending_before")
    if starting_after and ending_before:
        raise StripeError(
            400,
            "You may only specify one of these parameters: ending_before, "
            "starting_after.",
            code="parameters_exclusive",
            param="ending_before",
        )
    ids = [item["id"] for item in items]

    def position(cursor: str, param: str) -> int:
        try:
            return ids.index(cursor)
        except ValueError:
            raise _not_found(kind, cursor, param, 400) from None

    if starting_after:
        first = position(starting_after, "starting_after") + 1
        page = items[first : first + limit]
        has_more = first + limit < len(items)
    elif ending_before:
        stop = position(ending_before, "ending_before")
        first = max(0, stop - limit)
        page = items[first:stop]
        has_more = first > 0
    else:
        page = items[:limit]
        has_more = len(items) > limit
    return {
        "object": "list",
        "data": copy.deepcopy(page),
        "has_more": has_more,
        "url": url,
    }


__all__ = [
    "DEFAULT_API_KEY",
    "StripeEmulator",
    "StripeError",
    "StripeStats",
    "mask_api_key",
    "parse_params",
]
