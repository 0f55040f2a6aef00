"""Reading the next page while the current one is worked on."""

import threading

import pytest

from billing.prefetch import prefetched


def counting(n, *, fail_at=None, log=None):
    for i in range(n):
        if i == fail_at:
            raise RuntimeError(f"page {i} failed")
        if log is not None:
            log.append(("read", i))
        yield i


def test_yields_every_item_in_order():
    assert list(prefetched(counting(5))) == [0, 1, 2, 3, 4]
    assert list(prefetched(counting(0))) == []


def test_reads_one_item_ahead_and_never_more():
    log = []
    for item in prefetched(counting(4, log=log)):
        # Let the producer run as far as it may.
        threading.Event().wait(0.05)
        read = [i for kind, i in log if kind == "read"]
        assert max(read) <= item + 1
        log.append(("worked", item))
    # Item n + 1 was read before the caller finished with item n.
    assert log.index(("read", 1)) < log.index(("worked", 0))


def test_an_error_of_the_source_is_raised_where_its_item_would_be():
    seen = []
    with pytest.raises(RuntimeError, match="page 2 failed"):
        for item in prefetched(counting(5, fail_at=2)):
            seen.append(item)
    assert seen == [0, 1]


def test_stopping_early_stops_the_reader():
    source = counting(100)
    for item in prefetched(source):
        if item == 3:
            break
    assert not [t for t in threading.enumerate() if t.name == "prefetch"]
    with pytest.raises(StopIteration):
        next(source)  # closed
