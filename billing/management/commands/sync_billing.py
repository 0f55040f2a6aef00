from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from billing.management.commands._options import progress_factory, tenant_by_slug
from billing.models import SyncRun
from billing.sync import RECONCILE_TIERS, eligible_tenant_ids, sync_tenants


class Command(BaseCommand):
    help = "Sync Langfuse usage into the ledger and report it to Stripe."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", help="Tenant slug (default: every eligible).")
        parser.add_argument(
            "--kind",
            choices=[SyncRun.Kind.SYNC, SyncRun.Kind.RECONCILE],
            default=SyncRun.Kind.SYNC,
            help="reconcile re-reads a look-back window and bills what is missing.",
        )
        parser.add_argument(
            "--tier",
            choices=list(RECONCILE_TIERS),
            default="hourly",
            help="How far reconcile looks back: hourly 24 h, daily 7 d, weekly 35 d.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Read and count; write nothing."
        )
        parser.add_argument(
            "--concurrency", type=int, default=4, help="Tenants at once."
        )

    def handle(self, *args, tenant, kind, tier, dry_run, concurrency, **options):
        tenant_ids = (
            [tenant_by_slug(tenant).pk] if tenant else eligible_tenant_ids(kind)
        )
        try:
            runs = sync_tenants(
                tenant_ids,
                concurrency=concurrency,
                kind=kind,
                lookback=RECONCILE_TIERS[tier],
                dry_run=dry_run,
                progress=progress_factory(),
            )
        except DatabaseError as exc:
            # One clear line; --traceback shows the rest.
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CommandError(
                f"sync stopped by a database error: {type(exc).__name__}: {first_line}"
            ) from exc
        failed = []
        for run in runs:
            self.stdout.write(
                f"{run.tenant.slug}: {run.status}{' (dry run)' if dry_run else ''}, "
                f"{run.traces_fetched} traces fetched, {run.billed} billed, "
                f"{run.skipped} skipped, {run.healed} healed, "
                f"{run.adjustments} adjustments, {run.reports_sent} reports sent"
                + (f"; {run.error}" if run.error else "")
            )
            if run.status == SyncRun.Status.FAILED:
                failed.append(run.tenant.slug)
        if failed:
            # A scheduler or CI step must see the failure: exit non-zero.
            raise CommandError(
                f"sync failed for {len(failed)} tenant(s): {', '.join(sorted(failed))}"
            )
