"""
Reading a page's items without the generated client's slow generic path
(issue 16, item 1): ``observation_from_wire`` must read every item exactly as
``parse_obj_as(ObservationV2, item)`` does, the same model or the same
validation error, over the whole range the API spec allows and beyond it.
"""

from __future__ import annotations

import httpx
import pydantic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langfuse.api.commons.types.observation_v2 import ObservationV2
from langfuse.api.core.pydantic_utilities import parse_obj_as

from billing.emulators.base import Faults
from billing.emulators.scenario import generate_scenario
from billing.langfuse_source import FIELD_GROUPS, WIRE_NAMES, observation_from_wire

FIELD_NAMES = sorted(ObservationV2.model_fields)
# Any string Langfuse can store: NUL, lone surrogates, any script.
TEXT = st.text(st.characters(exclude_categories=()), max_size=30)
TIMESTAMPS = st.one_of(
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
    st.sampled_from(["", "2026-13-01T00:00:00Z", "yesterday", "1764496800"]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    TIMESTAMPS,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            TEXT | st.sampled_from(["input", "output", "total"]), inner, max_size=4
        )
    ),
    max_leaves=8,
)
# Both spellings of a field, wire (camelCase) and Python, and unknown keys.
KEYS = st.sampled_from([*WIRE_NAMES, *FIELD_NAMES]) | TEXT


VALID_TIMESTAMPS = st.datetimes(timezones=st.none() | st.timezones()).map(
    lambda moment: moment.isoformat()
)


def of_its_type(name: str):
    """Values the field's annotation accepts, so that many items validate."""
    annotation = str(ObservationV2.model_fields[name].annotation)
    if "datetime" in annotation:
        return (
            VALID_TIMESTAMPS if name == "start_time" else VALID_TIMESTAMPS | st.none()
        )
    for marker, values in (
        ("ObservationLevel", st.sampled_from(["DEBUG", "DEFAULT", "WARNING", "ERROR"])),
        ("Dict[str, int]", st.dictionaries(TEXT, st.integers(-(2**40), 2**40))),
        ("Dict[str, float]", st.dictionaries(TEXT, st.floats() | st.integers())),
        ("Dict[str, typing.Any]", st.dictionaries(TEXT, VALUES, max_size=4)),
        ("List[str]", st.lists(TEXT, max_size=3)),
        ("bool", st.booleans()),
        ("int", st.integers(-(2**40), 2**40)),
        ("float", st.floats() | st.integers(-(2**40), 2**40)),
        ("Any", VALUES),
    ):
        if marker in annotation:
            return values | st.none()
    return TEXT if annotation == "<class 'str'>" else TEXT | st.none()


@st.composite
def items(draw):
    """
    An item with some fields in either spelling: all of their type (it
    validates) or some of any value (it fails, or a lax value is coerced).
    """
    item = {}
    names = draw(st.sets(st.sampled_from(FIELD_NAMES), max_size=15))
    if draw(st.integers(0, 9)) < 8:
        names |= {"id", "start_time", "project_id", "type"}
    fuzz = draw(st.booleans())
    for name in sorted(names):
        wire = next((w for w, n in WIRE_NAMES.items() if n == name), name)
        key = draw(st.sampled_from([wire, name])) if wire != name else name
        any_value = fuzz and draw(st.integers(0, 3)) == 0
        item[key] = draw(VALUES if any_value else of_its_type(name))
    extra = st.dictionaries(TEXT, VALUES, max_size=2)
    item.update(draw(extra | st.dictionaries(KEYS, VALUES, max_size=2)))
    return item


def read_both(item):
    outcomes = []
    for read in (
        lambda: parse_obj_as(ObservationV2, item),
        lambda: observation_from_wire(item),
    ):
        try:
            outcomes.append(("model", read()))
        except pydantic.ValidationError as exc:
            outcomes.append(("error", [(e["loc"], e["type"]) for e in exc.errors()]))
    return outcomes


def assert_read_alike(item) -> None:
    (kind, slow), (fast_kind, fast) = read_both(item)
    assert kind == fast_kind, item
    assert slow == fast, item
    if kind == "model":
        assert slow.model_dump() == fast.model_dump()
        assert slow.model_extra == fast.model_extra
        assert slow.model_fields_set == fast.model_fields_set


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items())
def test_any_item_reads_as_the_generated_client_reads_it(item):
    assert_read_alike(item)


@given(VALUES)
def test_an_item_that_is_not_an_object_fails_alike(item):
    assert_read_alike(item)


def test_every_item_the_emulator_serves_reads_alike(langfuse_emulator):
    """Hostile strings, unknown and unpriced models, running and late
    observations, and every corruption the emulator applies to a page."""
    emulator = langfuse_emulator.emulator
    scenario = generate_scenario(
        tenants=1, traces_per_tenant=300, hostile_fraction=0.2, late_fraction=0.1
    )
    scenario.load_into(emulator, late_delay_seconds=0)
    emulator.faults = Faults(rate_malformed=0.2, seed=7)
    tenant = scenario.tenants[0]
    served, cursor = 0, None
    with httpx.Client(
        base_url=langfuse_emulator.url, auth=(tenant.public_key, tenant.secret_key)
    ) as client:
        while True:
            params = {
                "fields": FIELD_GROUPS,
                "limit": 1000,
                "fromStartTime": scenario.window_start.isoformat(),
            }
            if cursor:
                params["cursor"] = cursor
            body = client.get("/api/public/v2/observations", params=params).json()
            for item in body["data"]:
                assert_read_alike(item)
            served += len(body["data"])
            cursor = body["meta"].get("cursor")
            if not cursor or not body["data"]:
                break
    assert served > 900
    assert emulator.stats.malformed  # corrupted items were among them
