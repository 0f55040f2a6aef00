"""
The demo behind ``make demo``: everything a newcomer needs to see the app work
without a Langfuse or Stripe account.

Starts the Langfuse and Stripe emulators in this process, fills Langfuse with
seeded usage, creates (or refreshes) one tenant per generated Langfuse project
with a Stripe customer, an admin login and a tenant-scoped operator login,
runs the sync, rolls the costs up and detects anomalies (the generated usage
carries a cost spike, a cost drop and a scope that stops), prints a summary,
then serves the admin while the emulators keep running. Safe to run again:
tenants are matched by slug, and rollup and detection are idempotent.
"""

from __future__ import annotations

import secrets
from collections import Counter
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Sum
from django.utils import timezone

from anomalies.models import AnomalyType, CostAnomaly
from anomalies.pipeline import detect_days, rollup_days
from billing.audit import Actor
from billing.emulators.base import EmulatorServer
from billing.emulators.langfuse import LangfuseEmulator
from billing.emulators.scenario import generate_scenario
from billing.emulators.stripe import StripeEmulator
from billing.models import Membership, StripeReport, Tenant, UsageRecord
from billing.models.tenants import DEFAULT_METER_EVENT_NAME
from billing.rollup import days_between
from billing.services import membership_set, tenant_create, tenant_update
from billing.stripe_sink import stripe_client
from billing.sync import eligible_tenant_ids, sync_tenants
from billing.tenancy import tenant_context


