"""
Which field of a Langfuse observation names a trace's project, agent, epic
and user: a per-tenant mapping, because customers spell them differently
(``epic``, ``epic_id``, ``epicId``, a tag, the trace name).

A mapping gives, per scope, the sources to try in order; the first that has
a value wins. A source is one of:

- ``metadata.<key>``: a key of the observation's metadata;
- ``tag:<prefix>``: the rest of the first trace tag that starts with
  ``<prefix>`` (``tag:epic:`` takes ``EPIC-7`` from the tag ``epic:EPIC-7``);
- ``trace_name``, ``user_id``, ``session_id``: those observation fields;
  ``langfuse_project_id``: the Langfuse project the trace was sent to.

A tenant's ``scope_mapping`` replaces the defaults of the scopes it names
and keeps the defaults for the others, so ``{}`` means "the defaults".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError

SCOPES = ("project", "agent", "epic", "user")
FIELD_SOURCES = ("trace_name", "user_id", "session_id", "langfuse_project_id")
METADATA_PREFIX = "metadata."
TAG_PREFIX = "tag:"

DEFAULT_SCOPE_MAPPING: dict[str, list[str]] = {
    "project": [
        "metadata.project_id",
        "metadata.projectId",
        "metadata.project",
        "langfuse_project_id",
    ],
    "agent": [
        "trace_name",
        "metadata.agent",
        "metadata.agent_id",
        "metadata.agentId",
    ],
    "epic": [
        "metadata.epic",
        "metadata.epic_id",
        "metadata.epicId",
        "tag:epic:",
    ],
    "user": ["user_id", "metadata.user_id", "metadata.userId"],
}


def scope_mapping_for(overrides: Mapping[str, list[str]] | None) -> dict:
    """The defaults with a tenant's overrides on top."""
    return {**DEFAULT_SCOPE_MAPPING, **(overrides or {})}


def validate_scope_mapping(value: Any) -> None:
    """Model-field validator: a clear message for each mistake."""
    if not isinstance(value, dict):
        raise ValidationError("Scope mapping must be an object of scope: [sources].")
    for scope, sources in value.items():
        if scope not in SCOPES:
            raise ValidationError(
                f"Unknown scope {scope!r}; expected any of {', '.join(SCOPES)}."
            )
        if not isinstance(sources, list) or not sources:
            raise ValidationError(f"Scope {scope!r} needs a non-empty list of sources.")
        for source in sources:
            if not _valid_source(source):
                raise ValidationError(
                    f"Source {source!r} of {scope!r} is not metadata.<key>, "
                    f"tag:<prefix>, {', '.join(FIELD_SOURCES)}."
                )


def _valid_source(source: Any) -> bool:
    if not isinstance(source, str):
        return False
    if source.startswith(METADATA_PREFIX):
        return len(source) > len(METADATA_PREFIX)
    if source.startswith(TAG_PREFIX):
        return len(source) > len(TAG_PREFIX)
    return source in FIELD_SOURCES


def resolve_scope(
    sources: list[str],
    *,
    metadata: Mapping[str, Any],
    tags: list[Any],
    fields: Mapping[str, Any],
) -> Any:
    """The first value the sources give, or None."""
    for source in sources:
        if source.startswith(METADATA_PREFIX):
            value = metadata.get(source[len(METADATA_PREFIX) :])
        elif source.startswith(TAG_PREFIX):
            prefix = source[len(TAG_PREFIX) :]
            value = next(
                (
                    tag[len(prefix) :]
                    for tag in tags
                    if isinstance(tag, str) and tag.startswith(prefix)
                ),
                None,
            )
        else:
            value = fields.get(source)
        if value not in (None, "", [], {}):
            return value
    return None
