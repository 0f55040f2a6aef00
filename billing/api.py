"""The REST API of usage: the token's tenant's summary over a period, cached."""

from __future__ import annotations

from datetime import date

from django.http import HttpRequest, HttpResponse
from ninja import Field, Query, Router, Schema

from billing.api_errors import ERRORS, BadRequest, reject_unknown_params
from billing.api_schemas import DecimalString, IsoDate
from billing.usage_cache import usage_summary_cached
from billing.usage_summary import MONTH_PATTERN, PeriodError, usage_period

router = Router(tags=["usage"])


class UsageQuery(Schema):
    period: str | None = Field(
        None,
        description="A calendar month, YYYY-MM.",
        examples=["2026-11"],
        pattern=MONTH_PATTERN,
    )
    start: IsoDate | None = Field(None, description="First UTC day of a range.")
    end: IsoDate | None = Field(None, description="Last UTC day of a range.")


class Amounts(Schema):
    cost: DecimalString
    traces: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int


class ModelUsage(Amounts):
    model: str = Field(description="Empty for traces that named no model.")


class ScopeUsage(Amounts):
    scope_id: str
    project_id: str | None = Field(None, description="For agents and epics.")


class ScopeBreakdown(Schema):
    project: list[ScopeUsage]
    agent: list[ScopeUsage]
    epic: list[ScopeUsage]
    user: list[ScopeUsage]


class UsageOut(Schema):
    tenant_id: int
    period: str
    start: date
    end: date
    currency: str
    totals: Amounts = Field(
        description="The sums of the project scopes: a trace without a "
        "project (possible only under a tenant's own scope mapping) is in "
        "the other scopes and models, not in the totals."
    )
    models: list[ModelUsage]
    scopes: ScopeBreakdown
    computed_at: str = Field(description="When these numbers were read.")


@router.get(
    "/usage",
    response={200: UsageOut, **ERRORS},
    summary="Usage summary of a month or a range of days",
)
def usage(request: HttpRequest, query: Query[UsageQuery]):
    """
    Totals, per model and per scope, for ``period=YYYY-MM`` or for
    ``start`` to ``end`` (UTC days, both included, at most 366).

    Totals are the project rows' sums: a trace counts once under each scope
    type it has, and in each model it used. Served from a cache that every
    ledger write outdates for the months it touches; the ``X-Cache`` header
    says hit, stale (served, and being refreshed), miss or bypass (cache
    unavailable).
    """
    reject_unknown_params(request, UsageQuery)
    try:
        period = usage_period(period=query.period, start=query.start, end=query.end)
    except PeriodError as exc:
        raise BadRequest(f"query.{exc.field}", str(exc)) from None
    cached = usage_summary_cached(tenant_id=request.auth.tenant_id, period=period)
    response = HttpResponse(cached.body, content_type="application/json")
    response["X-Cache"] = cached.status
    return response
