"""
The REST API of cost anomalies and incidents: list, read, review.

Handlers only parse input and call the same services as the admin
(``anomalies.services``), with the API token as the audited actor. Every
query is the token's tenant's (and row-level security scopes the request to
it as well): another tenant's anomaly is a 404, not a 403, so ids tell a
client nothing about other tenants.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Body, Field, Path, Query, Router, Schema
from pydantic import ConfigDict

from anomalies.models import (
    AnomalyStatus,
    AnomalyType,
    CostAnomaly,
    Incident,
    ResolutionReason,
)
from anomalies.services import (
    anomaly_acknowledge,
    anomaly_reopen,
    anomaly_resolve,
    incident_acknowledge,
    incident_reopen,
    incident_resolve,
)
from billing.api_auth import TokenAuth, api_actor, scoped_to_token_tenant
from billing.api_errors import (
    CONFLICT,
    ERRORS,
    NOT_FOUND,
    BadRequest,
    reject_unknown_params,
)
from billing.api_paging import DEFAULT_LIMIT, MAX_LIMIT, keyset_page
from billing.api_schemas import DecimalString, IsoDate
from billing.models import Membership, ScopeType
from billing.utc_days import day_bounds, day_start

router = Router(tags=["anomalies"])
router.add_decorator(scoped_to_token_tenant)
# Reviews need an operator's token (or an admin's).
REVIEWER = TokenAuth(Membership.Role.OPERATOR)

MAX_ID = 2**63 - 1
# Strings a filter compares: Postgres text holds no NUL.
NO_NUL = r"^[^\x00]*$"
Id = Path(..., ge=1, le=MAX_ID)


class PeriodFilters(Schema):
    """Days are UTC; both ends are included."""

    date_from: IsoDate | None = Field(None, description="First day of the period.")
    date_to: IsoDate | None = Field(None, description="Last day of the period.")
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    cursor: str | None = Field(None, max_length=200, pattern=NO_NUL)

    def in_period(self, queryset: QuerySet) -> QuerySet:
        if self.date_from and self.date_to and self.date_to < self.date_from:
            raise BadRequest("query.date_to", "date_to is before date_from.")
        if self.date_from:
            queryset = queryset.filter(period_start__gte=day_start(self.date_from))
        if self.date_to and self.date_to < date.max:
            _, end = day_bounds(self.date_to)
            queryset = queryset.filter(period_start__lt=end)
        return queryset


class AnomalyFilters(PeriodFilters):
    anomaly_type: AnomalyType | None = None
    status: AnomalyStatus | None = None
    scope_type: ScopeType | None = None
    scope_id: str | None = Field(None, max_length=200, pattern=NO_NUL)
    project_id: str | None = Field(None, max_length=200, pattern=NO_NUL)


class IncidentFilters(PeriodFilters):
    status: AnomalyStatus | None = None


class AnomalyOut(Schema):
    id: int
    anomaly_type: AnomalyType
    status: AnomalyStatus
    scope_type: ScopeType
    project_id: str = Field(description="The project of an agent or epic.")
    scope_id: str
    period_start: datetime
    period_end: datetime
    currency: Literal["usd"] = "usd"
    observed: DecimalString
    expected: DecimalString
    ratio: DecimalString | None = Field(description="observed / expected; null if 0.")
    impact: DecimalString = Field(description="How far the day is from expected.")
    cause: str
    top_contributors: dict
    incident_id: int | None
    resolution_reason: ResolutionReason | Literal[""]
    resolution_note: str
    resolved_at: datetime | None
    first_detected_at: datetime
    last_detected_at: datetime


class AnomalyPage(Schema):
    results: list[AnomalyOut]
    next: str | None = Field(description="The next page, or null on the last.")


class IncidentOut(Schema):
    id: int
    title: str
    status: AnomalyStatus
    period_start: datetime
    period_end: datetime
    currency: Literal["usd"] = "usd"
    impact: DecimalString = Field(description="The largest member's impact.")
    anomaly_count: int
    anomaly_ids: list[int]

    @staticmethod
    def resolve_anomaly_ids(incident: Incident) -> list[int]:
        return sorted(anomaly.pk for anomaly in incident.anomalies.all())


class IncidentPage(Schema):
    results: list[IncidentOut]
    next: str | None


class _Review(Schema):
    model_config = ConfigDict(extra="forbid")

    note: str = Field("", max_length=2000, pattern=NO_NUL)


class Acknowledge(_Review):
    status: Literal["acknowledged"]


class Resolve(_Review):
    status: Literal["resolved"]
    resolution_reason: ResolutionReason


class Reopen(_Review):
    status: Literal["open"]


# One schema per status, told apart by it: the document itself says that a
# resolution reason comes with "resolved", and only with it.
ReviewIn = Annotated[Acknowledge | Resolve | Reopen, Field(discriminator="status")]


class IncidentReviewOut(Schema):
    incident: IncidentOut
    changed: list[int] = Field(description="Members this changed.")
    unchanged: list[int] = Field(description="Members already past it.")


# The service of each status a review moves to: the admin's own.
ANOMALY_REVIEWS = {
    AnomalyStatus.ACKNOWLEDGED: anomaly_acknowledge,
    AnomalyStatus.RESOLVED: anomaly_resolve,
    AnomalyStatus.OPEN: anomaly_reopen,
}
INCIDENT_REVIEWS = {
    AnomalyStatus.ACKNOWLEDGED: incident_acknowledge,
    AnomalyStatus.RESOLVED: incident_resolve,
    AnomalyStatus.OPEN: incident_reopen,
}


def _review_arguments(request: HttpRequest, payload: ReviewIn) -> dict:
    arguments = {"actor": api_actor(request), "note": payload.note}
    if isinstance(payload, Resolve):
        arguments["reason"] = payload.resolution_reason
    return arguments


def _anomalies(request: HttpRequest) -> QuerySet:
    return CostAnomaly.objects.for_tenant(request.auth.tenant_id)


def _incidents(request: HttpRequest) -> QuerySet:
    members = Prefetch("anomalies", queryset=CostAnomaly.objects.only("incident_id"))
    return Incident.objects.for_tenant(request.auth.tenant_id).prefetch_related(members)


@router.get(
    "/cost-anomalies",
    response={200: AnomalyPage, **ERRORS},
    summary="List cost anomalies",
)
def anomaly_list(request: HttpRequest, filters: Query[AnomalyFilters]):
    """The token's tenant's anomalies, newest day first, filtered."""
    reject_unknown_params(request, AnomalyFilters)
    queryset = filters.in_period(_anomalies(request))
    for name in ("anomaly_type", "status", "scope_type", "scope_id", "project_id"):
        value = getattr(filters, name)
        if value is not None:
            queryset = queryset.filter(**{name: value})
    rows, next_url = keyset_page(
        request, queryset, limit=filters.limit, cursor=filters.cursor
    )
    return {"results": rows, "next": next_url}


@router.get(
    "/cost-anomalies/{anomaly_id}",
    response={200: AnomalyOut, **ERRORS, **NOT_FOUND},
    summary="Read a cost anomaly",
)
def anomaly_detail(request: HttpRequest, anomaly_id: int = Id):
    reject_unknown_params(request, Schema)
    return get_object_or_404(_anomalies(request), pk=anomaly_id)


@router.patch(
    "/cost-anomalies/{anomaly_id}",
    response={200: AnomalyOut, **ERRORS, **NOT_FOUND, **CONFLICT},
    summary="Acknowledge, resolve or reopen a cost anomaly",
    auth=REVIEWER,
)
def anomaly_review(request: HttpRequest, payload: Body[ReviewIn], anomaly_id: int = Id):
    """Operator role or above; audited with the token as the actor."""
    reject_unknown_params(request, Schema)
    anomaly = get_object_or_404(_anomalies(request), pk=anomaly_id)
    review = ANOMALY_REVIEWS[payload.status]
    return review(anomaly_id=anomaly.pk, **_review_arguments(request, payload))


@router.get(
    "/incidents",
    response={200: IncidentPage, **ERRORS},
    summary="List incidents",
    tags=["incidents"],
)
def incident_list(request: HttpRequest, filters: Query[IncidentFilters]):
    """The token's tenant's incidents (anomalies sharing a cause), newest first."""
    reject_unknown_params(request, IncidentFilters)
    queryset = filters.in_period(_incidents(request))
    if filters.status is not None:
        queryset = queryset.filter(status=filters.status)
    rows, next_url = keyset_page(
        request, queryset, limit=filters.limit, cursor=filters.cursor
    )
    return {"results": rows, "next": next_url}


@router.get(
    "/incidents/{incident_id}",
    response={200: IncidentOut, **ERRORS, **NOT_FOUND},
    summary="Read an incident",
    tags=["incidents"],
)
def incident_detail(request: HttpRequest, incident_id: int = Id):
    reject_unknown_params(request, Schema)
    return get_object_or_404(_incidents(request), pk=incident_id)


@router.patch(
    "/incidents/{incident_id}",
    response={200: IncidentReviewOut, **ERRORS, **NOT_FOUND, **CONFLICT},
    summary="Acknowledge, resolve or reopen every member of an incident",
    tags=["incidents"],
    auth=REVIEWER,
)
def incident_review(
    request: HttpRequest, payload: Body[ReviewIn], incident_id: int = Id
):
    """Operator role or above; each member is audited, and the incident."""
    reject_unknown_params(request, Schema)
    incident = get_object_or_404(_incidents(request), pk=incident_id)
    review = INCIDENT_REVIEWS[payload.status]
    result = review(incident_id=incident.pk, **_review_arguments(request, payload))
    return {
        "incident": _incidents(request).get(pk=incident.pk),
        "changed": result.changed,
        "unchanged": result.unchanged,
    }
