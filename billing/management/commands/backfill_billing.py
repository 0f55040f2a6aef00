from django.core.management.base import BaseCommand, CommandError

from billing.management.commands._options import (
    parse_moment,
    progress_factory,
    tenant_by_slug,
)
from billing.sync import backfill_tenant


class Command(BaseCommand):
    help = (
        "Bill a window of history for one tenant, one UTC day at a time. Safe "
        "beside the scheduler: it waits for the tenant's sync lock per day, and "
        "the ledger's unique keys make re-reading billed traces a no-op."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="Tenant slug.")
        parser.add_argument("--since", required=True, help="ISO date/datetime (UTC).")
        parser.add_argument("--until", required=True, help="ISO date/datetime (UTC).")
        parser.add_argument("--dry-run", action="store_true")

    def handle(self, *args, tenant, since, until, dry_run, **options):
        since, until = parse_moment(since), parse_moment(until)
        if since >= until:
            raise CommandError("--since must be before --until.")
        runs = backfill_tenant(
            tenant_id=tenant_by_slug(tenant).pk,
            since=since,
            until=until,
            dry_run=dry_run,
            progress=progress_factory(),
        )
        for run in runs:
            self.stdout.write(
                f"{run.window_start:%Y-%m-%d}: {run.status}, {run.traces_fetched} "
                f"traces, {run.billed} billed, {run.skipped} skipped"
                + (f"; {run.error}" if run.error else "")
            )
        if runs and runs[-1].status != "succeeded":
            raise CommandError("Backfill stopped; fix the error and run it again.")