class Command(BaseCommand):
    help = (
        "Set up and run the demo against the built-in emulators, then serve the admin."
    )

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-serve", action="store_true")
        parser.add_argument("--seed", type=int, default=42)
        parser.add_argument("--tenants", type=int, default=3)
        # Enough traffic per scope and day for the anomaly rules to judge.
        parser.add_argument("--traces", type=int, default=2000, help="per tenant")
        parser.add_argument("--days", type=int, default=14)
        parser.add_argument("--langfuse-port", type=int, default=8010)

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError("The demo runs with DEBUG=1 only (make demo sets it).")
        stripe_url = urlsplit(settings.STRIPE_API_BASE)
        if stripe_url.hostname not in ("127.0.0.1", "localhost"):
            raise CommandError("STRIPE_API_BASE must point at the local emulator.")

        scenario = generate_scenario(
            seed=options["seed"],
            tenants=options["tenants"],
            traces_per_tenant=options["traces"],
            days=options["days"],
            now=timezone.now(),
        )
        langfuse = LangfuseEmulator()
        scenario.load_into(langfuse)
        stripe_emulator = StripeEmulator(api_keys=(settings.STRIPE_API_KEY,))
        langfuse_server = EmulatorServer(
            langfuse, port=options["langfuse_port"]
        ).start()
        stripe_server = EmulatorServer(stripe_emulator, port=stripe_url.port).start()
        self.stdout.write(f"Langfuse emulator: {langfuse_server.url}")
        self.stdout.write(f"Stripe emulator:   {stripe_server.url}")

        client = stripe_client()
        client.v1.billing.meters.create(
            params={
                "display_name": "LLM usage",
                "event_name": DEFAULT_METER_EVENT_NAME,
                "default_aggregation": {"formula": "sum"},
            }
        )
        actor = Actor.system()
        tenants = []
        for generated in scenario.tenants:
            customer = client.v1.customers.create(params={"name": generated.name})
            fields = {
                "name": generated.name,
                "stripe_customer_id": customer.id,
                "langfuse_host": langfuse_server.url,
                "langfuse_public_key": generated.public_key,
            }
            existing = Tenant.objects.filter(slug=generated.slug).first()
            if existing:
                tenant = tenant_update(
                    tenant=existing,
                    actor=actor,
                    langfuse_secret_key=generated.secret_key,
                    **fields,
                )
            else:
                tenant = tenant_create(
                    actor=actor,
                    slug=generated.slug,
                    langfuse_secret_key=generated.secret_key,
                    **fields,
                )
            tenants.append(tenant)

        admin_password = self._login("admin", superuser=True)
        operator_password = self._login("operator", superuser=False)
        operator = get_user_model().objects.get(username="operator")
        membership_set(
            tenant=tenants[0], user=operator, role=Membership.Role.OPERATOR, actor=actor
        )

        # SQLite is single-writer: the demo syncs tenants one after another.
        runs = sync_tenants(eligible_tenant_ids(), concurrency=1)
        self._summary(runs, stripe_emulator)
        self._analytics(scenario)

        self.stdout.write("")
        self.stdout.write(f"Admin:    http://127.0.0.1:{options['port']}/admin/")
        self.stdout.write(f"  login admin / {admin_password} (superuser)")
        self.stdout.write(
            f"  login operator / {operator_password} (sees {tenants[0].name} only)"
        )
        if options["no_serve"]:
            langfuse_server.stop()
            stripe_server.stop()
            return
        call_command("runserver", f"127.0.0.1:{options['port']}", use_reloader=False)

    def _login(self, username: str, *, superuser: bool) -> str:
        # A fresh password each run, printed once; the demo never ships a
        # default credential.
        password = secrets.token_urlsafe(9)
        user, _ = get_user_model().objects.get_or_create(username=username)
        user.is_staff = True
        user.is_superuser = superuser
        user.set_password(password)
        user.save()
        if not superuser:
            user.user_permissions.set(
                Permission.objects.filter(
                    content_type__app_label__in=["billing", "anomalies"],
                    codename__startswith="view_",
                )
            )
        return password

    def _analytics(self, scenario) -> None:
        days = days_between(scenario.window_start.date(), timezone.now().date())
        rollup = rollup_days(days)
        # Today is not over: its partial totals would read as drops and
        # missing data (the schedule, too, detects only finished days).
        detect = detect_days(days[:-1])
        self.stdout.write("")
        self.stdout.write(
            f"Rollup: {rollup.summaries_written} summaries over {len(days)} days; "
            f"detection over the {len(days) - 1} finished ones: "
            f"{detect.anomalies_created} new anomalies"
        )
        found = Counter(CostAnomaly.objects.values_list("anomaly_type", flat=True))
        for kind in AnomalyType.values:
            self.stdout.write(f"  {kind:<18} {found.get(kind, 0)}")
        missing = [kind for kind in AnomalyType.values if not found.get(kind)]
        if missing:
            raise CommandError(
                f"The demo data should produce every anomaly type; none of {missing}."
            )

    def _summary(self, runs, stripe_emulator: StripeEmulator) -> None:
        self.stdout.write("")
        self.stdout.write("Sync:")
        for run in runs:
            if run is None:
                continue
            tenant = run.tenant
            with tenant_context([tenant.pk]):
                billed = UsageRecord.objects.for_tenant(tenant).filter(
                    status="reported"
                )
                ledger_cost = billed.aggregate(total=Sum("cost"))["total"] or 0
                held = (
                    UsageRecord.objects.for_tenant(tenant)
                    .filter(status="unpriced")
                    .count()
                )
                units = (
                    StripeReport.objects.for_tenant(tenant)
                    .filter(status=StripeReport.Status.SENT)
                    .aggregate(total=Sum("value"))["total"]
                    or 0
                )
            stripe_total = stripe_emulator.total_value(
                customer=tenant.stripe_customer_id,
                event_name=tenant.stripe_meter_event_name,
                api_key=settings.STRIPE_API_KEY,
            )
            self.stdout.write(
                f"  {tenant.slug:<10} {run.status:<9} {run.traces_fetched:>5} traces, "
                f"{run.billed:>5} billed, {run.skipped:>3} skipped, "
                f"{held:>3} held unpriced, "
                f"{run.reports_sent:>3} meter events; ledger ${ledger_cost:.6f} = "
                f"{units} micro-USD sent, Stripe meter total {stripe_total}"
            )
