"""
One page in flight: the next page of a source is read while the current one
is merged, so the sync waits for Langfuse and for Postgres at the same time
instead of in turn.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from queue import SimpleQueue
from typing import TypeVar

T = TypeVar("T")
_END = object()


def prefetched(items: Iterator[T]) -> Iterator[T]:
    """
    Yield what ``items`` yields, reading item n + 1 in a thread while the
    caller works on item n: two items held at most, the one being worked on
    and the one being read. An exception of ``items`` is raised where its
    item would have been yielded. ``items`` must not touch the database (the
    thread has no connection of its own).
    """
    handoff: SimpleQueue = SimpleQueue()
    # Released once per item the caller takes: the producer reads one ahead.
    wanted = threading.Semaphore(1)
    stop = threading.Event()

    def produce() -> None:
        while True:
            wanted.acquire()
            if stop.is_set():
                return
            try:
                item = next(items)
            except StopIteration:
                handoff.put((_END, None))
                return
            except BaseException as exc:  # raised in the caller, where it belongs
                handoff.put((_END, exc))
                return
            handoff.put((item, None))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = handoff.get()
            if error is not None:
                raise error
            if item is _END:
                return
            wanted.release()
            yield item
    finally:
        stop.set()
        wanted.release()
        thread.join()
        close = getattr(items, "close", None)
        if close is not None:
            close()
