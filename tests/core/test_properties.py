"""Property tests: on random workloads the C++ core gives the reference's answers.

Prompts are drawn as short token paths over a small alphabet and hashed by prefix, so random
prompts share prefixes the way real ones do; some cases use arbitrary (non-chain) hash
arrays too, where an endpoint may hold a later block without an earlier one.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from igw import _core, core_reference

MAX_EP = 6
_prefix_ids: dict[tuple[int, ...], int] = {}


def chain_hashes(tokens: list[int]) -> np.ndarray:
    out = [_prefix_ids.setdefault(tuple(tokens[: i + 1]), len(_prefix_ids) + 1) for i in
           range(len(tokens))]  # fmt: skip
    return np.array(out, dtype=np.uint64)


prompts = st.one_of(
    st.lists(st.integers(0, 2), max_size=8).map(chain_hashes),
    st.lists(st.integers(1, 12), max_size=6).map(lambda v: np.array(v, dtype=np.uint64)),
)
endpoints = st.integers(0, MAX_EP - 1)
index_ops = st.lists(
    st.one_of(
        st.tuples(st.just("record"), endpoints, prompts),
        st.tuples(st.just("capacity"), endpoints, st.integers(0, 10)),
        st.tuples(st.just("remove"), endpoints, st.none()),
        st.tuples(st.just("match"), st.none(), prompts),
    ),
    max_size=40,
)

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def apply(ix, op, endpoint, arg):
    if op == "record":
        ix.record(endpoint, arg)
    elif op == "capacity":
        ix.set_capacity(endpoint, arg)
    elif op == "remove":
        ix.remove_endpoint(endpoint)
    else:
        return ix.match(arg).tolist()
    return None


@SETTINGS
@given(ops=index_ops, default_capacity=st.integers(0, 12))
def test_prefix_index_matches_reference(ops, default_capacity):
    fast = _core.PrefixIndex(MAX_EP, default_capacity)
    ref = core_reference.PrefixIndex(MAX_EP, default_capacity)
    for op, endpoint, arg in ops:
        assert apply(fast, op, endpoint, arg) == apply(ref, op, endpoint, arg), (op, endpoint)
        assert fast.entries() == ref.entries()
        assert fast.blocks() == ref.blocks()
    for e in range(MAX_EP):
        assert fast.endpoint_entries(e) == ref.endpoint_entries(e)
        assert fast.capacity_of(e) == ref.capacity_of(e)


def test_prefix_index_matches_reference_on_many_holders():
    # Bigger than hypothesis cases: blocks with hundreds of holders exercise chunk growth,
    # shrinking and the dense-arena moves, with evictions from small LRUs.
    rng = np.random.default_rng(7)
    fast, ref = _core.PrefixIndex(300, 40), core_reference.PrefixIndex(300, 40)
    trunks = [np.arange(t * 100, t * 100 + 30, dtype=np.uint64) for t in range(5)]
    for step in range(3000):
        e = int(rng.integers(300))
        trunk = trunks[int(rng.integers(5))]
        prompt = trunk[: int(rng.integers(1, 31))]
        if step % 7 == 0:
            prompt = np.concatenate([prompt, rng.integers(10**6, 10**6 + 50, 3).astype(np.uint64)])
        if step % 97 == 0:
            fast.remove_endpoint(e)
            ref.remove_endpoint(e)
        elif step % 53 == 0:
            cap = int(rng.integers(0, 50))
            fast.set_capacity(e, cap)
            ref.set_capacity(e, cap)
        else:
            fast.record(e, prompt)
            ref.record(e, prompt)
        if step % 50 == 0:
            for trunk in trunks:
                assert fast.match(trunk).tolist() == ref.match(trunk).tolist()
    assert fast.entries() == ref.entries()


rows = st.lists(
    st.tuples(
        st.integers(0, 6),  # waiting
        st.integers(0, 6),  # running
        st.floats(0, 1, width=32),  # kv_util
        st.integers(0, 4),  # inflight requests
        st.integers(0, 5000),  # inflight tokens
        st.sampled_from([0.0, 2000.0, 9000.0]),  # prefill rate
        st.booleans(),  # ready
    ),
    min_size=1,
    max_size=MAX_EP,
)
scorer_sets = st.lists(
    st.sampled_from(
        [
            ("queue-scorer", 2.0, {}),
            ("kv-cache-utilization-scorer", 2.0, {}),
            ("prefix-cache-scorer", 3.0, {}),
            ("prefix-cache-scorer", 1.0, {"matchLengthWeight": 0.3, "scaleTokens": 256}),
            ("running-requests-size-scorer", 1.0, {}),
            ("active-request-scorer", 1.5, {}),
            ("token-load-scorer", 1.0, {"queueThresholdTokens": 8000}),
            ("load-aware-scorer", 1.0, {"queueThreshold": 4}),
            ("predicted-ttft-scorer", 2.5, {}),
            ("lora-affinity-scorer", 1.0, {}),
        ]
    ),
    min_size=1,
    max_size=4,
)


def build(core, table_rows, recorded):
    table = core.EndpointTable(MAX_EP)
    index = core.PrefixIndex(MAX_EP, 1000)
    adapter = table.adapter_id("a")
    for e, (w, r, kv, ir, it, rate, ready) in enumerate(table_rows):
        assert table.add() == e
        lora = [adapter] if e % 2 else []
        table.update(e, waiting=w, running=r, kv_util=kv, now=1.0, lora_active=lora, max_lora=1)
        table.add_inflight(e, ir, it)
        table.set_prefill_rate(e, rate)
        table.set_ready(e, ready)
    for e, prompt in recorded:
        if e < len(table_rows):
            index.record(e, prompt)
    return core.Scheduler(table, index, 0)


@SETTINGS
@given(
    table_rows=rows,
    recorded=st.lists(st.tuples(endpoints, prompts), max_size=10),
    query=prompts,
    scorers=scorer_sets,
    prompt_tokens=st.integers(0, 600),
    lora=st.sampled_from([-1, 0]),
    k=st.integers(1, 3),
)
def test_scheduler_matches_reference(table_rows, recorded, query, scorers, prompt_tokens, lora, k):
    fast_s = build(_core, table_rows, recorded)
    ref_s = build(core_reference, table_rows, recorded)
    kw = dict(hashes=query, prompt_tokens=prompt_tokens, block_tokens=64, lora=lora, k=k,
              with_scores=True, reserve=False, record=False)  # fmt: skip
    fast = fast_s.pick(_core.Profile(scorers), **kw)
    ref = ref_s.pick(core_reference.Profile(scorers), **kw)
    assert fast.matched_blocks.tolist() == ref.matched_blocks.tolist()
    assert fast.total_blocks == ref.total_blocks
    assert set(fast.scores) == set(ref.scores)
    for name in ref.scores:
        assert fast.scores[name].tolist() == ref.scores[name].tolist(), name
    totals = ref.scores["total"]
    eligible = [e for e, row in enumerate(table_rows) if row[6]]
    assert len(fast.endpoints) == len(ref.endpoints) == min(k, len(eligible))
    # Same ranking up to the order among equal totals (ties are broken at random).
    assert [totals[e] for e in fast.endpoints] == [totals[e] for e in ref.endpoints]
    if fast.endpoints:
        assert fast.uncached_tokens == ref.uncached_tokens or (
            totals[fast.endpoints[0]] == totals[ref.endpoints[0]]
        )


@SETTINGS
@given(table_rows=rows, queries=st.lists(prompts, min_size=1, max_size=6))
def test_reserve_and_record_sequences_match_reference(table_rows, queries):
    # Distinct kv values make every pick tie-free, so whole sequences must agree.
    table_rows = [(*r[:2], (i + 1) / 10, *r[3:6], True) for i, r in enumerate(table_rows)]
    scorers = [("prefix-cache-scorer", 3.0, {}), ("kv-cache-utilization-scorer", 1.0, {}),
               ("token-load-scorer", 1.0, {"queueThresholdTokens": 2000})]  # fmt: skip
    fast_s, ref_s = build(_core, table_rows, []), build(core_reference, table_rows, [])
    for q in queries:
        kw = dict(hashes=q, prompt_tokens=64 * len(q) + 10, with_scores=True)
        fast = fast_s.pick(_core.Profile(scorers), **kw)
        ref = ref_s.pick(core_reference.Profile(scorers), **kw)
        totals = ref.scores["total"].tolist()
        if totals.count(max(totals)) > 1:
            return  # a tie: the two may legitimately diverge from here on
        assert fast.endpoints == ref.endpoints
        assert fast.uncached_tokens == ref.uncached_tokens


# prompts no endpoint holds (their blocks are never recorded), so the spread rule engages
fresh_prompts = st.lists(st.integers(50, 60), min_size=1, max_size=6).map(
    lambda v: np.array(v, dtype=np.uint64)
)
spread_filters = st.builds(
    lambda fraction, tolerance: ("new-prefix-spread-filter", 0.0,
                                 {"newPrefixFraction": fraction, "tolerance": tolerance}),
    st.one_of(st.sampled_from([0.0, 0.3, 1.0]), st.floats(0, 1)),
    st.one_of(st.sampled_from([0.0, 0.5]), st.floats(0, 3)),
)  # fmt: skip


# two endpoints in three ready whatever the draw: the rule needs two eligible candidates
mostly_ready = rows.map(lambda rs: [(*r[:6], r[6] or i % 3 != 0) for i, r in enumerate(rs)])


@settings(SETTINGS, max_examples=200)
@given(
    table_rows=mostly_ready,
    recorded=st.lists(st.tuples(endpoints, prompts), min_size=1, max_size=16),
    query=st.one_of(st.none(), prompts, fresh_prompts),
    spread=spread_filters,
    scorers=scorer_sets,
    position=st.integers(0, 4),
    candidates=st.lists(st.sampled_from([True, True, False]), min_size=MAX_EP, max_size=MAX_EP),
)
def test_filters_match_reference(table_rows, recorded, query, spread, scorers, position,
                                 candidates):  # fmt: skip
    plugins = list(scorers)
    plugins.insert(min(position, len(plugins)), spread)  # filters run first wherever listed
    fast_s = build(_core, table_rows, recorded)
    ref_s = build(core_reference, table_rows, recorded)
    mask = np.array(candidates[: len(table_rows)], dtype=np.bool_)
    fast_p, ref_p = _core.Profile(plugins), core_reference.Profile(plugins)
    fast_kept = fast_s.filter(fast_p, hashes=query, candidates=mask)
    ref_kept = ref_s.filter(ref_p, hashes=query, candidates=mask)
    assert fast_kept.tolist() == ref_kept.tolist()
    kw = dict(hashes=query, prompt_tokens=300, candidates=mask, k=MAX_EP, with_scores=True,
              reserve=False, record=False)  # fmt: skip
    fast, ref = fast_s.pick(fast_p, **kw), ref_s.pick(ref_p, **kw)
    for name in ref.scores:
        assert fast.scores[name].tolist() == ref.scores[name].tolist(), name
    assert sorted(fast.endpoints) == sorted(ref.endpoints)
    ready = [row[6] for row in table_rows]
    assert sorted(ref.endpoints) == [e for e, keep in enumerate(ref_kept) if keep and ready[e]]
