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


def test_the_heap_is_frozen_for_the_block_only():
    with heap_frozen():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_the_heap_thaws_when_the_block_raises():
    with pytest.raises(RuntimeError), heap_frozen():
        raise RuntimeError("a failed run")
    assert gc.get_freeze_count() == 0


def test_a_heap_frozen_before_stays_frozen_and_is_not_frozen_again():
    gc.freeze()
    frozen = gc.get_freeze_count()
    young = [[] for _ in range(10)]  # allocated after the freeze
    with heap_frozen():
        assert gc.get_freeze_count() == frozen  # the young objects stay young
    assert gc.get_freeze_count() == frozen
    assert young
