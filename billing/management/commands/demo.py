"""
The demo behind ``make demo``: everything a newcomer needs to see the app work
without a Langfuse or Stripe account.

Starts the Langfuse and Stripe emulators in this process, fills Langfuse with
seeded usage, creates (or refreshes) one tenant per generated Langfuse project
with a Stripe customer, an admin login, a tenant-scoped operator login and
an operator API token, runs the sync, rolls the costs up and detects
anomalies (the generated usage carries a cost spike, a cost drop and a scope
that stops), prints a summary, then serves the admin and the API while the
emulators keep running.

The emulators start empty on every run, so a ledger kept from an earlier run
would read as billed but never sent to this run's Stripe. ``--fresh`` (which
``make demo`` passes, on the demo's own ``demo.sqlite3``) deletes the SQLite
file and migrates a new one first, so the summary compares one run's ledger
with one run's Stripe. It refuses anything but a SQLite file, and the
embedded default ``db.sqlite3`` too. Without it the run is still safe to
repeat: tenants are matched by slug, and rollup and detection are idempotent.

The ports are checked, and with ``--fresh`` the database locked, before
anything is written: a port already in use, or a database another demo holds,
stops the command with one line naming it and the variable that picks another.
"""

from __future__ import annotations

import errno
import fcntl
import secrets
import socket
from collections import Counter
from datetime import timedelta
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from anomalies.models import AnomalyType, CostAnomaly
from anomalies.pipeline import detect_days, rollup_days
from billing.audit import Actor
from billing.emulators.base import EmulatorServer
from billing.emulators.langfuse import LangfuseEmulator
from billing.emulators.scenario import generate_scenario
from billing.emulators.stripe import StripeEmulator
from billing.models import (
    Membership,
    StripeReconciliation,
    StripeReport,
    Tenant,
    UsageRecord,
)
from billing.models.tenants import DEFAULT_METER_EVENT_NAME
from billing.services import (
    api_token_create,
    membership_set,
    tenant_create,
    tenant_update,
)
from billing.stripe_reconcile import stripe_reconcile_tenants
from billing.stripe_sink import stripe_client
from billing.sync import eligible_tenant_ids, sync_tenants
from billing.tenancy import tenant_context
from billing.utc_days import days_between

