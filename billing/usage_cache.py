"""
The usage summary behind a cache: cache-aside, single-flight, stale while
revalidating, versioned by the ledger's writes (seed 003 and its review).

- **Key** ``usage:{tenant}:{period}``, kept ``TTL`` (10 minutes) in Django's
  cache (Redis in production). An entry holds the response body, when it was
  computed, and the versions of the months it covers.
- **Versions.** Every ledger write that changes billable usage bumps the
  version of the tenant's months it touched, when it commits
  (``usage_cache_invalidate``). An entry whose versions are not the current
  ones is a miss. The versions are read before the query runs, so a write
  that commits while a summary is being computed leaves that summary stale
  on arrival, never current with old numbers.
- **Single-flight.** On a miss one caller, the holder of ``{key}:lock``
  (an atomic ``add``, so across processes too), runs the query; the others
  wait for its entry while the lock is held. The query's statement timeout
  is shorter than the lock's life, so a slow database makes callers wait,
  not query too.
- **Stale while revalidate.** An entry older than ``FRESH_FOR`` is still
  served at once, and one background thread (its own connection) computes
  the next one. An entry a ledger write outdated is not served: a billing
  figure that changed is not shown as it was.
- **Redis down** costs the cache, not the answer: the summary is computed
  directly and a warning logged (``billing.cache_health``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from django.core.cache import cache
from django.db import connection, connections

from billing.cache_health import CACHE_ERRORS, cache_failed, cache_up
from billing.tenancy import tenant_context
from billing.usage_summary import UsagePeriod, month_label, usage_summary_json

logger = logging.getLogger(__name__)

TTL = 10 * 60
# A hit older than this is served, and refreshed in the background.
FRESH_FOR = 60
# A lock outlives a caller that died holding it by at most this long.
LOCK_TTL = 30
# The query gives up after this long (Postgres), well inside the lock's
# life: whoever holds the lock has answered or failed before it expires, so
# waiting for the lock is never waiting for nothing.
QUERY_TIMEOUT_MS = 20_000
# How often a waiter looks: soon at first, then less often, so that a
# hundred waiters do not spend the CPU the query needs on looking.
POLL_FIRST, POLL_MOST = 0.005, 0.05
BYPASSED = "the usage summary is read from the database"


@dataclass(frozen=True)
class Entry:
    versions: tuple
    computed_at: float
    body: bytes


@dataclass(frozen=True)
class CachedSummary:
    body: bytes
    status: str  # hit / stale / miss / bypass (cache unavailable)


def _key(tenant_id: int, period: UsagePeriod) -> str:
    return f"usage:{tenant_id}:{period.label}"


def _version_key(tenant_id: int, month: str) -> str:
    return f"usage-version:{tenant_id}:{month}"


def usage_summary_cached(*, tenant_id: int, period: UsagePeriod) -> CachedSummary:
    """The summary's JSON body, from the cache when it holds a current one."""
    if not cache_up():
        return CachedSummary(_summary(tenant_id, period), "bypass")
    key = _key(tenant_id, period)
    version_keys = [_version_key(tenant_id, month) for month in period.months]
    try:
        found = cache.get_many([key, *version_keys])
        versions = tuple(found.get(k) for k in version_keys)
        entry = found.get(key)
        if entry is not None and entry.versions == versions:
            if time.time() - entry.computed_at < FRESH_FOR:
                return CachedSummary(entry.body, "hit")
            _refresh_in_background(tenant_id, period, versions)
            return CachedSummary(entry.body, "stale")
        return CachedSummary(_single_flight(tenant_id, period, versions), "miss")
    except CACHE_ERRORS as exc:
        cache_failed(exc, BYPASSED)
        return CachedSummary(_summary(tenant_id, period), "bypass")


