"""
``billing.fast_json`` reads and writes what the json module does, on the
whole range provider data takes: orjson where it can, the json module where
orjson refuses (lone surrogates, NaN, numbers beyond 64 bits).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.fast_json import json_dumps, json_loads

# Any string Langfuse can store: NUL, lone surrogates, any script.
TEXT = st.text(st.characters(exclude_categories=()), max_size=20)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner),
    max_leaves=12,
)


def same(a: object, b: object) -> bool:
    """Equal, NaN equal to NaN, 0.0 not equal to -0.0 (nor 1 to 1.0)."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


@given(VALUES, st.booleans())
def test_loads_reads_as_the_json_module(value, ascii_only):
    data = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    assert same(json_loads(data), json.loads(data))


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": 1, "b": 2, "a": 3}',  # the last of a repeated key, first place
        b"1e400",  # beyond a float: infinity, as json reads it
        b"[NaN, -Infinity]",
        b'"\\ud800 lone"',
        b"123456789012345678901234567890",
        b"0.1e-400",
        b'  {"x" : [1.0, -0.0, 5e-324]}  ',
    ],
)
def test_loads_edge_cases(data):
    assert same(json_loads(data), json.loads(data))


@pytest.mark.parametrize(
    "data", [b"", b"[1,]", b"\xff\xfe{", b'{"a":1} x', b"01", b'"\xff"']
)
def test_loads_refuses_what_json_refuses(data):
    with pytest.raises(ValueError):
        json.loads(data)
    with pytest.raises(ValueError):
        json_loads(data)


def as_json_module_writes(value):
    def default(item):
        if isinstance(item, Decimal):
            return str(item)
        if isinstance(item, datetime):
            return item.isoformat()
        raise TypeError

    return json.dumps(value, default=default)


MOMENTS = st.datetimes(
    timezones=st.sampled_from(
        [
            UTC,
            timezone(timedelta(hours=-5, minutes=-30)),
            timezone(timedelta(seconds=30)),  # orjson would write +00:01
        ]
    )
)
ROW_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**80), max_value=2**80),
        TEXT,
        st.decimals(allow_nan=False, allow_infinity=False),
        MOMENTS,
    ),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner),
    max_leaves=12,
)


@given(ROW_VALUES)
def test_dumps_writes_what_the_json_module_writes(value):
    """Read back, the same document (the text may differ in spacing only)."""
    written = json_dumps(value, default=lambda d: str(d))
    assert json.loads(written) == json.loads(as_json_module_writes(value))


def test_dumps_is_compact_and_keeps_moments_and_digits():
    moment = datetime(2026, 11, 30, 13, 4, 5, 6, tzinfo=UTC)
    assert json_dumps(
        {"at": moment, "cost": Decimal("0.1000000001"), "n": [1, None]},
        default=str,
    ) == (
        '{"at":"2026-11-30T13:04:05.000006+00:00","cost":"0.1000000001","n":[1,null]}'
    )


def test_dumps_refuses_what_it_cannot_write():
    with pytest.raises(TypeError):
        json_dumps({"x": object()}, default=None)
