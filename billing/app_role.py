"""
The Postgres role the application connects as.

Migrations run as the owner of the tables; the application runs as this role,
which is neither superuser nor BYPASSRLS nor owner, so the RLS policies in
``billing.rls`` apply to every query it makes.
"""

from __future__ import annotations

from django.db import connection
from psycopg import sql

APPEND_ONLY_TABLES = ("billing_auditlog",)


def app_role_ensure(*, role: str, password: str | None = None) -> None:
    """Create or tighten ``role`` and grant it DML on the current schema."""
    name = sql.Identifier(role)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
        verb = sql.SQL("ALTER") if cursor.fetchone() else sql.SQL("CREATE")
        options = sql.SQL(
            "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION"
        )
        statement = sql.SQL("{} ROLE {} {}").format(verb, name, options)
        if password:
            statement = sql.SQL("{} PASSWORD {}").format(
                statement, sql.Literal(password)
            )
        database = sql.Identifier(connection.settings_dict["NAME"])
        for query in (
            statement,
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, name),
            sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(name),
            sql.SQL(
                "GRANT SELECT, INSERT, UPDATE, DELETE "
                "ON ALL TABLES IN SCHEMA public TO {}"
            ).format(name),
            sql.SQL(
                "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}"
            ).format(name),
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
                "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}"
            ).format(name),
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
                "GRANT USAGE, SELECT ON SEQUENCES TO {}"
            ).format(name),
            *(
                sql.SQL("REVOKE UPDATE, DELETE, TRUNCATE ON {} FROM {}").format(
                    sql.Identifier(table), name
                )
                for table in APPEND_ONLY_TABLES
            ),
        ):
            cursor.execute(query.as_string(cursor.connection))
