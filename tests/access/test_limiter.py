"""The in-memory token buckets and period counters."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from igw.access.limiter import Limiter, MemoryLimiter, Rate


def test_memory_limiter_implements_the_limiter_protocol(clock):
    assert isinstance(MemoryLimiter(clock), Limiter)


def test_rate_burst_defaults_to_one_minute():
    assert Rate(120).burst == 120
    assert Rate(120, 10).burst == 10


def test_rate_must_be_positive():
    with pytest.raises(ValueError, match="per_minute"):
        Rate(0)


async def test_take_empties_the_bucket_then_says_how_long_to_wait(clock):
    limiter = MemoryLimiter(clock)
    rate = Rate(60, 2)  # one per second, two saved up
    assert await limiter.take("t", rate) == 0
    assert await limiter.take("t", rate) == 0
    assert await limiter.take("t", rate) == pytest.approx(1.0)


async def test_bucket_refills_with_time_up_to_the_burst(clock):
    limiter = MemoryLimiter(clock)
    rate = Rate(60, 2)
    for _ in range(2):
        await limiter.take("t", rate)
    clock.advance(0.5)
    assert await limiter.take("t", rate) == pytest.approx(0.5)  # half a request there
    clock.advance(100)
    assert await limiter.level("t", rate) == 2


async def test_debit_can_drive_the_level_negative(clock):
    limiter = MemoryLimiter(clock)
    rate = Rate(600)  # 10 per second
    limiter.debit("t", rate, 1000)
    assert await limiter.level("t", rate) == pytest.approx(-400)
    clock.advance(10)
    assert await limiter.level("t", rate) == pytest.approx(-300)


async def test_keys_have_separate_buckets(clock):
    limiter = MemoryLimiter(clock)
    rate = Rate(60, 1)
    assert await limiter.take("a", rate) == 0
    assert await limiter.take("b", rate) == 0
    assert await limiter.take("a", rate) > 0


async def test_counter_restarts_in_a_new_period(clock):
    limiter = MemoryLimiter(clock)
    limiter.add("t", "2026-11-26", 7)
    limiter.add("t", "2026-11-26", 3)
    assert await limiter.used("t", "2026-11-26") == 10
    assert await limiter.used("t", "2026-11-27") == 0
    limiter.add("t", "2026-11-27", 1)
    assert await limiter.used("t", "2026-11-27") == 1
    assert await limiter.used("t", "2026-11-26") == 0  # the old day is forgotten


@settings(max_examples=60, deadline=None)
@given(
    per_minute=st.floats(1, 6000),
    burst=st.integers(1, 50),
    steps=st.lists(st.floats(0, 5), min_size=1, max_size=40),
)
async def test_take_never_grants_more_than_burst_plus_refill(per_minute, burst, steps):
    now = [0.0]
    limiter = MemoryLimiter(lambda: now[0])
    rate = Rate(per_minute, burst)
    granted = 0
    for step in steps:
        now[0] += step
        while await limiter.take("t", rate) == 0:
            granted += 1
    assert granted <= burst + sum(steps) * rate.per_second + 1e-6
