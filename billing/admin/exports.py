"""
CSV exports from the admin: an "Export selected as CSV" action for any
changelist, and the writer the cost pages share with it.

An export is looking, not acting: whoever may view the changelist may export
what it lists, and the action gets the changelist's own queryset, so the
tenant scoping of ``get_queryset`` and the filters apply unchanged.

The rows are streamed (``queryset.iterator()`` through a
``StreamingHttpResponse``) so that memory stays flat in the number of rows.
Streaming runs after the view has returned, outside the request's
``tenant_context`` transaction: the stream opens its own for the same
tenants, or row-level security would hide every row from the web role.

Provider data is hostile (a scope id or an error message can be any string):
a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a line break
would be read as a formula by a spreadsheet, so it gets a leading ``'``
(OWASP's advice for CSV injection). Numbers, dates and times are ours, never
a formula, and stay as they are: money is a plain decimal in a column named
with its currency (``cost_usd``), times are ISO 8601.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IS_POPUP_VAR
from django.db.models import QuerySet
from django.http import HttpRequest, StreamingHttpResponse
from django.utils.text import slugify

from billing.models import Tenant
from billing.tenancy import tenant_context

# Leading characters that make a spreadsheet evaluate a cell.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")
# Rows fetched per round trip of the streaming cursor.
EXPORT_CHUNK = 2000

# A column: a field path for ``values_list`` ("tenant__name"), named after
# itself, or (column name, field path) to name it (("cost_usd", "cost")).
CsvField = str | tuple[str, str]


def csv_cell(value: Any) -> str | int:
    """One value as a CSV cell: plain numbers, ISO times, neutralised text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal):
        return plain_decimal(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat() if value.tzinfo else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    text = str(value).replace("\x00", "\ufffd")
    if text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


def plain_decimal(value: Decimal) -> str:
    """
    A decimal without exponent or the database's trailing zeros, with at
    least cents: ``0.0105000000`` is ``0.0105``, ``12`` is ``12.00``.
    """
    text = f"{value:f}"
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"{whole}.{fraction}"


class _Echo:
    """A file that hands back what is written, for ``csv.writer`` to stream."""

    def write(self, value: str) -> str:
        return value


def csv_lines(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Iterator[str]:
    """The header and rows as CSV lines, every cell through ``csv_cell``."""
    writer = csv.writer(_Echo())
    yield writer.writerow(header)
    for row in rows:
        yield writer.writerow([csv_cell(value) for value in row])


def csv_response(
    *, filename: str, header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> StreamingHttpResponse:
    """A CSV download of ``rows``, streamed as they are produced."""
    response = StreamingHttpResponse(
        csv_lines(header, rows), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    # An export is a snapshot of the moment; a cache has no business with it.
    response["Cache-Control"] = "no-store"
    return response


def request_tenant_scope(request: HttpRequest) -> list[int]:
    """
    The tenants the request may read, as the list RLS is given: a
    superuser's ``None`` ("every tenant") names them all, as the middleware
    does, because the web role cannot lift RLS.
    """
    tenant_ids = getattr(request, "tenant_ids", [])
    if tenant_ids is None:
        return list(Tenant.objects.values_list("pk", flat=True))
    return list(tenant_ids)


def _scoped_rows(
    queryset: QuerySet, paths: Sequence[str], tenant_ids: list[int]
) -> Iterator[tuple]:
    with tenant_context(tenant_ids):
        yield from queryset.values_list(*paths).iterator(chunk_size=EXPORT_CHUNK)


def export_filename(name: str, *, now: datetime | None = None) -> str:
    """``cost-summaries-20261120T093000Z.csv``: what it is and when."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{slugify(name) or 'export'}-{moment:%Y%m%dT%H%M%SZ}.csv"


class CsvExportAdminMixin:
    """
    Adds "Export selected as CSV" to a ModelAdmin for everyone who may view
    it. ``csv_fields`` names the columns explicitly, so a new model field
    (a secret, say) never leaks into exports by default.
    """

    csv_fields: Sequence[CsvField] = ()

    def get_csv_fields(self, request: HttpRequest) -> Sequence[CsvField]:
        return self.csv_fields

    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        # Added here rather than through ``actions``, so an admin that lists
        # its own actions still gets the export; the same rules as Django's
        # own actions (none in popups, none when actions are switched off).
        if (
            self.actions is None
            or IS_POPUP_VAR in request.GET
            or not self.get_csv_fields(request)
            or not self.has_export_csv_permission(request)
        ):
            return actions
        func, name, description = self.get_action("export_csv")
        actions.setdefault(name, (func, name, description))
        return actions

    def has_export_csv_permission(self, request: HttpRequest) -> bool:
        # Looking, not acting: viewers may export what they may view.
        return self.has_view_permission(request)

    @admin.action(description="Export selected as CSV", permissions=["export_csv"])
    def export_csv(
        self, request: HttpRequest, queryset: QuerySet
    ) -> StreamingHttpResponse:
        fields = [
            (f, f) if isinstance(f, str) else f for f in self.get_csv_fields(request)
        ]
        if not queryset.ordered:
            queryset = queryset.order_by("pk")
        return csv_response(
            filename=export_filename(str(self.opts.verbose_name_plural)),
            header=[column for column, _ in fields],
            rows=_scoped_rows(
                queryset,
                [path for _, path in fields],
                request_tenant_scope(request),
            ),
        )
