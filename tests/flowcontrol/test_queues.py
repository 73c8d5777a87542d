"""Band queues against a plain model: random pushes, removals and pops (hypothesis)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from igw.flowcontrol.queues import EDF, FCFS, GLOBAL_STRICT, ROUND_ROBIN, Band, Item
from igw.pipeline import Request

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.sampled_from("abc"), st.integers(0, 50), st.integers(1, 9)),
        st.tuples(st.just("discard"), st.integers(0, 1000)),
        st.tuples(st.just("pop")),
    ),
    max_size=120,
)


def make_item(seq: int, flow: str, deadline: int, size: int) -> Item:
    return Item(
        request=Request(f"r{seq}"),
        priority=0,
        flow=flow,
        size=size,
        enqueued_at=0.0,
        expires_at=math.inf,
        seq=seq,
        future=None,  # type: ignore[arg-type]  # bands never touch the future
        deadline=float(deadline),
    )


def run(band: Band, ops, expect=None) -> tuple[list[Item], list[Item]]:
    """Apply ops to the band and to a list model; check counts after every step, and with
    ``expect(live)`` that every pop returns the item the model says comes next."""
    live: list[Item] = []
    popped: list[Item] = []
    seq = 0
    for op in ops:
        if op[0] == "push":
            item = make_item(seq, op[1], op[2], op[3])
            seq += 1
            band.push(item)
            live.append(item)
        elif op[0] == "discard" and live:
            item = live.pop(op[1] % len(live))
            item.done = True
            band.discard(item)
        elif op[0] == "pop":
            item = band.pop()
            if not live:
                assert item is None
                continue
            assert item is not None and item in live
            if expect is not None:
                assert item is expect(live)
            live.remove(item)
            item.done = True
            popped.append(item)
        assert band.count == len(live)
        assert band.bytes == sum(i.size for i in live)
        assert band.entries() <= 2 * len(live) + 70  # tombstones stay bounded
    return live, popped


@settings(max_examples=80, deadline=None)
@given(OPS)
def test_global_strict_fcfs_pops_the_oldest_live_item(ops):
    band = Band(0, max_requests=10**6, max_bytes=1e18, fairness=GLOBAL_STRICT, ordering=FCFS)
    run(band, ops, expect=lambda live: min(live, key=lambda i: i.seq))


@settings(max_examples=80, deadline=None)
@given(OPS)
def test_global_strict_edf_pops_the_earliest_deadline(ops):
    band = Band(0, max_requests=10**6, max_bytes=1e18, fairness=GLOBAL_STRICT, ordering=EDF)
    run(band, ops, expect=lambda live: min(live, key=lambda i: (i.deadline, i.seq)))


@settings(max_examples=80, deadline=None)
@given(OPS)
def test_round_robin_keeps_counts_and_fcfs_within_each_flow(ops):
    band = Band(0, max_requests=10**6, max_bytes=1e18, fairness=ROUND_ROBIN, ordering=FCFS)
    live, popped = run(band, ops)
    assert band.count == len(live)
    for flow in "abc":
        seqs = [i.seq for i in popped if i.flow == flow]
        assert seqs == sorted(seqs)  # FCFS inside a flow
    while band.count:
        assert band.pop() is not None
    assert band.pop() is None


def test_round_robin_never_serves_a_flow_twice_while_another_waits():
    band = Band(0, max_requests=100, max_bytes=1e9, fairness=ROUND_ROBIN, ordering=FCFS)
    seq = 0
    for flow, n in (("a", 4), ("b", 2), ("c", 1)):
        for _ in range(n):
            band.push(make_item(seq, flow, 0, 1))
            seq += 1
    flows = []
    while (item := band.pop()) is not None:
        item.done = True
        flows.append(item.flow)
    assert flows == ["a", "b", "c", "a", "b", "a", "a"]