def _summary(
    tenant_id: int, period: UsagePeriod, *, timeout_ms: int = QUERY_TIMEOUT_MS
) -> bytes:
    """The summary's body, read in a transaction scoped to the tenant."""
    with tenant_context([tenant_id]):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
        return usage_summary_json(tenant_id=tenant_id, period=period)


def _store(
    tenant_id: int,
    period: UsagePeriod,
    versions: tuple,
    *,
    timeout_ms: int = QUERY_TIMEOUT_MS,
) -> bytes:
    body = _summary(tenant_id, period, timeout_ms=timeout_ms)
    try:
        cache.set(_key(tenant_id, period), Entry(versions, time.time(), body), TTL)
    except CACHE_ERRORS as exc:
        cache_failed(exc, "a usage summary was not stored")
    return body


def _current(key: str, versions: tuple) -> bytes | None:
    entry = cache.get(key)
    return entry.body if entry is not None and entry.versions == versions else None


def _release(lock: str, owner: str) -> None:
    # Only one's own lock: a holder that outlived LOCK_TTL must not free
    # the next holder's. (Not atomic; the timeout above makes it moot.)
    with contextlib.suppress(*CACHE_ERRORS):
        if cache.get(lock) == owner:
            cache.delete(lock)


def _single_flight(tenant_id: int, period: UsagePeriod, versions: tuple) -> bytes:
    """
    Run the query once for every caller that missed: the lock's holder runs
    it, the others wait for its entry as long as a lock is held, and take
    the lock over when it is gone (its holder failed, or died and the lock
    expired) with no entry left behind.
    """
    key = _key(tenant_id, period)
    lock, owner = f"{key}:lock", uuid.uuid4().hex
    deadline, pause = time.monotonic() + LOCK_TTL, POLL_FIRST
    while time.monotonic() < deadline:
        if cache.add(lock, owner, LOCK_TTL):
            try:
                # The lock may be free because its holder just stored the
                # entry this caller missed: look again before querying.
                return _current(key, versions) or _store(tenant_id, period, versions)
            finally:
                _release(lock, owner)
        time.sleep(pause)
        pause = min(pause * 1.5, POLL_MOST)
        body = _current(key, versions)
        if body is not None:
            return body
    # A whole lock's life without an answer: the cache misbehaves.
    return _summary(tenant_id, period)


def _refresh_in_background(
    tenant_id: int, period: UsagePeriod, versions: tuple
) -> None:
    lock, owner = f"{_key(tenant_id, period)}:lock", uuid.uuid4().hex
    if not cache.add(lock, owner, LOCK_TTL):
        return  # being computed already
    thread = threading.Thread(
        target=_refresh,
        args=(tenant_id, period, versions, lock, owner),
        name=f"usage-refresh-{tenant_id}",
        daemon=True,
    )
    thread.start()


def _refresh(
    tenant_id: int, period: UsagePeriod, versions: tuple, lock: str, owner: str
) -> None:
    # A thread of its own: its own connection, closed when it is done.
    try:
        _store(tenant_id, period, versions)
    except Exception:
        logger.exception("usage refresh failed: tenant %s %s", tenant_id, period.label)
    finally:
        _release(lock, owner)
        connections.close_all()


def usage_cache_invalidate(*, tenant_id: int, days: Iterable[date]) -> None:
    """
    Make the cached summaries covering ``days`` of the tenant stale. Called
    when a ledger write commits; a cache outage is logged, not raised (the
    entries it leaves expire within ``TTL``). Tried even while the cache
    seems down to this process: other processes may be reading it.
    """
    months = {month_label(day.year, day.month - 1) for day in days}
    if not months:
        return
    version = uuid.uuid4().hex
    try:
        cache.set_many(
            {_version_key(tenant_id, month): version for month in months}, None
        )
    except CACHE_ERRORS as exc:
        cache_failed(
            exc,
            f"tenant {tenant_id}'s usage summaries of {', '.join(sorted(months))} "
            f"may be stale for up to {TTL} s",
        )
