"""
The cache is optional: its callers fall back to the database when it fails,
and after a failure this process leaves it alone for ``PAUSE``.

A Redis that hangs would otherwise cost every API request a socket timeout
per cache call (the settings' 1 s), three or four a request; a Redis that is
down, a connection refused per call.
"""

from __future__ import annotations

import logging
import time

from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

CACHE_ERRORS = (RedisError, OSError)
PAUSE = 5.0

_down_until = 0.0


def cache_up() -> bool:
    """Whether the cache is worth asking (no failure in the last ``PAUSE``)."""
    return time.monotonic() >= _down_until


def cache_failed(exc: Exception, consequence: str) -> None:
    """Note a failure: log it with what it costs, and pause the cache."""
    global _down_until
    _down_until = time.monotonic() + PAUSE
    logger.warning(
        "cache unavailable (%s): %s; not asked again for %s s",
        type(exc).__name__,
        consequence,
        PAUSE,
    )


def cache_reset() -> None:
    """Ask the cache again now (tests, and a process that knows better)."""
    global _down_until
    _down_until = 0.0
