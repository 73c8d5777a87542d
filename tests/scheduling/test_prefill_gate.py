"""The prefill gate: one long prefill in flight per endpoint; cache hits never wait for it."""

from __future__ import annotations

import pytest
from sched_helpers import add_endpoint, gated_config, make_request

from igw.datastore import Pool
from igw.scheduling import SchedulingEngine, named_policy
from igw.scheduling.gate import PrefillGate

GATE_TOKENS = 256


class Ticket:
    """Tickets are compared by identity, like the engine's decisions (unhashable)."""

    __hash__ = None  # type: ignore[assignment]


# ------------------------------------------------------------------ the bookkeeping alone


def test_the_first_ticket_owns_the_gate_and_the_next_waits():
    gate = PrefillGate()
    calls: list[str] = []
    first, second = Ticket(), Ticket()
    assert gate.enter("a", first, lambda: calls.append("first"))
    assert not gate.enter("a", second, lambda: calls.append("second"))
    assert gate.owner("a") is first and gate.waiting("a") == 1 and calls == []


def test_the_owner_leaving_hands_the_gate_to_the_longest_waiting():
    gate = PrefillGate()
    calls: list[str] = []
    owner, early, late = Ticket(), Ticket(), Ticket()
    gate.enter("a", owner, lambda: None)
    gate.enter("a", early, lambda: calls.append("early"))
    gate.enter("a", late, lambda: calls.append("late"))
    gate.leave("a", owner)
    assert calls == ["early"] and gate.owner("a") is early
    gate.leave("a", early)
    assert calls == ["early", "late"] and gate.owner("a") is late


def test_a_waiter_giving_up_is_never_called_and_keeps_nobody_waiting():
    gate = PrefillGate()
    calls: list[str] = []
    owner, quitter = Ticket(), Ticket()
    gate.enter("a", owner, lambda: None)
    gate.enter("a", quitter, lambda: calls.append("quitter"))
    gate.leave("a", quitter)
    gate.leave("a", owner)
    assert calls == [] and gate.owner("a") is None and len(gate) == 0


def test_leaving_twice_or_without_entering_is_harmless():
    gate = PrefillGate()
    owner, stranger = Ticket(), Ticket()
    gate.enter("a", owner, lambda: None)
    gate.leave("a", stranger)
    assert gate.owner("a") is owner
    gate.leave("a", owner)
    gate.leave("a", owner)
    assert len(gate) == 0


def test_endpoints_have_independent_gates():
    gate = PrefillGate()
    assert gate.enter("a", Ticket(), lambda: None)
    assert gate.enter("b", Ticket(), lambda: None)


def test_a_follower_goes_right_after_the_long_prefill_of_its_group():
    gate = PrefillGate()
    calls: list[str] = []
    owner, leader, follower = Ticket(), Ticket(), Ticket()
    gate.enter("a", owner, lambda: None, group=1)
    gate.enter("a", leader, lambda: calls.append("leader"), group=2)
    assert gate.follow("a", follower, lambda: calls.append("follower"), group=2)
    assert len(gate) == 3
    gate.leave("a", owner)
    assert calls == ["leader", "follower"] and gate.owner("a") is leader
    gate.leave("a", leader)
    assert len(gate) == 0


def test_nothing_to_follow_without_a_waiting_prefill_of_the_group():
    gate = PrefillGate()
    owner, other = Ticket(), Ticket()
    gate.enter("a", owner, lambda: None, group=1)
    assert not gate.follow("a", Ticket(), lambda: None, group=1)  # the owner is not waiting
    gate.enter("a", other, lambda: None, group=2)
    assert not gate.follow("a", Ticket(), lambda: None, group=3)
    assert not gate.follow("b", Ticket(), lambda: None, group=2)


def test_followers_go_when_their_long_prefill_gives_up():
    gate = PrefillGate()
    calls: list[str] = []
    owner, leader, follower = Ticket(), Ticket(), Ticket()
    gate.enter("a", owner, lambda: None, group=1)
    gate.enter("a", leader, lambda: calls.append("leader"), group=2)
    gate.follow("a", follower, lambda: calls.append("follower"), group=2)
    gate.leave("a", leader)  # timed out or cancelled while waiting
    assert calls == ["follower"] and gate.owner("a") is owner


def test_a_follower_giving_up_is_never_called():
    gate = PrefillGate()
    calls: list[str] = []
    owner, leader, follower = Ticket(), Ticket(), Ticket()
    gate.enter("a", owner, lambda: None, group=1)
    gate.enter("a", leader, lambda: None, group=2)
    gate.follow("a", follower, lambda: calls.append("follower"), group=2)
    gate.leave("a", follower)
    gate.leave("a", owner)
    assert calls == [] and len(gate) == 1  # the leader owns the gate now


# ---------------------------------------------------------------------- in the engine


@pytest.fixture
def one_endpoint():
    pool = Pool("gate")
    add_endpoint(pool, 0)
    return pool


def _long(i: int, **fields):
    # ~2,000 tokens of text nobody has sent before: a long uncached prefill
    return make_request(f"document {i} " + "lorem ipsum dolor sit amet " * 300, **fields)


def _schedule(engine, pool, request):
    """Schedule a prompt the endpoint has never seen: a long uncached prefill."""
    decision = engine.schedule(request, pool)
    assert decision.uncached_tokens >= GATE_TOKENS
    return decision


