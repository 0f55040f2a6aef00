"""The --date / --since --until options shared by the analytics commands."""

from __future__ import annotations

from datetime import date

from django.core.management.base import CommandError

from anomalies.pipeline import previous_utc_day
from billing.models import Tenant
from billing.utc_days import days_between


def add_day_arguments(parser) -> None:
    parser.add_argument("--date", help="One UTC day, YYYY-MM-DD (default: yesterday).")
    parser.add_argument("--since", help="First UTC day of a range, YYYY-MM-DD.")
    parser.add_argument("--until", help="Last UTC day of a range (inclusive).")
    parser.add_argument("--tenant", help="Tenant slug (default: every active tenant).")


def _day(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(
            f"{option} must be a date like 2026-11-24, not {value!r}."
        ) from None


def days_from_options(options: dict) -> list[date]:
    if options["date"] and (options["since"] or options["until"]):
        raise CommandError("Give either --date or --since/--until, not both.")
    if bool(options["since"]) != bool(options["until"]):
        raise CommandError("--since and --until go together.")
    if options["since"]:
        since, until = (
            _day(options["since"], "--since"),
            _day(options["until"], "--until"),
        )
        if since > until:
            raise CommandError("--since must not be after --until.")
        return days_between(since, until)
    return [_day(options["date"], "--date") if options["date"] else previous_utc_day()]


def tenant_id_from_options(options: dict) -> int | None:
    if not options["tenant"]:
        return None
    tenant = Tenant.objects.filter(slug=options["tenant"]).first()
    if tenant is None:
        raise CommandError(f"No tenant with slug {options['tenant']!r}.")
    return tenant.pk
