"""
Reading usage from Langfuse: observations in bulk, page by page.

Uses the generated REST client (``langfuse.api``) on
``GET /api/public/v2/observations``: the v1 trace endpoints are deprecated,
and one call per trace (the seeds' first design) cannot scale. Pages of up to
1000 observations, only the field groups billing needs (never ``io``), a time
window on ``startTime``, and the client's own retries switched off so that the
tenant's limiter sees every 429.

Provider data is untrusted (issue 10): each item is validated against the
client's ``ObservationV2`` on its own, so an item off the schema is one
malformed observation, not a page that fails forever; strings are made
storable here, at the boundary, before anything else sees them.
"""

from __future__ import annotations

import hashlib
import json
import re
import typing
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

import pydantic
from langfuse.api import LangfuseAPI
from langfuse.api.commons.types.observation_v2 import ObservationV2
from langfuse.api.core.api_error import ApiError
from langfuse.api.core.datetime_utils import serialize_datetime
from langfuse.api.core.pydantic_utilities import parse_obj_as
from langfuse.api.core.serialization import FieldMetadata

from billing.fast_json import json_loads
from billing.models import Tenant
from billing.provider_calls import ProviderCaller
from billing.scopes import DEFAULT_SCOPE_MAPPING, resolve_scope, scope_mapping_for

OBSERVATIONS_PATH = "api/public/v2/observations"
PAGE_SIZE = 1000
FIELD_GROUPS = "core,basic,time,usage,model,metadata,trace_context"
REQUEST_TIMEOUT_SECONDS = 30
# Provider strings are stored in columns of 200 characters.
MAX_TEXT = 200
# Sanity bounds of one observation: a count or a cost beyond them is a bug or
# an attack upstream, not usage to bill.
MAX_TOKENS = 10**12
MAX_COST = Decimal(10**6)
# An end this little before the start is two hosts' clocks, not bad data.
CLOCK_SKEW = timedelta(minutes=5)
# Postgres text and jsonb cannot hold NUL; UTF-8 cannot encode a lone
# surrogate. Both reach us from Langfuse, which stores any string.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def _field_names_by_wire_name(model: type[pydantic.BaseModel]) -> dict[str, str]:
    """``{"traceId": "trace_id", ...}`` from the generated model's annotations."""
    names = {}
    for name, hint in typing.get_type_hints(model, include_extras=True).items():
        for meta in getattr(hint, "__metadata__", ()):
            if isinstance(meta, FieldMetadata) and meta.alias:
                names[meta.alias] = name
    return names


# The generated client's parse_obj_as renames the wire names to field names
# by walking ObservationV2's type hints again for every item, and builds a
# TypeAdapter each time: 1 s of CPU a page of 1000, 82% of a sync (issue 16).
# ObservationV2 has no nested model, so renaming its top-level keys once per
# item, with the names worked out once, is the whole of that conversion.
WIRE_NAMES = _field_names_by_wire_name(ObservationV2)


def observation_from_wire(item: object) -> ObservationV2:
    """
    One item of a page, as ``parse_obj_as(ObservationV2, item)`` reads it
    (the same model, the same ValidationError), at a fortieth of the cost.
    """
    if isinstance(item, dict):
        item = {WIRE_NAMES.get(key, key): value for key, value in item.items()}
    return ObservationV2.model_validate(item)


class MalformedObservation(ValueError):
    """An observation billing cannot trust; the reason says why."""


def clean_text(value: object) -> str:
    """A provider string as we can store it: no NUL, no surrogate, capped."""
    if value is None or value == "":
        return ""
    text = value if isinstance(value, str) else str(value)
    if _UNSTORABLE.search(text) is None:  # nearly always: no copy, no template
        return text[:MAX_TEXT]
    return _UNSTORABLE.sub(REPLACEMENT, text)[:MAX_TEXT]


def clean_id(value: str | None) -> str:
    """
    An identifier as we can store it. One that had to change (unstorable
    characters, too long) keeps a readable prefix plus a digest of the
    original, so two different ids never collapse into one.
    """
    if not value:
        return ""
    cleaned = _UNSTORABLE.sub(REPLACEMENT, value)
    if cleaned == value and len(value) <= MAX_TEXT:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{cleaned[: MAX_TEXT - 34]}~{digest[:32]}"


