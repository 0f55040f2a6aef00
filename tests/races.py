"""
Two admin requests racing for one row, for real: the row is held locked
until every request waits on it, so each has read the row before any of
them writes. Used by the tests of "two operators act at once".
"""

from __future__ import annotations

import html
import re
import threading
import time
from collections.abc import Callable

from django.db import connection, transaction
from django.db.models import QuerySet
from django.http import HttpResponse


def wait_for_lock_waiters(count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            # Inside a transaction the activity view is a snapshot: refresh it.
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0] >= count:
                return
            time.sleep(0.05)
    raise AssertionError(f"{count} requests never waited on the row lock")


def race_on_row(row: QuerySet, requests: list[Callable[[], HttpResponse]]) -> list[str]:
    """Run ``requests`` at once against the locked ``row``; their messages, sorted."""
    said: list[str] = []

    def run(request: Callable[[], HttpResponse]) -> None:
        try:
            # From the page itself: the test client's captured contexts are
            # shared between threads.
            said.extend(
                html.unescape(message)
                for message in re.findall(
                    r'<li class="(?:success|warning)">(.*?)</li>',
                    request().content.decode(),
                )
            )
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(r,)) for r in requests]
    with transaction.atomic():
        row.select_for_update().get()
        for thread in threads:
            thread.start()
        wait_for_lock_waiters(len(threads))
    for thread in threads:
        thread.join()
    return sorted(said)
