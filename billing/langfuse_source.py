"""
Reading usage from Langfuse: observations in bulk, page by page.

Uses the generated REST client (``langfuse.api``) on
``GET /api/public/v2/observations``: the v1 trace endpoints are deprecated,
and one call per trace (the seeds' first design) cannot scale. Pages of up to
1000 observations, only the field groups billing needs (never ``io``), a time
window on ``startTime``, and the client's own retries switched off so that the
tenant's limiter sees every 429.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation

from langfuse.api import LangfuseAPI
from langfuse.api.commons.types.observation_v2 import ObservationV2

from billing.models import Tenant
from billing.provider_calls import ProviderCaller

PAGE_SIZE = 1000
FIELD_GROUPS = "core,basic,time,usage,model,metadata,trace_context"
REQUEST_TIMEOUT_SECONDS = 30
# Langfuse names cached input differently per provider integration.
CACHED_INPUT_KEYS = ("cache_read_input_tokens", "input_cached_tokens", "cached_tokens")
INPUT_KEYS = ("input", "prompt_tokens")
OUTPUT_KEYS = ("output", "completion_tokens")


class MalformedObservation(ValueError):
    """An observation billing cannot trust; the reason says why."""


@dataclass(frozen=True)
class Observation:
    id: str
    trace_id: str
    start_time: datetime
    last_activity: datetime
    model: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    langfuse_cost: Decimal | None
    user_id: str
    project_id: str
    agent_id: str
    epic_id: str

    @property
    def has_usage(self) -> bool:
        return bool(
            self.input_tokens
            or self.output_tokens
            or self.cached_tokens
            or self.langfuse_cost
        )


def _first(details: dict[str, int], keys: tuple[str, ...]) -> int:
    for key in keys:
        if key in details:
            return details[key]
    return 0


def _text(value: object) -> str:
    return str(value)[:200] if value not in (None, "") else ""


def parse_observation(raw: ObservationV2) -> Observation:
    """Validate one observation; raise MalformedObservation with a reason."""
    if not raw.trace_id:
        raise MalformedObservation("missing traceId")
    details = raw.usage_details or {}
    input_tokens = _first(details, INPUT_KEYS)
    output_tokens = _first(details, OUTPUT_KEYS)
    cached_tokens = _first(details, CACHED_INPUT_KEYS)
    if min(input_tokens, output_tokens, cached_tokens) < 0:
        raise MalformedObservation("negative token count")
    cost = None
    if raw.total_cost is not None:
        try:
            cost = Decimal(str(raw.total_cost))
        except InvalidOperation:
            raise MalformedObservation("totalCost is not a number") from None
        if not cost.is_finite() or cost < 0:
            raise MalformedObservation("negative or non-finite totalCost")
    if raw.end_time and raw.end_time < raw.start_time:
        raise MalformedObservation("endTime before startTime")
    metadata = raw.metadata if isinstance(raw.metadata, dict) else {}
    moments = [raw.start_time, raw.end_time, raw.updated_at]
    return Observation(
        id=raw.id,
        trace_id=raw.trace_id,
        start_time=raw.start_time,
        last_activity=max(m for m in moments if m is not None),
        model=_text(raw.model),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_tokens=cached_tokens,
        langfuse_cost=cost,
        user_id=_text(raw.user_id),
        project_id=_text(metadata.get("project_id") or raw.project_id),
        agent_id=_text(raw.trace_name or metadata.get("agent")),
        epic_id=_text(metadata.get("epic")),
    )


@dataclass
class Page:
    observations: list[Observation] = field(default_factory=list)
    # (observation id, trace id or "", reason)
    malformed: list[tuple[str, str, str]] = field(default_factory=list)
    oldest_start: datetime | None = None


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

    def pages(self, *, start: datetime, end: datetime) -> Iterator[Page]:
        """Yield pages of observations with startTime in [start, end)."""
        cursor = None
        while True:
            response = self.caller.call(
                lambda cursor=cursor: self.client.observations.get_many(
                    fields=FIELD_GROUPS,
                    limit=self.page_size,
                    cursor=cursor,
                    from_start_time=start,
                    to_start_time=end,
                    request_options={"max_retries": 0},
                )
            )
            page = Page()
            for raw in response.data:
                try:
                    page.observations.append(parse_observation(raw))
                except MalformedObservation as exc:
                    page.malformed.append((raw.id, raw.trace_id or "", str(exc)))
                if page.oldest_start is None or raw.start_time < page.oldest_start:
                    page.oldest_start = raw.start_time
            yield page
            cursor = response.meta.cursor
            if not cursor or not response.data:
                return
