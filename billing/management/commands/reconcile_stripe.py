from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing.audit import Actor
from billing.management.commands._options import parse_moment, tenant_by_slug
from billing.stripe_reconcile import DAYS_CHECKED, stripe_reconcile_tenants


class Command(BaseCommand):
    help = (
        "Check what Stripe holds against the ledger and the outbox, per tenant "
        "and UTC day, and send the pending reports. Not the sync's 'reconcile', "
        "which re-reads Langfuse."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", action="append", help="Tenant slug (repeat).")
        parser.add_argument("--since", help="First UTC day (default: a week ago).")
        parser.add_argument("--until", help="Last UTC day (default: yesterday).")
        parser.add_argument(
            "--check-only", action="store_true", help="Report, send nothing."
        )
        parser.add_argument(
            "--resend-lost",
            action="store_true",
            help="Also send again, with their identifiers, the sent reports of "
            "minutes where Stripe holds nothing (check first that nobody "
            "removed that usage in Stripe on purpose).",
        )

    def handle(self, *args, tenant, since, until, check_only, resend_lost, **options):
        until = (
            parse_moment(until).date()
            if until
            else timezone.now().date() - timedelta(days=1)
        )
        since = (
            parse_moment(since).date()
            if since
            else until - timedelta(days=DAYS_CHECKED - 1)
        )
        if since > until:
            raise CommandError("--since must not be after --until.")
        results = stripe_reconcile_tenants(
            since=since,
            until=until,
            fix=not check_only,
            resend_lost=resend_lost and not check_only,
            actor=Actor.job("reconcile_stripe"),
            tenant_ids=[tenant_by_slug(slug).pk for slug in tenant] if tenant else None,
        )
        for result in results:
            self.stdout.write(
                f"{result.tenant.slug:<12} {result.day} {result.status:<5} "
                f"sent {result.sent_value}, Stripe {result.stripe_value}"
                + (f"; {result.details}" if result.details else "")
            )
        off = [r for r in results if r.status != "match"]
        self.stdout.write(
            f"{len(results) - len(off)} of {len(results)} tenant-days match Stripe."
        )
        if off:
            raise CommandError(f"{len(off)} tenant-day(s) drift from Stripe.")
