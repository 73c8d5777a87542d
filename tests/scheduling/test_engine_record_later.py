"""A front end that defers bookkeeping (``Request.after_send``) gets the prompt's blocks
recorded once the request is sent; a request the prefill gate holds gets them before it
waits."""

from __future__ import annotations

from sched_helpers import gated_config, make_request

from igw.scheduling import SchedulingEngine, named_policy

PROMPT = "a long shared system prompt " * 60  # ~6 blocks of 256 bytes


def _held(pool, request) -> list[int]:
    from igw.scheduling.framework import PREFIX_ATTR

    hashes = request.attrs[PREFIX_ATTR][1]
    return pool.index.match(hashes).tolist()


def test_blocks_are_recorded_when_the_request_is_sent(make_pool) -> None:
    pool = make_pool([(0,), (1,)])
    engine = SchedulingEngine(named_policy("predicted-ttft"))
    request = make_request(PROMPT)
    request.after_send = []
    decision = engine.schedule(request, pool, k=1)
    assert not any(_held(pool, request))  # not yet: the request is not on its way
    request.sent()
    held = _held(pool, request)
    assert held[decision.primary.id] == decision.total_blocks > 0


def test_a_front_end_that_does_not_defer_has_the_blocks_recorded_at_once(make_pool) -> None:
    pool = make_pool([(0,), (1,)])
    engine = SchedulingEngine(named_policy("predicted-ttft"))
    request = make_request(PROMPT)  # after_send None: ext_proc, tests, igw bench replay
    decision = engine.schedule(request, pool, k=1)
    assert _held(pool, request)[decision.primary.id] == decision.total_blocks


async def test_a_request_the_prefill_gate_holds_has_its_blocks_recorded_before_it_waits(
    make_pool,
) -> None:
    from igw.stages import ScheduleStage

    pool = make_pool([(0,)])  # one endpoint: the second long prefill waits behind the first
    engine = SchedulingEngine(gated_config(64))
    stage = ScheduleStage(engine, lambda _request: pool, k=1)
    first = make_request("first long system prompt " * 30, stream=True)
    first.after_send = []
    assert stage.process_now(first) is True  # owns the endpoint's gate: goes at once
    second = make_request("another long system prompt " * 30, stream=True)
    second.after_send = []
    assert stage.process_now(second) is False  # held behind the first
    # while it waits, requests behind it must see where its prefix goes
    held = _held(pool, second)
    assert held[second.decision.primary.id] == second.decision.total_blocks
    engine.stop_waiting(second.decision)
    engine.release(second.decision)
    engine.release(first.decision)


def test_the_next_pick_after_sent_follows_the_recorded_prefix(make_pool) -> None:
    pool = make_pool([(0,), (1,), (2,), (3,)])
    engine = SchedulingEngine(named_policy("predicted-ttft"))
    first = make_request(PROMPT)
    first.after_send = []
    chosen = engine.schedule(first, pool, k=1).primary
    first.sent()
    second = make_request(PROMPT + " and a question")
    second.after_send = []
    assert engine.schedule(second, pool, k=1).primary is chosen
