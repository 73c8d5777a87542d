"""Ranked fallbacks survive filters that only say where a request should go."""

from __future__ import annotations

from sched_helpers import add_endpoint, make_request

from igw.datastore import Pool
from igw.scheduling import SchedulingEngine, named_policy
from igw.scheduling.framework import PREFIX_ATTR


def _pool_with_one_empty_endpoint() -> Pool:
    pool = Pool("fallbacks")
    for i in range(3):
        add_endpoint(pool, i)
    engine = SchedulingEngine(named_policy("round-robin"))
    # endpoints 0 and 1 hold prefixes already; endpoint 2 holds none
    for i in range(2):
        request = make_request(f"system prompt {i} " * 200)
        decision = engine.schedule(request, pool)
        pool.index.record(i, request.attrs[PREFIX_ATTR][1])
        engine.release(decision)
    return pool


def test_a_new_prefix_goes_to_the_emptiest_endpoint_and_keeps_two_fallbacks():
    pool = _pool_with_one_empty_endpoint()
    engine = SchedulingEngine(named_policy("predicted-ttft"))
    decision = engine.schedule(make_request("a prompt nobody has sent " * 100), pool, k=3)
    addresses = [e.address for e in decision.endpoints]
    assert addresses[0] == "192.168.1.3:8000"  # the spread filter's choice
    assert sorted(addresses[1:]) == ["192.168.1.1:8000", "192.168.1.2:8000"]
    engine.release(decision)


def test_fallbacks_are_neither_reserved_nor_recorded():
    pool = _pool_with_one_empty_endpoint()
    engine = SchedulingEngine(named_policy("predicted-ttft"))
    before = [pool.index.endpoint_entries(i) for i in range(3)]
    decision = engine.schedule(make_request("another fresh prompt " * 100), pool, k=3)
    requests, _ = pool.table.inflight()
    assert list(requests[:3]) == [0, 0, 1]
    after = [pool.index.endpoint_entries(i) for i in range(3)]
    assert after[:2] == before[:2] and after[2] > before[2]
    engine.release(decision)