def _owner_and_held(pool, calls: list[str]):
    """Two long streamed prompts on one endpoint: the first owns its gate, the second waits
    and appends "held" to ``calls`` when it may go. Returns (engine, d1, d2)."""
    engine = SchedulingEngine(gated_config(GATE_TOKENS))
    first, second = _long(1, stream=True), _long(2, stream=True)
    d1, d2 = _schedule(engine, pool, first), _schedule(engine, pool, second)
    assert not engine.hold_for_prefill(d1, first, lambda: None)
    assert engine.hold_for_prefill(d2, second, lambda: calls.append("held"))
    return engine, d1, d2


def test_a_second_long_streamed_prefill_on_the_endpoint_is_held(one_endpoint):
    calls: list[str] = []
    engine, _, _ = _owner_and_held(one_endpoint, calls)  # asserts the first goes, the second waits
    assert calls == [] and engine.gate_tickets == 2


def test_the_owners_first_token_lets_the_held_request_go(one_endpoint):
    calls: list[str] = []
    engine, d1, d2 = _owner_and_held(one_endpoint, calls)
    engine.observe_first_token(d1, 0.2)
    assert calls == ["held"]
    engine.release(d1)
    engine.release(d2)
    assert engine.gate_tickets == 0


def test_a_cache_hit_on_a_prefix_still_waiting_at_the_gate_waits_behind_it(one_endpoint):
    calls: list[str] = []
    engine, d1, d2 = _owner_and_held(one_endpoint, calls)
    # the same prompt as the held one: igw counts it cached on the endpoint, the server has not
    # seen it yet; sent now, it would do the long prefill itself, past the gate
    follower = _long(2, stream=True)
    d3 = engine.schedule(follower, one_endpoint)
    assert d3.uncached_tokens < GATE_TOKENS
    assert engine.hold_for_prefill(d3, follower, lambda: calls.append("follower"))
    engine.observe_first_token(d1, 0.2)
    assert calls == ["held", "follower"]
    for decision in (d1, d2, d3):
        engine.release(decision)
    assert engine.gate_tickets == 0


def test_the_owner_ending_without_a_token_lets_the_held_request_go(one_endpoint):
    calls: list[str] = []
    engine, d1, _ = _owner_and_held(one_endpoint, calls)
    engine.release(d1)  # failed, or the client left
    assert calls == ["held"]


def test_cache_hits_and_buffered_requests_are_never_held(one_endpoint):
    engine = SchedulingEngine(gated_config(GATE_TOKENS))
    first = _long(1, stream=True)
    d1 = _schedule(engine, one_endpoint, first)
    assert not engine.hold_for_prefill(d1, first, lambda: None)
    again = _long(1, stream=True)  # same prompt: cached on the endpoint now
    d_again = engine.schedule(again, one_endpoint)
    assert d_again.uncached_tokens < GATE_TOKENS
    assert not engine.hold_for_prefill(d_again, again, lambda: None)
    buffered = _long(3, stream=False)
    assert not engine.hold_for_prefill(_schedule(engine, one_endpoint, buffered), buffered,
                                       lambda: None)  # fmt: skip


def test_a_held_request_that_stops_waiting_leaves_no_trace(one_endpoint):
    calls: list[str] = []
    engine, d1, d2 = _owner_and_held(one_endpoint, calls)
    engine.stop_waiting(d2)
    engine.release(d1)
    engine.release(d2)
    assert calls == [] and engine.gate_tickets == 0


def test_profiles_without_the_gate_never_hold(one_endpoint):
    engine = SchedulingEngine(gated_config(0))
    first, second = _long(1, stream=True), _long(2, stream=True)
    d1, d2 = engine.schedule(first, one_endpoint), engine.schedule(second, one_endpoint)
    assert not engine.hold_for_prefill(d1, first, lambda: None)
    assert not engine.hold_for_prefill(d2, second, lambda: None)


def test_the_gate_parameters_are_validated():
    from igw.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match="prefillGateTokens"):
        SchedulingEngine(gated_config(-1))


# ------------------------------------------------------------------- routing effect


def test_predicted_ttft_gates_long_prefills_by_default():
    engine = SchedulingEngine(named_policy("predicted-ttft"))
    assert next(iter(engine.built.profiles.values())).prefill_gate_tokens > 0
    engine = SchedulingEngine(named_policy("default"))
    assert next(iter(engine.built.profiles.values())).prefill_gate_tokens == 0


def test_the_gate_lowers_ttft_p90_of_a_cold_start_in_replay():
    workloads = pytest.importorskip("igw.bench.workloads")
    from igw.scheduling.replay import replay
    from igw.sim.profiles import make_params

    # as `python -m igw.scheduling.replay --workload shared-prefix --requests 600 --rate 105
    # --seed 1`: 16 cold prefixes met at ~70% of the fleet's capacity
    shape = workloads.WorkloadParams(requests=600, rate=105.0, seed=1)
    requests = workloads.build("shared-prefix", shape)
    params = make_params("default")
    without = replay(gated_config(0), requests, params=params, seed=1)
    gated = replay(gated_config(1024), requests, params=params, seed=1)
    p90 = (without.percentile(without.ttft_ms, 90), gated.percentile(gated.ttft_ms, 90))
    assert p90[1] < 0.9 * p90[0]
    assert gated.hit_rate >= without.hit_rate - 0.005  # no extra cold prefills
    assert gated.unreleased == 0 and gated.leftover_inflight == 0
