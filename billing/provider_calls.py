"""
Calling Langfuse and Stripe: classify failures, retry what is worth retrying,
and never let a credential reach an exception, a log line or the database.

Lessons from the seeds' reviews (004): a provider's error body can echo a
masked key fragment, so errors keep the status and the provider's error code
only; 4xx other than 408/409/429 are permanent and not retried; 401/403 mean the
tenant's credentials are wrong and pause that tenant; only 5xx and transport
errors count towards the circuit breaker, never a tenant's own 4xx.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import stripe
from langfuse.api.core.api_error import ApiError as LangfuseApiError

from billing.limiter import AdaptiveRateLimiter

T = TypeVar("T")

# 429s are the provider pacing us, not failing: give them many more tries.
MAX_RATE_LIMITED_ATTEMPTS = 30
MAX_TRANSIENT_ATTEMPTS = 5
TRANSIENT_BACKOFF_BASE = 0.2
TRANSIENT_BACKOFF_CAP = 10.0
# Consecutive 5xx / transport failures that open a tenant's breaker.
BREAKER_THRESHOLD = 5

RATE_LIMITED, TRANSIENT, AUTH, PERMANENT = (
    "rate_limited",
    "transient",
    "auth",
    "permanent",
)


class ProviderError(Exception):
    """A provider call failed; the message is sanitized (status and code only)."""

    def __init__(self, provider: str, detail: str) -> None:
        self.provider = provider
        self.detail = detail
        super().__init__(f"{provider}: {detail}")


class PermanentProviderError(ProviderError):
    """A 4xx that retrying cannot fix (bad parameters, unknown customer...)."""


class ProviderAuthError(PermanentProviderError):
    """401/403: the credentials are wrong or revoked; the tenant is paused."""


class TransientProviderError(ProviderError):
    """5xx, transport errors or rate limits outlasted every retry."""


class CircuitOpenError(TransientProviderError):
    """The tenant's breaker is open after repeated 5xx / transport errors."""


@dataclass(frozen=True)
class Failure:
    kind: str
    detail: str
    status: int | None = None
    code: str | None = None
    retry_after: float | None = None
    param: str | None = None


def _retry_after(headers) -> float | None:
    try:
        return float(headers.get("retry-after")) if headers else None
    except (TypeError, ValueError):
        return None


def _kind(status: int | None) -> str:
    if status == 429:
        return RATE_LIMITED
    # 409: Stripe's answer to a request racing another with the same
    # idempotency key, or a lock held too long; worth another try.
    if status is None or status >= 500 or status in (408, 409):
        return TRANSIENT
    if status in (401, 403):
        return AUTH
    return PERMANENT


# Stripe's refusal of a meter event whose identifier it already has. The
# OpenAPI spec names it ``duplicate_meter_event``; the v1 endpoint has been
# seen answering a 400 with no code and only this message. The message is
# matched here and never kept: the Failure carries the normalised code only.
STRIPE_DUPLICATE_EVENT = "duplicate_meter_event"
_STRIPE_DUPLICATE_MESSAGE = re.compile(
    r"already exists with identifier|duplicate identifier", re.IGNORECASE
)


def _stripe_code(exc: stripe.StripeError, status: int | None) -> str | None:
    code = exc.code if isinstance(exc.code, str) else None
    message = exc.user_message if isinstance(exc.user_message, str) else ""
    if code is None and status == 400 and _STRIPE_DUPLICATE_MESSAGE.search(message):
        return STRIPE_DUPLICATE_EVENT
    return code


def _unreadable(exc: stripe.StripeError) -> bool:
    """
    Whether stripe-python could not read Stripe's answer: it then raises a
    bare APIError with the HTTP status, even a 200, and no error object.
    """
    if exc.http_status is not None and 200 <= exc.http_status < 300:
        return True
    body = exc.json_body
    readable = isinstance(body, dict) and isinstance(body.get("error"), dict)
    return type(exc) is stripe.APIError and not readable


