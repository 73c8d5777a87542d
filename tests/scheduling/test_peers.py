"""The emulated sglang-router ``cache_aware`` decision used by offline replays."""

from __future__ import annotations

from sched_helpers import make_request

from igw.scheduling import SchedulingEngine
from igw.scheduling.peers import sglang_cache_aware

PROMPT = "You are a helpful assistant. " * 80  # ~2.3 KB: several 256-byte blocks


def _pick(engine, pool, prompt):
    return engine.schedule(make_request(prompt), pool).primary.address


def test_a_repeated_prompt_follows_the_worker_that_holds_it(make_pool):
    pool = make_pool([(0,), (1,), (2,)])
    engine = SchedulingEngine(sglang_cache_aware())
    first = _pick(engine, pool, PROMPT + "first question")
    assert _pick(engine, pool, PROMPT + "second question") == first


def test_a_cold_prompt_goes_to_the_worker_with_the_smallest_tree(make_pool):
    pool = make_pool([(0,), (1,)])
    engine = SchedulingEngine(sglang_cache_aware())
    first = _pick(engine, pool, PROMPT)
    other = _pick(engine, pool, "an unrelated prompt " * 100)
    assert other != first


def test_imbalance_beyond_both_thresholds_sends_to_the_least_loaded(make_pool):
    pool = make_pool([(0,), (1,)])
    engine = SchedulingEngine(sglang_cache_aware())
    holder = pool.by_address(_pick(engine, pool, PROMPT))
    pool.table.add_inflight(holder.id, 100, 0)  # 101 in flight there, 0 on the other
    assert _pick(engine, pool, PROMPT + "again") != holder.address


def test_imbalance_within_the_absolute_threshold_keeps_the_cache_choice(make_pool):
    pool = make_pool([(0,), (1,)])
    engine = SchedulingEngine(sglang_cache_aware())
    holder = pool.by_address(_pick(engine, pool, PROMPT))
    pool.table.add_inflight(holder.id, 30, 0)  # 31 - 0 <= 64: balanced by the peer's rule
    assert _pick(engine, pool, PROMPT + "again") == holder.address
