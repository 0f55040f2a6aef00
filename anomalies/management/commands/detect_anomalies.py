from django.core.management.base import BaseCommand

from anomalies.management.commands._days import (
    add_day_arguments,
    days_from_options,
    tenant_id_from_options,
)
from anomalies.pipeline import detect_days


class Command(BaseCommand):
    help = "Detect cost anomalies in the daily summaries (run rollup_costs first)."

    def add_arguments(self, parser):
        add_day_arguments(parser)

    def handle(self, *args, **options):
        days = days_from_options(options)
        run = detect_days(days, tenant_id=tenant_id_from_options(options))
        self.stdout.write(
            f"detection {days[0]}..{days[-1]}: {run.status}, "
            f"{run.scopes_examined} scopes, {run.anomalies_created} new, "
            f"{run.anomalies_updated} updated, {run.anomalies_reopened} reopened "
            f"in {run.duration_ms} ms"
        )
