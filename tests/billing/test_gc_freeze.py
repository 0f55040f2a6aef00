"""``heap_frozen``: the heap is frozen for the block only, and a heap frozen by
someone else stays as they left it."""

from __future__ import annotations

import gc

import pytest

from billing.gc_freeze import heap_frozen


@pytest.fixture(autouse=True)
def _thawed():
    gc.unfreeze()
    yield
    gc.unfreeze()


def collected(item: object) -> bool:
    """Whether the collector looks at ``item`` (a frozen object it skips)."""
    return any(candidate is item for candidate in gc.get_objects())


def test_the_heap_is_frozen_for_the_block_only():
    alive = [[]]
    with heap_frozen():
        assert not collected(alive)
    assert collected(alive)


def test_the_heap_thaws_when_the_block_raises():
    alive = [[]]
    with pytest.raises(RuntimeError), heap_frozen():
        raise RuntimeError("a failed run")
    assert collected(alive)


def test_a_heap_frozen_before_stays_frozen_and_is_not_frozen_again():
    old = [[]]
    gc.freeze()
    young = [[]]  # allocated after the freeze
    with heap_frozen():
        assert collected(young)
    assert collected(young)
    assert not collected(old)