def _classify_stripe(exc: stripe.StripeError) -> Failure:
    status = exc.http_status
    if _unreadable(exc):
        # The request may well have gone through (a 200 cut short, a refusal
        # as a duplicate we cannot read): the outcome is unknown, which is a
        # retry under a new key, never a rejection.
        return Failure(TRANSIENT, f"HTTP {status} with an unreadable body", status)
    code = _stripe_code(exc, status)
    param = getattr(exc, "param", None)
    param = param if isinstance(param, str) else None
    detail = f"HTTP {status}" + (f" {code}" if code else "")
    if param and _kind(status) == PERMANENT:
        detail += f" (param {param})"
    return Failure(
        _kind(status),
        detail,
        status,
        code,
        retry_after=_retry_after(exc.headers),
        param=param,
    )


def classify(exc: BaseException) -> Failure | None:
    """Describe a provider failure without any text the provider sent back."""
    if isinstance(exc, LangfuseApiError):
        status = exc.status_code
        headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
        if status is not None and status < 300:
            # A success status whose body did not parse: cut off or garbled
            # on the way. Transient, like a 5xx; it counts for the breaker.
            return Failure(TRANSIENT, f"HTTP {status} with an unreadable body")
        return Failure(
            _kind(status), f"HTTP {status}", status, retry_after=_retry_after(headers)
        )
    if isinstance(exc, stripe.APIConnectionError):
        return Failure(TRANSIENT, "connection error")
    if isinstance(exc, stripe.StripeError):
        return _classify_stripe(exc)
    if isinstance(exc, httpx.TransportError):
        return Failure(TRANSIENT, f"transport error ({type(exc).__name__})")
    return None


class CircuitBreaker:
    """Opens after consecutive 5xx / transport failures of one tenant's calls."""

    def __init__(self, threshold: int = BREAKER_THRESHOLD) -> None:
        self.threshold = threshold
        self._failures = 0
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._failures >= self.threshold

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0


@dataclass
class ProviderCaller:
    """Everything one tenant's run needs to call one provider."""

    provider: str
    limiter: AdaptiveRateLimiter
    breaker: CircuitBreaker
    sleep: Callable[[float], None] = time.sleep

    def call(self, fn: Callable[[], T], *, on_failure=None) -> T:
        """
        Call ``fn`` with pacing and retries; raise a sanitized ProviderError.

        ``on_failure(failure)`` may return a value to use instead of raising
        (e.g. Stripe's "identifier already exists" means already billed).
        """
        rate_limited = transient = 0
        while True:
            if self.breaker.is_open:
                raise CircuitOpenError(
                    self.provider, "circuit open after 5xx/transport errors"
                )
            self.limiter.wait()
            try:
                result = fn()
            except Exception as exc:
                failure = classify(exc)
                if failure is None:
                    raise
                # `from None`: the original exception carries the response body.
                if on_failure is not None:
                    handled = on_failure(failure)
                    if handled is not None:
                        self.limiter.record_success()
                        return handled
                if failure.kind == RATE_LIMITED:
                    self.limiter.record_rate_limit(failure.retry_after)
                    rate_limited += 1
                    if rate_limited >= MAX_RATE_LIMITED_ATTEMPTS:
                        raise TransientProviderError(
                            self.provider,
                            f"still rate limited after {rate_limited} tries",
                        ) from None
                    continue
                if failure.kind == TRANSIENT:
                    self.breaker.record_failure()
                    transient += 1
                    if transient >= MAX_TRANSIENT_ATTEMPTS:
                        raise TransientProviderError(
                            self.provider, f"{failure.detail} after {transient} tries"
                        ) from None
                    backoff = min(
                        TRANSIENT_BACKOFF_CAP,
                        TRANSIENT_BACKOFF_BASE * 2 ** (transient - 1),
                    )
                    self.sleep(backoff * random.uniform(0.5, 1.0))
                    continue
                error_class = (
                    ProviderAuthError
                    if failure.kind == AUTH
                    else PermanentProviderError
                )
                raise error_class(self.provider, failure.detail) from None
            self.limiter.record_success()
            self.breaker.record_success()
            return result
