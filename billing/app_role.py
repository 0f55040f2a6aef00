"""
The Postgres roles the application connects as.

Migrations run as the owner of the tables; the processes run as one of two
roles, neither superuser nor BYPASSRLS nor owner, so the RLS policies in
``billing.rls`` apply to every query they make:

- the web role (``billing_app``): the web process. It can never lift RLS:
  setting ``app.rls_bypass`` itself does nothing, so an injected statement
  or a bug sees at most the tenants named in its context.
- the worker role (``billing_worker``): RQ workers, the scheduler and the
  management commands, whose jobs span tenants on purpose. It is a member of
  the ``NOLOGIN`` group ``billing_rls_bypass``, the only thing the policy
  checks, so its bypass works, and only when a unit of work asks for it.

Both get the same DML on the schema's tables, and the audit log is
append-only for both. Ensuring is idempotent: a role that exists is only
changed where it differs (attributes, password when one is given,
membership of the group).
"""

from __future__ import annotations

from django.db import connection, transaction
from psycopg import sql

from billing.rls import BYPASS_GROUP

WEB_ROLE = "billing_app"
WORKER_ROLE = "billing_worker"
APPEND_ONLY_TABLES = ("billing_auditlog",)

# Attributes no application role may have (in the order _role_ensure reads
# them from pg_roles), and the option that takes each away.
FORBIDDEN_ATTRIBUTES = {
    "rolsuper": "NOSUPERUSER",
    "rolbypassrls": "NOBYPASSRLS",
    "rolcreatedb": "NOCREATEDB",
    "rolcreaterole": "NOCREATEROLE",
    "rolreplication": "NOREPLICATION",
}


class AppRoleError(Exception):
    """A role cannot be made safe to connect as; the message says why."""


def _execute(cursor, query: sql.Composable) -> None:
    cursor.execute(query.as_string(cursor.connection))


def _role_ensure(cursor, *, role: str, login: bool, password: str | None) -> None:
    """Create ``role`` or change what differs; ALTER only what must change
    (Postgres 15 lets only a superuser name SUPERUSER or BYPASSRLS at all)."""
    name = sql.Identifier(role)
    cursor.execute(
        "SELECT rolcanlogin, rolsuper, rolbypassrls, rolcreatedb, rolcreaterole, "
        "rolreplication FROM pg_roles WHERE rolname = %s",
        [role],
    )
    row = cursor.fetchone()
    if row is None:
        options = ["LOGIN" if login else "NOLOGIN", *FORBIDDEN_ATTRIBUTES.values()]
        verb = sql.SQL("CREATE")
    else:
        can_login, *attributes = row
        options = [
            option
            for option, value in zip(
                FORBIDDEN_ATTRIBUTES.values(), attributes, strict=True
            )
            if value
        ]
        if can_login != login:
            options.append("LOGIN" if login else "NOLOGIN")
        verb = sql.SQL("ALTER")
    statement = sql.SQL("{} ROLE {} {}").format(
        verb, name, sql.SQL(" ").join(sql.SQL(option) for option in options)
    )
    if password:
        statement = sql.SQL("{} PASSWORD {}").format(statement, sql.Literal(password))
    if row is None or options or password:
        _execute(cursor, statement)


def _is_member(cursor, *, role: str, group: str, directly: bool = False) -> bool:
    if directly:
        cursor.execute(
            "SELECT EXISTS (SELECT FROM pg_auth_members "
            "WHERE member = to_regrole(%s) AND roleid = to_regrole(%s))",
            [role, group],
        )
    else:
        cursor.execute(
            "SELECT coalesce(pg_has_role(%s, to_regrole(%s), 'MEMBER'), false)",
            [role, group],
        )
    return cursor.fetchone()[0]


def _owned_tables_of(cursor, *, role: str) -> list[str]:
    """RLS tables whose owner ``role`` is a member of (so it could bypass)."""
    cursor.execute(
        "SELECT c.relname FROM pg_class c "
        "WHERE c.relnamespace = current_schema()::regnamespace "
        "AND c.relrowsecurity AND pg_has_role(%s, c.relowner, 'MEMBER') "
        "ORDER BY c.relname",
        [role],
    )
    return [table for (table,) in cursor.fetchall()]


def _grant_dml(cursor, *, role: str) -> None:
    name = sql.Identifier(role)
    database = sql.Identifier(connection.settings_dict["NAME"])
    for query in (
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, name),
        sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(name),
        sql.SQL(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}"
        ).format(name),
        sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(
            name
        ),
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
        _execute(cursor, query)


@transaction.atomic
def app_role_ensure(
    *, role: str, password: str | None = None, bypass: bool = False
) -> None:
    """
    Create or tighten ``role`` and grant it DML on the current schema.

    ``bypass=True`` makes it a worker role (a member of the bypass group);
    otherwise it is a web role and loses a direct membership of the group.
    Raises ``AppRoleError`` for a role that would still be able to lift RLS.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        if role in (cursor.fetchone()[0], BYPASS_GROUP):
            raise AppRoleError(
                f"{role} cannot be an application role: connect the app as a "
                "role of its own, not the owner running migrations or the group."
            )
        _role_ensure(cursor, role=role, login=True, password=password)
        group = sql.Identifier(BYPASS_GROUP)
        if bypass:
            _role_ensure(cursor, role=BYPASS_GROUP, login=False, password=None)
            if not _is_member(cursor, role=role, group=BYPASS_GROUP, directly=True):
                _execute(
                    cursor,
                    sql.SQL("GRANT {} TO {}").format(group, sql.Identifier(role)),
                )
        else:
            if _is_member(cursor, role=role, group=BYPASS_GROUP, directly=True):
                _execute(
                    cursor,
                    sql.SQL("REVOKE {} FROM {}").format(group, sql.Identifier(role)),
                )
            if _is_member(cursor, role=role, group=BYPASS_GROUP):
                raise AppRoleError(
                    f"{role} is a member of {BYPASS_GROUP} through another "
                    "role, so it could lift RLS; revoke that membership."
                )
        owned = _owned_tables_of(cursor, role=role)
        if owned:
            raise AppRoleError(
                f"{role} is a member of the owner of {', '.join(owned)}: an "
                "owner can switch RLS off. Revoke that membership."
            )
        _grant_dml(cursor, role=role)


@transaction.atomic
def app_roles_ensure(
    *,
    web_role: str = WEB_ROLE,
    worker_role: str = WORKER_ROLE,
    web_password: str | None = None,
    worker_password: str | None = None,
) -> None:
    """Both application roles, in one transaction: all or nothing."""
    if web_role == worker_role:
        raise AppRoleError("The web and the worker role must be different roles.")
    app_role_ensure(role=web_role, password=web_password, bypass=False)
    app_role_ensure(role=worker_role, password=worker_password, bypass=True)
