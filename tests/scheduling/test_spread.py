"""new-prefix-spread-filter: where a prefix nobody holds may land."""

from __future__ import annotations

import numpy as np
from sched_helpers import make_request

from igw.scheduling import SchedulingEngine, named_policy
from igw.scheduling.plugins.spread import NewPrefixSpreadFilter, SpreadParams


def _hashes(engine, pool, prompt: str):
    """Schedule nothing; just let the engine hash ``prompt`` the way the policy does."""
    request = make_request(prompt)
    profile = engine.built.profiles["default"]
    from igw.scheduling._backend import core_of

    engine._prefix(request, profile, core_of(pool.scheduler))
    return request


def _filter(pool, request, tolerance: float = 0.1) -> np.ndarray:
    mask = np.ones(pool.table.high_water, dtype=np.bool_)
    spread = NewPrefixSpreadFilter("spread", SpreadParams(tolerance=tolerance))
    return spread.filter(request, pool, pool.table.snapshot(), mask)


def _hold(pool, engine, endpoint: int, prompt: str) -> None:
    request = _hashes(engine, pool, prompt)
    from igw.scheduling.framework import PREFIX_ATTR

    pool.index.record(endpoint, request.attrs[PREFIX_ATTR][1])


def test_a_new_prefix_goes_to_the_endpoints_holding_the_fewest_prefixes(make_pool):
    pool = make_pool([(i, 0, 0.0) for i in range(3)])
    engine = SchedulingEngine(named_policy("predicted-ttft"))
    _hold(pool, engine, 0, "group a " * 200)
    _hold(pool, engine, 1, "group b " * 200)
    kept = _filter(pool, _hashes(engine, pool, "group c " * 200))
    assert kept.tolist() == [False, False, True]
    decision = engine.schedule(make_request("group c " * 200), pool)
    assert decision.primary.id == 2


def test_a_cached_prefix_is_not_narrowed(make_pool):
    pool = make_pool([(i, 0, 0.0) for i in range(3)])
    engine = SchedulingEngine(named_policy("predicted-ttft"))
    _hold(pool, engine, 0, "group a " * 200)
    kept = _filter(pool, _hashes(engine, pool, "group a " * 200 + "a question"))
    assert kept.all()


def test_sizes_within_tolerance_tie_and_larger_ones_are_left_out(make_pool):
    pool = make_pool([(i, 0, 0.0) for i in range(3)])
    engine = SchedulingEngine(named_policy("predicted-ttft"))
    _hold(pool, engine, 0, "group a " * 200)
    _hold(pool, engine, 1, "group b " * 200 + "x")  # same number of blocks as group a
    _hold(pool, engine, 2, "group c " * 200)
    _hold(pool, engine, 2, "group d " * 200)
    kept = _filter(pool, _hashes(engine, pool, "group e " * 200))
    assert kept.tolist() == [True, True, False]


def test_equal_sizes_within_tolerance_are_all_kept(make_pool):
    pool = make_pool([(i, 0, 0.0) for i in range(3)])
    engine = SchedulingEngine(named_policy("predicted-ttft"))
    kept = _filter(pool, _hashes(engine, pool, "brand new " * 200))
    assert kept.all()  # nobody holds anything: the cost model chooses among all
