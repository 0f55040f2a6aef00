"""
A tenant's usage over a period, for API clients: totals, per model, per scope.

One aggregate query over ``DailyScopeUsage`` (kept equal to the ledger by its
triggers), not one per breakdown: the model breakdown and every scope's sums
come back as the rows of one ``UNION ALL``, and the totals are the sum of the
project rows. As on the admin's cost pages (``billing.cost_history``), a
trace counts once under each scope type it has, the totals are read from the
project scope (the one every trace has under the default mapping), and a
trace that used two models counts in both models' trace counts.

The result is serialised to JSON once, here, so that a cache hit
(``billing.usage_cache``) returns stored bytes without building it again.
"""

from __future__ import annotations

import calendar
import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

from django.db import connection

from billing.models import ScopeType
from billing.models.ledger import MONEY

# A period longer than this is a report, not a summary (and a cache key
# nobody shares).
MAX_PERIOD_DAYS = 366
CURRENCY = "usd"
MONEY_PLACES = Decimal(10) ** -MONEY["decimal_places"]
# Years 0001 to 9999, months 01 to 12: what a date can hold.
MONTH_PATTERN = r"^([1-9]\d{3}|0[1-9]\d{2}|00[1-9]\d|000[1-9])-(0[1-9]|1[0-2])$"


class PeriodError(ValueError):
    """The period asked for is malformed or out of range."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class UsagePeriod:
    start: date
    end: date  # inclusive
    label: str  # "2026-11", or "2026-11-03..2026-11-09"

    @property
    def months(self) -> list[str]:
        """The calendar months the period touches, as "YYYY-MM"."""
        first = self.start.year * 12 + self.start.month - 1
        last = self.end.year * 12 + self.end.month - 1
        return [month_label(*divmod(month, 12)) for month in range(first, last + 1)]


def month_label(year: int, month0: int) -> str:
    """ "YYYY-MM" of a month counted from 0 (strftime writes year 1 as "1")."""
    return f"{year:04d}-{month0 + 1:02d}"


def usage_period(
    *, period: str | None, start: date | None, end: date | None
) -> UsagePeriod:
    """A calendar month (``period``) or an inclusive range of UTC days."""
    if period is not None:
        if start is not None or end is not None:
            raise PeriodError(
                "period", "Give either period or start and end, not both."
            )
        if not re.match(MONTH_PATTERN, period):
            raise PeriodError("period", "Expected a month as YYYY-MM, e.g. 2026-11.")
        year, month = int(period[:4]), int(period[5:])
        last = calendar.monthrange(year, month)[1]
        return UsagePeriod(date(year, month, 1), date(year, month, last), period)
    if start is None or end is None:
        raise PeriodError(
            "period", "Give period=YYYY-MM, or start and end (YYYY-MM-DD)."
        )
    if end < start:
        raise PeriodError("end", "end is before start.")
    if (end - start).days + 1 > MAX_PERIOD_DAYS:
        raise PeriodError("end", f"A period is at most {MAX_PERIOD_DAYS} days.")
    return UsagePeriod(start, end, f"{start.isoformat()}..{end.isoformat()}")


SUMMARY_SQL = """
    SELECT 'model', '', '', model, sum(model_trace_count), sum(input_tokens),
           sum(output_tokens), sum(cached_tokens), sum(cost)
    FROM billing_dailyscopeusage
    WHERE scope_type = 'project' AND tenant_id = %(tenant)s
      AND day BETWEEN %(start)s AND %(end)s
    GROUP BY model
    UNION ALL
    SELECT 'scope', scope_type, project_id, scope_id, sum(trace_count),
           sum(input_tokens), sum(output_tokens), sum(cached_tokens), sum(cost)
    FROM billing_dailyscopeusage
    WHERE scope_type IN ('project', 'agent', 'epic', 'user')
      AND tenant_id = %(tenant)s AND day BETWEEN %(start)s AND %(end)s
    GROUP BY scope_type, project_id, scope_id
"""


def _money(value) -> Decimal:
    # Postgres sums numerics exactly, to the column's ten places; SQLite
    # (the demo) sums them as reals, whose noise the rounding drops.
    return Decimal(str(value or 0)).quantize(MONEY_PLACES)


def _amounts(traces, input_tokens, output_tokens, cached_tokens, cost) -> dict:
    return {
        "cost": _money(cost),
        "traces": int(traces or 0),
        "input_tokens": int(input_tokens or 0),
        "output_tokens": int(output_tokens or 0),
        "cached_tokens": int(cached_tokens or 0),
    }


def _by_cost(rows: list[dict]) -> list[dict]:
    """The costliest first; ties in a stable order, so equal data reads equal."""
    return sorted(
        rows,
        key=lambda row: (
            -row["cost"],
            row.get("project_id", ""),
            row.get("scope_id", row.get("model", "")),
        ),
    )


def usage_summary(*, tenant_id: int, period: UsagePeriod) -> dict:
    """The period's usage of one tenant; the caller scopes row-level security."""
    with connection.cursor() as cursor:
        cursor.execute(
            SUMMARY_SQL, {"tenant": tenant_id, "start": period.start, "end": period.end}
        )
        rows = cursor.fetchall()
    models: list[dict] = []
    scopes: dict[str, list[dict]] = {scope: [] for scope in ScopeType.values}
    for level, scope_type, project_id, key, *amounts in rows:
        if level == "model":
            models.append({"model": key, **_amounts(*amounts)})
        else:
            scope = {"scope_id": key, **_amounts(*amounts)}
            if scope_type in (ScopeType.AGENT, ScopeType.EPIC):
                scope["project_id"] = project_id
            scopes[scope_type].append(scope)
    totals = _amounts(0, 0, 0, 0, 0)
    for project in scopes[ScopeType.PROJECT]:
        for name in totals:
            totals[name] += project[name]
    return {
        "tenant_id": tenant_id,
        "period": period.label,
        "start": period.start.isoformat(),
        "end": period.end.isoformat(),
        "currency": CURRENCY,
        "totals": totals,
        "models": _by_cost(models),
        "scopes": {scope: _by_cost(rows) for scope, rows in scopes.items()},
        "computed_at": datetime.now(UTC).isoformat(),
    }


def _json_default(value):
    if isinstance(value, Decimal):
        return format(value, "f")  # never "1E-7"
    raise TypeError(f"Not JSON serialisable: {type(value).__name__}")


def usage_summary_json(*, tenant_id: int, period: UsagePeriod) -> bytes:
    """``usage_summary`` as the API's response body; money as decimal strings."""
    summary = usage_summary(tenant_id=tenant_id, period=period)
    return json.dumps(summary, default=_json_default, separators=(",", ":")).encode()
