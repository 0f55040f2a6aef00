"""
Keeping a long run's garbage collections short.

A full collection walks every object the process holds, and most of them
are Django, the client libraries and the app's own modules, alive until the
process ends. A sync allocates millions of short-lived containers (a page
of observations, a page of rows), which set off full collections over and
over: 14% of a backfill's CPU went on walking that same heap (issue 16).
Frozen, those objects are left out of every collection until the run ends.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def heap_frozen() -> Iterator[None]:
    """
    Leave the objects alive now out of garbage collections until the block
    ends. A process that froze its heap already (a forking server does at
    start-up) keeps it the way it is.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
