from django.core.management.base import BaseCommand

from anomalies.management.commands._days import (
    add_day_arguments,
    days_from_options,
    tenant_id_from_options,
)
from anomalies.pipeline import rollup_days


class Command(BaseCommand):
    help = "Roll the ledger up into daily cost summaries per tenant and scope."

    def add_arguments(self, parser):
        add_day_arguments(parser)

    def handle(self, *args, **options):
        days = days_from_options(options)
        run = rollup_days(days, tenant_id=tenant_id_from_options(options))
        self.stdout.write(
            f"rollup {days[0]}..{days[-1]}: {run.status}, "
            f"{run.summaries_written} summaries in {run.duration_ms} ms"
        )
