import os

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from billing.app_role import WEB_ROLE, WORKER_ROLE, AppRoleError, app_roles_ensure


class Command(BaseCommand):
    help = (
        "Create (or tighten) the two non-superuser Postgres roles the app connects "
        "as, so row-level security applies: the web role, which can never lift "
        "RLS, and the worker role (jobs, scheduler, commands), which may do "
        "cross-tenant work. Idempotent. Run as the table owner after migrate."
    )

    def add_arguments(self, parser):
        parser.add_argument("--role", default=WEB_ROLE, help="The web role.")
        parser.add_argument(
            "--password-env",
            default="APP_ROLE_PASSWORD",
            help="Environment variable holding the web role's password "
            "(never a CLI argument). Unset: the password is left as it is.",
        )
        parser.add_argument("--worker-role", default=WORKER_ROLE)
        parser.add_argument(
            "--worker-password-env",
            default="WORKER_ROLE_PASSWORD",
            help="Environment variable holding the worker role's password.",
        )

    def handle(
        self,
        *args,
        role: str,
        password_env: str,
        worker_role: str,
        worker_password_env: str,
        **options,
    ):
        if connection.vendor != "postgresql":
            raise CommandError("Row-level security needs Postgres (DATABASE_URL).")
        try:
            app_roles_ensure(
                web_role=role,
                worker_role=worker_role,
                web_password=os.environ.get(password_env) or None,
                worker_password=os.environ.get(worker_password_env) or None,
            )
        except AppRoleError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(
            f"Role {role} is ready for the web process (it cannot lift RLS); "
            f"role {worker_role} for rqworker, rqcron and management commands."
        )
