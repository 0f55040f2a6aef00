import random
import threading

import pytest

from billing import limiter
from billing.limiter import AdaptiveRateLimiter


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def rate(clock):
    return AdaptiveRateLimiter(clock=clock, sleep=clock.sleep, rng=random.Random(1))


def test_starts_without_delay(rate, clock):
    rate.wait()
    assert clock.slept == []
    assert rate.calls == 1


def test_first_429_sets_200ms_then_doubles_up_to_5s(rate):
    delays = []
    for _ in range(8):
        rate.record_rate_limit()
        delays.append(rate.delay)
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert rate.rate_limited == 8


def test_five_successes_in_a_row_take_20_percent_off(rate):
    rate.record_rate_limit()
    rate.record_rate_limit()  # 0.4 s
    for _ in range(4):
        rate.record_success()
    assert rate.delay == 0.4
    rate.record_success()
    assert rate.delay == pytest.approx(0.32)


def test_a_429_resets_the_success_streak(rate):
    rate.record_rate_limit()
    for _ in range(4):
        rate.record_success()
    rate.record_rate_limit()
    for _ in range(4):
        rate.record_success()
    assert rate.delay == 0.4


def test_recovery_reaches_full_speed(rate):
    rate.record_rate_limit()
    for _ in range(5 * 40):
        rate.record_success()
    assert rate.delay == 0.0


def test_retry_after_pauses_every_worker_but_is_capped(rate, clock):
    rate.record_rate_limit(retry_after=3600)
    rate.wait()
    assert clock.slept[0] == pytest.approx(limiter.RETRY_AFTER_CAP, rel=0.1)
    assert clock.slept[0] >= limiter.RETRY_AFTER_CAP


def test_waits_carry_jitter(rate, clock):
    rate.record_rate_limit()
    for _ in range(20):
        rate.wait()
    assert len(set(clock.slept)) > 1
    assert all(0.2 <= s <= 0.2 * (1 + limiter.JITTER_FRACTION) for s in clock.slept)


def test_concurrent_workers_never_lose_a_count():
    rate = AdaptiveRateLimiter(sleep=lambda s: None)

    def work():
        for _ in range(1000):
            rate.wait()
            rate.record_rate_limit()
            rate.record_success()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (rate.calls, rate.rate_limited) == (8000, 8000)
    assert 0 < rate.delay <= limiter.MAX_DELAY