MICRO_USD = Decimal("0.000001")
DEMO_MIN_AMOUNT = Decimal("0.01")
DEMO_MIN_SHARE = Decimal("0.001")


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
        parser.add_argument(
            "--fresh",
            action="store_true",
            help="Delete the SQLite database file and migrate a new one first, "
            "so that the ledger matches the emulators, which start empty. "
            "make demo passes it, on its own demo.sqlite3.",
        )

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError("The demo runs with DEBUG=1 only (make demo sets it).")
        stripe_url = urlsplit(settings.STRIPE_API_BASE)
        if stripe_url.hostname not in ("127.0.0.1", "localhost"):
            raise CommandError("STRIPE_API_BASE must point at the local emulator.")

        if stripe_url.port is None:
            raise CommandError(
                "STRIPE_API_BASE must name the emulator's port, "
                "e.g. http://127.0.0.1:8011."
            )
        if options["fresh"]:
            self._check_demo_database()

        # Bind every port before touching the database: a demo still running
        # must not lose its data to a second one that cannot start anyway.
        if not options["no_serve"]:
            self._check_free(options["port"], "the admin", "DEMO_PORT")
        langfuse = LangfuseEmulator()
        stripe_emulator = StripeEmulator(api_keys=(settings.STRIPE_API_KEY,))
        langfuse_server = self._bind(
            langfuse, options["langfuse_port"], "Langfuse", "DEMO_LANGFUSE_PORT"
        )
        try:
            stripe_server = self._bind(
                stripe_emulator, stripe_url.port, "Stripe", "DEMO_STRIPE_PORT"
            )
        except CommandError:
            # Never started, so stop() would wait forever: just release it.
            langfuse_server._server.server_close()
            raise

        if options["fresh"]:
            self._lock_database()
            self._recreate_database()
        elif UsageRecord.objects.exists():
            self.stdout.write(
                "Note: this database keeps the ledger of an earlier run, but the "
                "emulators start empty: Stripe shows this run's meter events only "
                "(--fresh starts from an empty database)."
            )

        scenario = generate_scenario(
            seed=options["seed"],
            tenants=options["tenants"],
            traces_per_tenant=options["traces"],
            days=options["days"],
            now=timezone.now(),
        )
        scenario.load_into(langfuse)
        langfuse_server.start()
        stripe_server.start()
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
                # The demo's tenants spend about $2 a day: the default
                # floors ($1, 1% of the day) would hide what it injects.
                "anomaly_min_amount": DEMO_MIN_AMOUNT,
                "anomaly_min_share": DEMO_MIN_SHARE,
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
        self._reconciliation(scenario)

        self.stdout.write("")
        self.stdout.write(f"Admin:    http://127.0.0.1:{options['port']}/admin/")
        self.stdout.write(f"  login admin / {admin_password} (superuser)")
        self.stdout.write(
            f"  login operator / {operator_password} (sees {tenants[0].name} only)"
        )
        token = api_token_create(
            tenant=tenants[0], name="demo", role=Membership.Role.OPERATOR, actor=actor
        ).raw
        self.stdout.write(f"Health:   http://127.0.0.1:{options['port']}/health")
        base = f"http://127.0.0.1:{options['port']}/api/v1"
        self.stdout.write(f"API:      {base}/docs")
        self.stdout.write(f"  token {token} (operator of {tenants[0].name})")
        self.stdout.write(
            f'  curl -H "Authorization: Bearer {token}" '
            f'"{base}/usage?period={timezone.now():%Y-%m}"'
        )
        if options["no_serve"]:
            langfuse_server.stop()
            stripe_server.stop()
            return
        call_command("runserver", f"127.0.0.1:{options['port']}", use_reloader=False)

    @staticmethod
    def _check_demo_database() -> None:
        name = connection.settings_dict["NAME"]
        if connection.vendor != "sqlite" or str(name) == ":memory:":
            raise CommandError(
                "--fresh deletes the database: it runs on a SQLite file of the "
                "demo's own only (make demo uses demo.sqlite3)."
            )
        if Path(name).resolve() == (Path(settings.BASE_DIR) / "db.sqlite3").resolve():
            raise CommandError(
                f"--fresh would delete {name}, the embedded default database; "
                "point DATABASE_URL at a file of the demo's own "
                "(make demo uses demo.sqlite3)."
            )

    def _lock_database(self) -> None:
        # Held until this process exits (serving included): a second demo on
        # other ports must not delete the database this one serves.
        name = connection.settings_dict["NAME"]
        self._lock_file = open(f"{name}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CommandError(
                f"The demo database {name} is in use by another demo; stop it "
                "or give this one a file of its own, e.g. "
                "`DEMO_DB=demo2.sqlite3 make demo`."
            ) from None

    def _recreate_database(self) -> None:
        # A new file rather than a flush: the ledger's triggers keep derived
        # tables (daily scope usage), and emptying the tables one by one in
        # name order leaves those derived rows negative.
        name = connection.settings_dict["NAME"]
        connection.close()
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{name}{suffix}").unlink(missing_ok=True)
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write(
            f"Fresh demo database {name}: the emulators start empty, "
            "so does the ledger."
        )

    @staticmethod
    def _port_error(port: int, what: str, variable: str, error: OSError):
        if error.errno == errno.EADDRINUSE:
            problem = "is already in use (is another demo running?)"
        else:
            problem = f"cannot be used ({error.strerror or error})"
        return CommandError(
            f"Port {port} for {what} on 127.0.0.1 {problem}; stop what uses it "
            f"or choose another port, e.g. `{variable}={port + 100} make demo`."
        )

    def _bind(self, emulator, port: int, name: str, variable: str) -> EmulatorServer:
        try:
            return EmulatorServer(emulator, port=port)
        except OSError as error:
            what = f"the {name} emulator"
            raise self._port_error(port, what, variable, error) from None

    def _check_free(self, port: int, what: str, variable: str) -> None:
        # Bound the way runserver binds (SO_REUSEADDR), then released: a
        # port in TIME_WAIT is free, one with a listener is not.
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise self._port_error(port, what, variable, error) from None
        finally:
            probe.close()

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

    def _reconciliation(self, scenario) -> None:
        # Finished days only, as the daily job checks: today's usage is
        # still settling and being reported.
        results = stripe_reconcile_tenants(
            since=scenario.window_start.date(),
            until=timezone.now().date() - timedelta(days=1),
            fix=False,
            actor=Actor.system(),
        )
        matching = sum(r.status == StripeReconciliation.Status.MATCH for r in results)
        self.stdout.write("")
        self.stdout.write(
            f"Stripe reconciliation: {matching} of {len(results)} tenant-days "
            "match (ledger = outbox = Stripe's meter summaries)"
        )
        if matching != len(results):
            raise CommandError("The demo's ledger drifts from Stripe.")

    def _summary(self, runs, stripe_emulator: StripeEmulator) -> None:
        self.stdout.write("")
        self.stdout.write("Sync:")
        for run in runs:
            tenant = run.tenant
            with tenant_context([tenant.pk]):
                billed = UsageRecord.objects.for_tenant(tenant).filter(
                    status="reported"
                )
                ledger_cost = billed.aggregate(total=Sum("cost"))["total"] or 0
                # Whole micro-dollars, rounded down as the meter bills them.
                ledger_cost = Decimal(ledger_cost).quantize(MICRO_USD, ROUND_FLOOR)
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
                f"{run.reports_sent:>3} meter events; ledger ${ledger_cost} = "
                f"{units} micro-USD sent, Stripe meter total {stripe_total}"
            )
