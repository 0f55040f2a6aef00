"""
UTC days: the unit the ledger is billed, rolled up, reconciled and reported
in. One definition of a day's bounds, for every module that cuts by day.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta


def day_start(day: date) -> datetime:
    """The UTC day's first instant."""
    return datetime.combine(day, time.min, tzinfo=UTC)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The UTC day's first instant, and the next day's."""
    start = day_start(day)
    return start, start + timedelta(days=1)


def days_between(since: date, until: date) -> list[date]:
    """Every UTC day from ``since`` up to and including ``until``."""
    return [since + timedelta(days=n) for n in range((until - since).days + 1)]
