"""
Writing a page's usage records in one statement, whatever its size.

Django's ``bulk_create`` on Postgres sends each column as an array that
psycopg formats in Python, element by element (the JSON of every record
escaped by a regex), after building the statement field by field: 0.25 ms of
CPU a record, the largest cost of a sync after reading. Here the rows go as
one JSON document (encoded by orjson, ``billing.fast_json``), which Postgres
turns back into rows of the ledger's type with ``json_populate_recordset``:
one ``INSERT ... SELECT`` or one ``UPDATE ... FROM``, checked by the
row-level security policies and firing the ledger's triggers once, like any
other statement. (``COPY`` would be cheaper still, but cannot write to a
table with row-level security; a temporary table in between belongs to the
role that made it.)

SQLite (the embedded default) keeps Django's ``bulk_create`` and
per-record updates.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from django.db import connection
from django.utils import timezone

from billing.fast_json import json_dumps
from billing.models import UsageRecord

TABLE = UsageRecord._meta.db_table
FIELDS = {field.attname: field for field in UsageRecord._meta.concrete_fields}
# Every column but the id, in the model's order: (column, attribute).
INSERTED = [
    (field.column, field.attname)
    for field in UsageRecord._meta.concrete_fields
    if not field.primary_key
]


def _json_default(value: object) -> object:
    # Exact: a Decimal as its digits (a moment is ISO 8601 with its offset).
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _rows_json(records: Sequence[UsageRecord], columns) -> str:
    return json_dumps(
        [
            {column: getattr(record, attribute) for column, attribute in columns}
            for record in records
        ],
        default=_json_default,
    )


def records_insert(records: Sequence[UsageRecord]) -> None:
    """Insert new records (their ids are not read back)."""
    if not records:
        return
    if connection.vendor != "postgresql":
        UsageRecord.objects.bulk_create(records)
        return
    now = timezone.now()
    for record in records:
        # What bulk_create's pre_save would set.
        record.created_at = record.created_at or now
        record.updated_at = record.updated_at or now
    names = ", ".join(column for column, _ in INSERTED)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {TABLE} ({names}) SELECT {names} "
            f"FROM json_populate_recordset(NULL::{TABLE}, %s::json)",
            [_rows_json(records, INSERTED)],
        )


def records_update(records: Sequence[UsageRecord], fields: Sequence[str]) -> None:
    """Store ``fields`` (attribute names) of existing records."""
    if not records:
        return
    if connection.vendor != "postgresql":
        for record in records:
            UsageRecord.objects.filter(pk=record.pk).update(
                **{name: getattr(record, name) for name in fields}
            )
        return
    columns = [("id", "id")] + [(FIELDS[name].column, name) for name in fields]
    assignments = ", ".join(f"{column} = rows.{column}" for column, _ in columns[1:])
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {TABLE} SET {assignments} "
            f"FROM json_populate_recordset(NULL::{TABLE}, %s::json) AS rows "
            f"WHERE {TABLE}.id = rows.id",
            [_rows_json(records, columns)],
        )
