"""
Scheduled work runs once per tick, however many schedulers run.

Two ``rqcron`` processes (a deploy, or a mistake) each enqueue every
scheduled job; RQ's scheduler has no leader. The scheduled functions claim
their tick in Redis first (``SET NX`` on the function, its arguments and the
minute the job was enqueued in), so the first copy does the work and the
others return at once. The tick is the enqueue time, not the run time, so a
copy that waited in the queue for a busy worker still finds it claimed.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import django_rq
from rq import get_current_job

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

TICK_SECONDS = 60
# Claims outlive their tick a little, then expire on their own.
CLAIM_SECONDS = 10 * TICK_SECONDS


def _tick() -> int:
    job = get_current_job()
    moment = job.enqueued_at.timestamp() if job and job.enqueued_at else time.time()
    return int(moment // TICK_SECONDS)


def once_per_tick(func: F) -> F:
    """Run ``func`` for the first copy of a tick's job only; None for the rest."""
    name = f"{func.__module__}.{func.__qualname__}"

    @functools.wraps(func)
    def claimed(*args: Any, **kwargs: Any) -> Any:
        arguments = ",".join(map(str, (*args, *sorted(kwargs.items()))))
        key = f"billing:tick:{name}({arguments}):{_tick()}"
        connection = django_rq.get_connection("default")
        if not connection.set(key, 1, nx=True, ex=CLAIM_SECONDS):
            logger.info("%s: this tick is already done by another scheduler", name)
            return None
        return func(*args, **kwargs)

    return claimed  # type: ignore[return-value]
