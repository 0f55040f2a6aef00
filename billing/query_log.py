"""The SQL Django keeps while DEBUG is on, and long runs that drop it."""

from django.conf import settings
from django.db import reset_queries


def query_log_forget() -> None:
    """
    Drop the statements Django logged so far. With DEBUG on it keeps the
    last 9000 of each connection, with their parameters: a page of ledger
    rows in each write, 150 MB more over a 200k-trace sync. Long runs call
    this once a page; with DEBUG off nothing is kept and this does nothing.
    """
    if settings.DEBUG:
        reset_queries()
