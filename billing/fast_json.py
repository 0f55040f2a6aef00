"""
JSON on the sync's hot path: a page of observations read by pydantic's JSON
parser, a page of ledger rows written by orjson (the json module took a
quarter of a sync's CPU doing both).

Langfuse stores any string, so pages arrive with what a strict parser
refuses: pydantic's refuses a lone surrogate escape, and such a page is read
by the json module. Everything else reads the same either way: integers of
any size exactly, ``NaN`` and ``Infinity``, the last of a repeated key
(``tests/billing/test_fast_json.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from functools import partial
from typing import Any

import orjson
import pydantic_core


def json_loads(data: bytes) -> Any:
    """``json.loads(data)``, in two thirds of its time where pydantic can read it."""
    try:
        return pydantic_core.from_json(data, allow_inf_nan=True)
    except ValueError:
        return json.loads(data)


def json_dumps(value: Any, *, default: Callable[[Any], Any] | None = None) -> str:
    """
    Compact JSON text of ``value``, a document of JSON's own types (strings,
    integers, None, booleans, lists, dicts with string keys), datetimes and
    dates, written as their ``isoformat()``, and what ``default`` turns into
    those. A value orjson refuses (a lone surrogate in a string, an integer
    beyond 64 bits) is written by the json module, with the same result.
    """
    try:
        return orjson.dumps(
            value,
            default=partial(_isoformat_or, default),
            # orjson rounds an offset to the minute: isoformat() does not.
            option=orjson.OPT_PASSTHROUGH_DATETIME,
        ).decode()
    except orjson.JSONEncodeError:
        return json.dumps(
            value, default=partial(_isoformat_or, default), separators=(",", ":")
        )


def _isoformat_or(default: Callable[[Any], Any] | None, value: Any) -> Any:
    if isinstance(value, date):  # a datetime too
        return value.isoformat()
    if default is None:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
    return default(value)
