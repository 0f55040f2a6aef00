from decimal import Decimal

from django.core.management.base import BaseCommand, CommandError

from billing.audit import Actor
from billing.management.commands._options import parse_moment, tenant_by_slug
from billing.models import Tenant
from billing.money import exact_usd
from billing.price_table import price_table_load
from billing.reprice import RepriceRefused, RepriceResult, ledger_reprice


class Command(BaseCommand):
    help = (
        "Reprice a period with the prices in force then and print the "
        "difference per tenant, UTC day and model; with --apply, record it: "
        "adjustments for reported usage (billed as their own meter events by "
        "the next sync), unbilled usage repriced in place."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--tenant", action="append", help="Tenant slug (repeat; default: all)."
        )
        parser.add_argument("--since", required=True, help="First UTC day.")
        parser.add_argument("--until", required=True, help="Last UTC day.")
        parser.add_argument(
            "--apply", action="store_true", help="Record the difference."
        )

    def handle(self, *args, tenant, since, until, apply, **options):
        since, until = parse_moment(since).date(), parse_moment(until).date()
        tenants = (
            [tenant_by_slug(slug) for slug in tenant]
            if tenant
            else list(Tenant.objects.order_by("slug"))
        )
        prices = price_table_load()
        self.stdout.write(
            f"Repricing {since} to {until} with the prices in force then"
            + ("." if apply else " (dry run: nothing is written).")
        )
        self.stdout.write(
            f"{'tenant':<16} {'day':<10}  {'model':<32} {'obs':>6} "
            f"{'before':>16} {'after':>16} {'difference':>16}"
        )
        total = Decimal(0)
        for each in tenants:
            try:
                result = ledger_reprice(
                    tenant=each,
                    since=since,
                    until=until,
                    apply=apply,
                    actor=Actor.job("reprice"),
                    prices=prices,
                )
            except RepriceRefused as exc:
                raise CommandError(str(exc)) from None
            self.print_result(result)
            total += result.difference
        self.stdout.write(f"Difference in all: {exact_usd(total, signed=True)}.")
        if not apply and total:
            self.stdout.write("Run again with --apply to record it.")

    def print_result(self, result: RepriceResult) -> None:
        slug = result.tenant.slug
        for (day, model), line in sorted(result.lines.items()):
            self.stdout.write(
                f"{slug:<16} {day}  {model:<32} {line.observations:>6} "
                f"{exact_usd(line.before):>16} {exact_usd(line.after):>16} "
                f"{exact_usd(line.difference, signed=True):>16}"
            )
        billed = exact_usd(result.billed_difference, signed=True)
        unbilled = exact_usd(result.unbilled_difference, signed=True)
        if result.applied:
            done = (
                f"reported usage {billed} in {result.adjustments} adjustment(s), "
                "billed as their own meter events by the next sync; unbilled "
                f"usage {unbilled} repriced in place in "
                f"{result.repriced_in_place} record(s)"
            )
        else:
            done = (
                f"reported usage {billed} (would be adjustments), "
                f"unbilled usage {unbilled} (would be repriced in place)"
            )
        self.stdout.write(
            f"{slug}: {exact_usd(result.difference, signed=True)}: {done}; "
            f"{result.unchanged} observation(s) unchanged."
        )
        for reason, count in sorted(result.kept.items()):
            self.stdout.write(
                f"{slug}: {count} observation(s) kept as they were: {reason}."
            )
