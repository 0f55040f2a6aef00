import httpx
import pytest
import stripe
from langfuse.api.core.api_error import ApiError

from billing.limiter import AdaptiveRateLimiter
from billing.provider_calls import (
    CircuitBreaker,
    CircuitOpenError,
    PermanentProviderError,
    ProviderAuthError,
    ProviderCaller,
    TransientProviderError,
    classify,
)


def caller():
    return ProviderCaller(
        "langfuse",
        AdaptiveRateLimiter(sleep=lambda s: None),
        CircuitBreaker(threshold=3),
        sleep=lambda s: None,
    )


def failing(*errors, result="ok"):
    errors = list(errors)
    calls = []

    def fn():
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result

    fn.calls = calls
    return fn


def langfuse_error(status, body="Invalid key sk-lf-secret-abcd", headers=None):
    return ApiError(status_code=status, headers=headers or {}, body=body)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (langfuse_error(429, headers={"Retry-After": "2"}), "rate_limited"),
        (langfuse_error(503), "transient"),
        (langfuse_error(408), "transient"),
        (langfuse_error(409), "transient"),
        # A 200 whose body did not parse (cut off on the way): retried.
        (langfuse_error(200, body='{"data": [{"id'), "transient"),
        (langfuse_error(401), "auth"),
        (langfuse_error(403), "auth"),
        (langfuse_error(400), "permanent"),
        (httpx.RemoteProtocolError("peer closed"), "transient"),
        (stripe.APIConnectionError("reset"), "transient"),
    ],
)
def test_classify(error, kind):
    assert classify(error).kind == kind


def test_classify_keeps_no_provider_text():
    failure = classify(langfuse_error(401))
    assert failure.detail == "HTTP 401"
    assert classify(ValueError("boom")) is None


def test_429s_are_retried_and_fed_to_the_limiter():
    call = caller()
    fn = failing(langfuse_error(429), langfuse_error(429))
    assert call.call(fn) == "ok"
    assert (len(fn.calls), call.limiter.rate_limited) == (3, 2)
    assert not call.breaker.is_open


def test_permanent_4xx_is_not_retried_and_hides_the_body():
    call = caller()
    fn = failing(langfuse_error(422))
    with pytest.raises(PermanentProviderError) as raised:
        call.call(fn)
    assert len(fn.calls) == 1
    assert str(raised.value) == "langfuse: HTTP 422"
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_401_raises_the_auth_error_without_retry():
    call = caller()
    fn = failing(langfuse_error(401))
    with pytest.raises(ProviderAuthError):
        call.call(fn)
    assert len(fn.calls) == 1
    assert not call.breaker.is_open  # a tenant's own 4xx never opens it


def test_5xx_opens_the_breaker_and_later_calls_fail_fast():
    call = caller()
    fn = failing(*[langfuse_error(503)] * 10)
    with pytest.raises(CircuitOpenError):
        call.call(fn)
    assert len(fn.calls) == 3
    with pytest.raises(CircuitOpenError):
        call.call(failing())


def test_transient_errors_give_up_after_the_retry_budget():
    call = ProviderCaller(
        "stripe",
        AdaptiveRateLimiter(sleep=lambda s: None),
        CircuitBreaker(threshold=100),
        sleep=lambda s: None,
    )
    fn = failing(*[httpx.ConnectError("refused")] * 10)
    with pytest.raises(TransientProviderError, match="transport error"):
        call.call(fn)
    assert len(fn.calls) == 5


def test_a_success_resets_the_breaker():
    call = caller()
    assert call.call(failing(langfuse_error(503), langfuse_error(503))) == "ok"
    assert call.call(failing(langfuse_error(503), langfuse_error(503))) == "ok"
    assert not call.breaker.is_open
