import os

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from billing.app_role import app_role_ensure


class Command(BaseCommand):
    help = (
        "Create (or tighten) the non-superuser Postgres role the app connects as, "
        "so row-level security applies. Run as the table owner after migrate."
    )

    def add_arguments(self, parser):
        parser.add_argument("--role", default="billing_app")
        parser.add_argument(
            "--password-env",
            default="APP_ROLE_PASSWORD",
            help="Environment variable holding the password (never a CLI argument).",
        )

    def handle(self, *args, role: str, password_env: str, **options):
        if connection.vendor != "postgresql":
            raise CommandError("Row-level security needs Postgres (DATABASE_URL).")
        app_role_ensure(role=role, password=os.environ.get(password_env) or None)
        self.stdout.write(f"Role {role} is ready; connect the app with it.")
