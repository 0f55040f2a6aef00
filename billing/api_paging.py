"""
Keyset pagination for the API's lists: newest period first, then id.

A page's ``next`` link carries the last row's (period start, id) as an opaque
cursor, so rows detected or reviewed between two requests neither repeat nor
go missing, as they would with offsets; both keys never change for a row.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from django.db.models import Q, QuerySet
from django.http import HttpRequest

from billing.api_errors import BadRequest

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
ORDERING = ("-period_start", "-id")


def _encode(period_start: datetime, pk: int) -> str:
    raw = json.dumps([period_start.isoformat(), pk]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        period_start, pk = json.loads(raw)
        moment = datetime.fromisoformat(period_start)
        if moment.tzinfo is None or not isinstance(pk, int) or not 0 < pk < 2**63:
            raise ValueError
        return moment, pk
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("query.cursor", "Not a cursor from a next link.") from None


def keyset_page(
    request: HttpRequest, queryset: QuerySet, *, limit: int, cursor: str | None
) -> tuple[list, str | None]:
    """One page of ``queryset`` and the absolute URL of the next, if any."""
    queryset = queryset.order_by(*ORDERING)
    if cursor:
        period_start, pk = _decode(cursor)
        queryset = queryset.filter(
            Q(period_start__lt=period_start) | Q(period_start=period_start, id__lt=pk)
        )
    rows = list(queryset[: limit + 1])
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    params = request.GET.copy()
    params["cursor"] = _encode(rows[-1].period_start, rows[-1].pk)
    return rows, request.build_absolute_uri(f"{request.path}?{params.urlencode()}")
