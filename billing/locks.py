"""
One sync per tenant at a time, across processes and machines.

A Postgres session advisory lock: held across the run's many transactions,
released when the run ends or its connection dies, so a crashed worker never
leaves a tenant locked. A second scheduler or worker that finds the lock held
skips the tenant quietly (NetBox's job pattern). SQLite, the single-process
embedded default, gets a process-local lock with the same contract.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection

# The first key of the two-int advisory lock: this app's namespace for syncs.
SYNC_LOCK_NAMESPACE = 0x5E1C

_local_locks: dict[tuple[int, int], threading.Lock] = {}
_local_guard = threading.Lock()


@contextmanager
def advisory_lock(namespace: int, key: int, *, wait: bool = False) -> Iterator[bool]:
    """Yield True when this process now holds the (namespace, key) lock."""
    if connection.vendor != "postgresql":
        with _local_guard:
            lock = _local_locks.setdefault((namespace, key), threading.Lock())
        acquired = lock.acquire(blocking=wait)
        try:
            yield acquired
        finally:
            if acquired:
                lock.release()
        return

    function = "pg_advisory_lock" if wait else "pg_try_advisory_lock"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {function}(%s, %s)", [namespace, key])
        acquired = wait or cursor.fetchone()[0]
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [namespace, key])


def tenant_sync_lock(tenant_id: int, *, wait: bool = False):
    """One sync (or backfill day) per tenant at a time."""
    return advisory_lock(SYNC_LOCK_NAMESPACE, tenant_id, wait=wait)
