"""
Adaptive pacing for provider calls, one instance per tenant per run.

The rules come from the rate-limiting seed (001) and the lessons of its review:
the state is shared by every worker of one tenant's run and guarded by a lock
(its first version raced), every worker's 429 feeds it, ``Retry-After`` pauses
all workers at once but is capped, and jitter keeps workers that wake together
from firing together. It is never a process-wide singleton: one tenant's 429s
must not slow another tenant.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

# Seed 001: start with no delay; the first 429 sets 200 ms, each further 429
# doubles it up to 5 s; five successes in a row take 20 % off.
INITIAL_DELAY = 0.0
FIRST_BACKOFF = 0.2
MAX_DELAY = 5.0
RECOVERY_SUCCESSES = 5
RECOVERY_FACTOR = 0.8
# Below this the delay is noise; drop it to zero so a recovered run is full speed.
DELAY_FLOOR = 0.01
# A provider asking for minutes of silence would stall the whole run; take at
# most this much and let the next 429 ask again.
RETRY_AFTER_CAP = 30.0
# Up to this fraction of the delay is added at random to every wait.
JITTER_FRACTION = 0.25
# Workers starting together spread their first call over this many seconds.
START_JITTER = 0.1


class AdaptiveRateLimiter:
    """Thread-safe adaptive delay between calls to one provider for one tenant."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self.delay = INITIAL_DELAY
        self._successes = 0
        self._paused_until = 0.0
        self.rate_limited = 0
        self.calls = 0

    def start_jitter(self) -> None:
        """Sleep a little before a worker's first call (no thundering herd)."""
        self._sleep(self._rng.uniform(0, START_JITTER))

    def wait(self) -> None:
        """Block until the next call may go out; counts the call."""
        with self._lock:
            self.calls += 1
            pause = max(0.0, self._paused_until - self._clock())
            delay = self.delay
            jitter = self._rng.uniform(0, delay * JITTER_FRACTION) if delay else 0.0
        wait = max(pause, delay) + jitter
        if wait > 0:
            self._sleep(wait)

    def record_success(self) -> None:
        with self._lock:
            self._successes += 1
            if self._successes >= RECOVERY_SUCCESSES and self.delay:
                self.delay *= RECOVERY_FACTOR
                if self.delay < DELAY_FLOOR:
                    self.delay = 0.0
                self._successes = 0

    def record_rate_limit(self, retry_after: float | None = None) -> None:
        with self._lock:
            self.rate_limited += 1
            self._successes = 0
            self.delay = min(MAX_DELAY, self.delay * 2 if self.delay else FIRST_BACKOFF)
            if retry_after and retry_after > 0:
                pause_until = self._clock() + min(retry_after, RETRY_AFTER_CAP)
                self._paused_until = max(self._paused_until, pause_until)
