"""Argument helpers shared by the billing commands."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from django.core.management.base import CommandError

from billing.models import Tenant
from billing.progress import BarProgress, LogProgress, Progress


def parse_moment(value: str) -> datetime:
    """An ISO date or datetime; naive values are UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"Not an ISO date or datetime: {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def tenant_by_slug(slug: str) -> Tenant:
    try:
        return Tenant.objects.get(slug=slug)
    except Tenant.DoesNotExist:
        raise CommandError(f"No tenant with slug {slug!r}.") from None


def progress_factory() -> type[Progress]:
    # A bar for a person at a terminal; rate/percent/heartbeat logs for cron.
    return BarProgress if sys.stderr.isatty() else LogProgress