@dataclass(frozen=True)
class Observation:
    id: str
    trace_id: str
    start_time: datetime
    # None while the observation is still running.
    end_time: datetime | None
    last_activity: datetime
    model: str
    # Every usage key Langfuse reported with a positive count; pricing
    # treats ``total`` as the sum it is.
    usage: dict[str, int]
    langfuse_cost: Decimal | None
    langfuse_cost_details: dict[str, Decimal]
    user_id: str
    project_id: str
    agent_id: str
    epic_id: str

    @property
    def has_usage(self) -> bool:
        return any(self.usage.values()) or bool(self.langfuse_cost)


def _decimal(value: object, name: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise MalformedObservation(f"{name} is not a number") from None
    if not number.is_finite() or number < 0:
        raise MalformedObservation(f"negative or non-finite {name}")
    if number > MAX_COST:
        raise MalformedObservation(f"{name} above {MAX_COST} USD")
    return number


def _usage(details: dict | None) -> dict[str, int]:
    usage = {}
    for key, count in (details or {}).items():
        if not isinstance(count, int) or isinstance(count, bool):
            raise MalformedObservation("a usage count is not an integer")
        if count < 0:
            raise MalformedObservation("negative token count")
        if count > MAX_TOKENS:
            raise MalformedObservation(f"a usage count above {MAX_TOKENS}")
        if count:
            key = clean_text(key)
            usage[key] = usage.get(key, 0) + count
    return usage


def parse_observation(
    raw: ObservationV2, scope_mapping: Mapping[str, list[str]] = DEFAULT_SCOPE_MAPPING
) -> Observation:
    """
    Validate one observation and read its scopes with the tenant's mapping;
    raise MalformedObservation with a reason.
    """
    if not raw.trace_id:
        raise MalformedObservation("missing traceId")
    usage = _usage(raw.usage_details)
    cost = None if raw.total_cost is None else _decimal(raw.total_cost, "totalCost")
    cost_details = {
        clean_text(key): _decimal(value, "costDetails")
        for key, value in (raw.cost_details or {}).items()
        if value is not None
    }
    end_time = raw.end_time
    if end_time and end_time < raw.start_time:
        if raw.start_time - end_time > CLOCK_SKEW:
            raise MalformedObservation("endTime before startTime")
        end_time = raw.start_time  # clocks of SDK hosts disagree a little
    # An event is a point in time: it never runs.
    end_time = end_time or (raw.start_time if raw.type == "EVENT" else None)
    metadata = raw.metadata if isinstance(raw.metadata, dict) else {}
    tags = raw.tags or []
    fields = {
        "trace_name": raw.trace_name,
        "user_id": raw.user_id,
        "session_id": raw.session_id,
        "langfuse_project_id": raw.project_id,
    }
    scopes = {
        scope: clean_text(
            resolve_scope(sources, metadata=metadata, tags=tags, fields=fields)
        )
        for scope, sources in scope_mapping.items()
    }
    moments = [raw.start_time, raw.end_time, raw.updated_at]
    return Observation(
        id=clean_id(raw.id),
        trace_id=clean_id(raw.trace_id),
        start_time=raw.start_time,
        end_time=end_time,
        last_activity=max(m for m in moments if m is not None),
        model=clean_text(raw.model),
        usage=usage,
        langfuse_cost=cost,
        langfuse_cost_details=cost_details,
        user_id=scopes["user"],
        project_id=scopes["project"],
        agent_id=scopes["agent"],
        epic_id=scopes["epic"],
    )


@dataclass(frozen=True)
class Malformed:
    """An observation we could not trust, kept so its trace is accounted for."""

    id: str
    trace_id: str  # "" when Langfuse sent none
    start_time: datetime
    reason: str


@dataclass
class Page:
    observations: list[Observation] = field(default_factory=list)
    malformed: list[Malformed] = field(default_factory=list)
    oldest_start: datetime | None = None


def _unparsable(item: object, exc: pydantic.ValidationError, *, fallback: datetime):
    """An item off the API schema, kept as malformed with what was readable."""
    fields = sorted({str(error["loc"][0]) for error in exc.errors() if error["loc"]})
    reason = f"{', '.join(fields) or 'item'} does not match the API schema"
    item = item if isinstance(item, dict) else {}
    try:
        start = parse_obj_as(datetime, item.get("startTime"))
    except pydantic.ValidationError:
        start = fallback
    trace_id = item.get("traceId")
    return Malformed(
        clean_id(str(item.get("id") or "")),
        clean_id(trace_id) if isinstance(trace_id, str) else "",
        start if start.tzinfo else start.replace(tzinfo=UTC),
        reason,
    )


def _trace_filter(start: datetime, end: datetime, trace_ids: Collection[str]) -> str:
    return json.dumps(
        [
            {
                "type": "stringOptions",
                "column": "traceId",
                "operator": "any of",
                "value": sorted(trace_ids),
            },
            {
                "type": "datetime",
                "column": "startTime",
                "operator": ">=",
                "value": start.isoformat(),
            },
            {
                "type": "datetime",
                "column": "startTime",
                "operator": "<",
                "value": end.isoformat(),
            },
        ]
    )


def langfuse_client(tenant: Tenant) -> LangfuseAPI:
    return LangfuseAPI(
        base_url=tenant.langfuse_host.rstrip("/"),
        username=tenant.langfuse_public_key,
        # A callable: the plaintext is fetched per request, never stored on
        # the client object where a repr or a traceback could show it.
        password=tenant.langfuse_secret_key.reveal,
        timeout=REQUEST_TIMEOUT_SECONDS,
    )


class LangfuseSource:
    """The observations of one tenant's Langfuse project, one page at a time."""

    def __init__(
        self,
        *,
        tenant: Tenant,
        caller: ProviderCaller,
        page_size: int | None = None,
    ) -> None:
        self.tenant = tenant
        self.caller = caller
        self.page_size = page_size or PAGE_SIZE
        self.client = langfuse_client(tenant)
        self.scope_mapping = scope_mapping_for(tenant.scope_mapping)

    def pages(
        self,
        *,
        start: datetime,
        end: datetime,
        trace_ids: Collection[str] | None = None,
    ) -> Iterator[Page]:
        """
        Yield pages of observations with startTime in [start, end), of the
        given traces only when ``trace_ids`` is set (Langfuse's structured
        filter, which replaces the query-parameter filters).
        """
        params = {
            "fields": FIELD_GROUPS,
            "limit": self.page_size,
            "fromStartTime": serialize_datetime(start),
            "toStartTime": serialize_datetime(end),
        }
        if trace_ids is not None:
            del params["fromStartTime"], params["toStartTime"]
            params["filter"] = _trace_filter(start, end, trace_ids)
        cursor = None
        while True:
            items, next_cursor = self.caller.call(
                lambda cursor=cursor: self._get_page({**params, "cursor": cursor})
            )
            page = Page()
            for item in items:
                try:
                    raw = observation_from_wire(item)
                except pydantic.ValidationError as exc:
                    page.malformed.append(_unparsable(item, exc, fallback=start))
                    continue
                try:
                    page.observations.append(parse_observation(raw, self.scope_mapping))
                except MalformedObservation as exc:
                    page.malformed.append(
                        Malformed(
                            clean_id(raw.id),
                            clean_id(raw.trace_id),
                            raw.start_time,
                            str(exc),
                        )
                    )
                if page.oldest_start is None or raw.start_time < page.oldest_start:
                    page.oldest_start = raw.start_time
            yield page
            cursor = next_cursor
            if not cursor or not items:
                return

    def _get_page(self, params: dict) -> tuple[list, str | None]:
        """
        One page through the generated client's transport (its base URL,
        auth and timeouts), its items left unparsed: the generated
        ``get_many`` validates a page whole, so one item off the schema would
        fail the page on every run. A body we cannot read is an ApiError with
        its status (a cut 200 is retried); no body text is kept, since a
        provider may echo a key fragment.
        """
        response = self.client._client_wrapper.httpx_client.request(
            OBSERVATIONS_PATH,
            method="GET",
            params=params,
            request_options={"max_retries": 0},
        )
        headers = dict(response.headers)
        if not 200 <= response.status_code < 300:
            raise ApiError(status_code=response.status_code, headers=headers)
        try:
            body = json_loads(response.content)
            items, meta = body["data"], body.get("meta") or {}
            if not isinstance(items, list) or not isinstance(meta, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise ApiError(status_code=response.status_code, headers=headers) from None
        cursor = meta.get("cursor")
        return items, cursor if isinstance(cursor, str) else None
