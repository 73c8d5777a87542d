"""Scheduler: eligibility, pickers, ranked fallbacks, atomic reservation, recording, and bad
input. Every case runs on both implementations."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest

KV = [("kv-cache-utilization-scorer", 1.0, {})]


def loaded(make_pool, core, kvs, **kw):
    table, index, sched = make_pool(core, len(kvs), **kw)
    for e, kv in enumerate(kvs):
        table.update(e, waiting=0, running=0, kv_util=kv, now=1.0)
    return table, index, sched


def test_max_score_picks_highest_and_ranks_fallbacks(make_pool, core):
    _, _, sched = loaded(make_pool, core, [0.5, 0.1, 0.9, 0.3])
    res = sched.pick(core.Profile(KV), k=3, reserve=False)
    assert res.endpoints == [1, 3, 0]


def test_k_larger_than_eligible_returns_all(make_pool, core):
    _, _, sched = loaded(make_pool, core, [0.5, 0.1])
    assert sorted(sched.pick(core.Profile(KV), k=10, reserve=False).endpoints) == [0, 1]


def test_max_score_breaks_ties_at_random(make_pool, core):
    _, _, sched = loaded(make_pool, core, [0.2, 0.2, 0.2, 0.9])
    seen = collections.Counter(
        sched.pick(core.Profile(KV), reserve=False).endpoints[0] for _ in range(300)
    )
    assert set(seen) == {0, 1, 2}
    assert min(seen.values()) > 50


def test_weighted_random_prefers_higher_scores(make_pool, core):
    _, _, sched = loaded(make_pool, core, [0.0, 0.9])  # scores 1.0 and 0.1
    seen = collections.Counter(
        sched.pick(core.Profile(KV, "weighted-random-picker"), reserve=False).endpoints[0]
        for _ in range(400)
    )
    assert seen[0] > seen[1] > 0


def test_weighted_random_with_all_zero_scores_is_uniform(make_pool, core):
    _, _, sched = loaded(make_pool, core, [1.0, 1.0, 1.0])
    seen = collections.Counter(
        sched.pick(core.Profile(KV, "weighted-random-picker"), reserve=False).endpoints[0]
        for _ in range(300)
    )
    assert set(seen) == {0, 1, 2}


def test_random_picker_returns_distinct_ranked_endpoints(make_pool, core):
    _, _, sched = loaded(make_pool, core, [0.1] * 6)
    res = sched.pick(core.Profile(KV, "random-picker"), k=4, reserve=False)
    assert len(set(res.endpoints)) == 4


def test_only_live_ready_candidates_are_eligible(make_pool, core):
    table, _, sched = loaded(make_pool, core, [0.1, 0.2, 0.3, 0.4])
    table.set_ready(0, False)
    table.remove(1)
    mask = np.array([True, True, False, True], dtype=np.bool_)
    res = sched.pick(core.Profile(KV), candidates=mask, k=4, reserve=False)
    assert res.endpoints == [3]


def test_nothing_eligible_returns_empty_list(make_pool, core):
    table, _, sched = loaded(make_pool, core, [0.1])
    table.set_ready(0, False)
    res = sched.pick(core.Profile(KV), hashes=np.array([1], dtype=np.uint64), prompt_tokens=64)
    assert res.endpoints == []
    assert res.uncached_tokens == 0


def test_reserve_charges_primary_with_uncached_tokens(make_pool, core):
    table, index, sched = loaded(make_pool, core, [0.5, 0.5])
    index.record(1, np.array([1, 2], dtype=np.uint64))
    profile = core.Profile([("prefix-cache-scorer", 1.0, {})])
    hashes = np.array([1, 2, 3], dtype=np.uint64)
    res = sched.pick(profile, hashes=hashes, prompt_tokens=150, block_tokens=64)
    assert res.endpoints == [1]
    assert res.matched_blocks.tolist() == [0, 2]
    assert (res.total_blocks, res.uncached_tokens) == (3, 150 - 128)
    s = table.snapshot()
    assert (s.inflight_requests.tolist(), s.inflight_tokens.tolist()) == ([0, 1], [0, 22])


def test_charge_is_reserved_on_the_primary_with_its_uncached_tokens(make_pool, core):
    table, index, sched = loaded(make_pool, core, [0.5, 0.5])
    index.record(1, np.array([1, 2], dtype=np.uint64))
    profile = core.Profile([("prefix-cache-scorer", 1.0, {})])
    hashes = np.array([1, 2, 3], dtype=np.uint64)
    sched.pick(profile, hashes=hashes, prompt_tokens=150, block_tokens=64, charge=500)
    s = table.snapshot()
    assert (s.inflight_requests.tolist(), s.inflight_tokens.tolist()) == ([0, 1], [0, 522])


def test_charge_without_reserve_changes_nothing(make_pool, core):
    table, _, sched = loaded(make_pool, core, [0.5, 0.5])
    sched.pick(core.Profile(KV), reserve=False, charge=500)
    assert table.snapshot().inflight_tokens.tolist() == [0, 0]


def test_pick_reserve_equals_pick_with_reserve_and_record(make_pool, core):
    results = []
    for fast in (False, True):
        table, index, sched = loaded(make_pool, core, [0.5, 0.5, 0.5], seed=7)
        index.record(2, np.array([1, 2], dtype=np.uint64))
        profile = core.Profile([("prefix-cache-scorer", 2.0, {}), ("queue-scorer", 1.0, {})])
        hashes = np.array([1, 2, 3], dtype=np.uint64)
        if fast:
            fast_result = sched.pick_reserve(profile, hashes, 150, 64, -1, 2, 9)
            ranked, matched, total, uncached = fast_result
        else:
            res = sched.pick(
                profile, hashes=hashes, prompt_tokens=150, block_tokens=64, k=2, charge=9
            )
            ranked, total, uncached = res.endpoints, res.total_blocks, res.uncached_tokens
            matched = int(res.matched_blocks[ranked[0]])
        s = table.snapshot()
        results.append(
            (ranked, matched, total, uncached, s.inflight_requests.tolist(),
             s.inflight_tokens.tolist(), index.match(hashes).tolist())
        )  # fmt: skip
    assert results[0] == results[1]
    assert results[1][:4] == ([2, results[1][0][1]], 2, 3, 22)
    assert results[1][5][2] == 22 + 9


def test_route_equals_hashing_then_pick_reserve(make_pool, core):
    prompt = b"system prompt " * 100
    seed = core.model_seed("m")
    results = []
    for fused in (False, True):
        table, index, sched = loaded(make_pool, core, [0.5, 0.5, 0.5], seed=7)
        profile = core.Profile([("prefix-cache-scorer", 2.0, {}), ("queue-scorer", 1.0, {})])
        hashes = core.hash_blocks(prompt, 256, seed, 0)
        index.record(1, hashes[:2])
        if fused:
            *head, got, hot = sched.route(profile, prompt, seed, 256, 0, 350, 64, -1, 2, 9, 40, 0.0)
            assert got.tolist() == hashes.tolist()
            assert hot is False
        else:
            head = list(sched.pick_reserve(profile, hashes, 350, 64, -1, 2, 9))
        s = table.snapshot()
        results.append((head, s.inflight_tokens.tolist(), index.match(hashes).tolist()))
    assert results[0] == results[1]
    assert results[1][0][:2] == [[1, results[1][0][0][1]], 2]


def test_route_without_record_reserves_but_leaves_the_blocks_to_the_caller(make_pool, core):
    prompt = b"system prompt " * 100
    seed = core.model_seed("m")
    table, index, sched = loaded(make_pool, core, [0.5, 0.5, 0.5], seed=7)
    profile = core.Profile([("prefix-cache-scorer", 2.0, {}), ("queue-scorer", 1.0, {})])
    args = (profile, prompt, seed, 256, 0, 350, 64, -1, 2, 9, 40, 0.0)
    ranked, _, total, _, hashes, _ = sched.route(*args, False)
    assert not index.match(hashes).any()  # nothing recorded
    assert table.snapshot().inflight_requests[ranked[0]] == 1  # but reserved
    index.record(ranked[0], hashes)  # what the caller does later
    held = index.match(hashes).tolist()
    assert held[ranked[0]] == total and sum(held) == total


def test_route_charges_a_hot_prefix_the_hot_charge(make_pool, core):
    table, _, sched = loaded(make_pool, core, [0.1, 0.1, 0.1, 0.1])
    profile = core.Profile(KV)
    prompt = b"one popular system prompt " * 40  # ~4 blocks of 256 bytes
    seed = core.model_seed("m")
    # the only prefix seen: its share is 1.0, times 4 endpoints = 4 > 1.5, so it is hot
    args = (seed, 256, 0, 260, 64, -1, 1, 5, 500)
    ranked, _, _, uncached, _, hot = sched.route(profile, prompt, *args, 1.5)
    assert hot is True
    assert table.snapshot().inflight_tokens[ranked[0]] == uncached + 500
    # with the demand off (factor 0): the plain charge, and nothing counted
    before = table.snapshot().inflight_tokens.copy()
    ranked, _, _, uncached, _, hot = sched.route(profile, b"x" * 600, *args, 0.0)
    assert hot is False
    grew = table.snapshot().inflight_tokens - before
    assert grew[ranked[0]] == uncached + 5
    assert sched.demand_groups() == 1


def test_hot_is_a_share_of_recent_requests_times_endpoints(make_pool, core):
    _, _, sched = loaded(make_pool, core, [0.1] * 4)
    for key in range(1, 9):  # eight groups, one request each
        sched.hot(key, 1.5)
    # group 1's share is about 1/9 after one more request: 4 x 1/9 < 1.5 -> not hot
    assert sched.hot(1, 1.5) is False
    for _ in range(30):
        sched.hot(99, 1.5)
    assert sched.hot(99, 1.5) is True  # ~31 of 40 recent requests
    assert sched.demand_groups() == 9


def test_route_and_hot_refuse_bad_arguments(make_pool, core):
    _, _, sched = loaded(make_pool, core, [0.1, 0.2])
    profile = core.Profile(KV)
    with pytest.raises(core.Error, match="block_bytes"):
        sched.route(profile, b"abc", 0, 0, 0, 1, 64, -1, 1, 0, 0, 0.0)
    with pytest.raises(core.Error, match="hot_charge"):
        sched.route(profile, b"abc", 0, 256, 0, 1, 64, -1, 1, 0, -1, 1.0)
    with pytest.raises(core.Error, match="finite"):
        sched.route(profile, b"abc", 0, 256, 0, 1, 64, -1, 1, 0, 0, math.nan)
    with pytest.raises(core.Error, match="factor"):
        sched.hot(1, math.inf)
    with pytest.raises(core.Error, match="key"):
        sched.hot(-1, 1.0)


def test_pick_reserve_with_nothing_eligible_reserves_nothing(make_pool, core):
    table, _, sched = loaded(make_pool, core, [0.1, 0.2])
    table.set_ready(0, False)
    table.set_ready(1, False)
    assert sched.pick_reserve(core.Profile(KV), None, 100, 64, -1, 1, 5) == ([], 0, 0, 0)
    assert table.snapshot().inflight_tokens.tolist() == [0, 0]


@pytest.mark.parametrize("charge", [-1, -100])
def test_negative_charge_is_refused(make_pool, core, charge):
    table, _, sched = loaded(make_pool, core, [0.1, 0.2])
    with pytest.raises(core.Error, match="charge"):
        sched.pick(core.Profile(KV), charge=charge)
    with pytest.raises(core.Error, match="charge"):
        sched.pick_reserve(core.Profile(KV), None, 0, 64, -1, 1, charge)
    assert table.snapshot().inflight_requests.tolist() == [0, 0]


def test_burst_of_picks_spreads_by_seeing_its_own_load(make_pool, core):
    _, _, sched = loaded(make_pool, core, [0.0] * 4)
    profile = core.Profile([("active-request-scorer", 1.0, {})])
    picks = [sched.pick(profile).endpoints[0] for _ in range(8)]
    assert collections.Counter(picks) == {0: 2, 1: 2, 2: 2, 3: 2}


def test_record_puts_prompt_in_winners_cache(make_pool, core):
    _, index, sched = loaded(make_pool, core, [0.9, 0.1])
    hashes = np.array([5, 6, 7], dtype=np.uint64)
    sched.pick(core.Profile(KV), hashes=hashes, reserve=False)
    assert index.match(hashes).tolist() == [0, 3]
    sched.pick(core.Profile(KV), hashes=np.array([8], dtype=np.uint64), record=False)
    assert index.entries() == 3


def test_prompt_bytes_path_equals_hashes_path(make_pool, core):
    _, index, sched = loaded(make_pool, core, [0.5, 0.5])
    seed = core.model_seed("m")
    text = b"system prompt " * 100
    index.record(1, core.hash_blocks(text, 256, seed))
    profile = core.Profile([("prefix-cache-scorer", 1.0, {})])
    by_bytes = sched.pick(profile, prompt=text, block_bytes=256, seed=seed, record=False)
    by_hash = sched.pick(profile, hashes=core.hash_blocks(text, 256, seed), record=False)
    assert by_bytes.matched_blocks.tolist() == by_hash.matched_blocks.tolist()
    assert by_bytes.total_blocks == by_hash.total_blocks == math.ceil(len(text) / 256)


def test_scores_absent_unless_asked(make_pool, core):
    _, _, sched = loaded(make_pool, core, [0.5])
    assert sched.pick(core.Profile(KV), reserve=False).scores is None


def test_profile_reports_scorer_types(core):
    profile = core.Profile([("queue-scorer", 2, {}), ("prefix-cache-scorer", 3, {})])
    assert profile.scorer_types == ["queue-scorer", "prefix-cache-scorer"]


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("scorers", "picker", "match"),
    [
        ([("no-such-scorer", 1.0, {})], "max-score-picker", "unknown scorer type"),
        ([("queue-scorer", 1.0, {"bogus": 1})], "max-score-picker", "unknown parameter"),
        ([("queue-scorer", -1.0, {})], "max-score-picker", "weight"),
        ([("queue-scorer", math.nan, {})], "max-score-picker", "weight"),
        ([("queue-scorer", math.inf, {})], "max-score-picker", "weight"),
        ([("queue-scorer", "heavy", {})], "max-score-picker", "weight"),
        ([("prefix-cache-scorer", 1.0, {"matchLengthWeight": 2})], "max-score-picker", "0..1"),
        ([("prefix-cache-scorer", 1.0, {"scaleTokens": 0})], "max-score-picker", "> 0"),
        ([("token-load-scorer", 1.0, {"queueThresholdTokens": "x"})], "max-score-picker", "number"),
        ([("queue-scorer", 1.0)], "max-score-picker", "tuple"),
        ([], "best-picker", "unknown picker"),
    ],
)
def test_bad_profiles_raise_clear_errors(core, scorers, picker, match):
    with pytest.raises(core.Error, match=match):
        core.Profile(scorers, picker)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hashes": np.array([1], dtype=np.int64)}, "hashes"),
        ({"hashes": [1, 2]}, "hashes"),
        ({"candidates": np.array([True], dtype=np.bool_)}, "candidates"),
        ({"candidates": np.ones(3, dtype=np.int8)}, "candidates"),
        ({"extra_scores": np.zeros((1, 3), np.float32)}, "together"),
        ({"extra_scores": np.zeros((1, 3), np.float64), "extra_weights": [1.0]}, "extra_scores"),
        ({"extra_scores": np.zeros((2, 3), np.float32), "extra_weights": [1.0]}, "extra_scores"),
        ({"extra_scores": np.zeros((1, 2), np.float32), "extra_weights": [1.0]}, "extra_scores"),
        ({"extra_scores": np.zeros((1, 3), np.float32), "extra_weights": [-1.0]}, "extra_weights"),
        ({"k": 0}, "k"),
        ({"block_tokens": 0}, "block_tokens"),
        ({"prompt_tokens": -5}, "prompt_tokens"),
        ({"lora": 257}, "lora"),
        ({"prompt": b"abc", "hashes": np.array([1], dtype=np.uint64)}, "either"),
    ],
)
def test_bad_pick_arguments_raise_and_change_nothing(make_pool, core, kwargs, match):
    table, _index, sched = loaded(make_pool, core, [0.1, 0.2, 0.3])
    with pytest.raises(core.Error, match=match):
        sched.pick(core.Profile(KV), **kwargs)
    assert table.snapshot().inflight_requests.tolist() == [0, 0, 0]
    assert sched.pick(core.Profile(KV), reserve=False).endpoints == [0]  # still works


def test_scheduler_needs_index_at_least_table_capacity(core):
    with pytest.raises(core.Error, match="max_endpoints"):
        core.Scheduler(core.EndpointTable(16), core.PrefixIndex(8), 0)


ALL_SCORERS = [
    "queue-scorer", "running-requests-size-scorer", "kv-cache-utilization-scorer",
    "prefix-cache-scorer", "lora-affinity-scorer", "active-request-scorer",
    "token-load-scorer", "load-aware-scorer", "predicted-ttft-scorer",
]  # fmt: skip


@pytest.mark.parametrize("scorer", ALL_SCORERS)
def test_every_scorer_survives_nothing_eligible(make_pool, core, scorer):
    table, _, sched = loaded(make_pool, core, [0.1, 0.2])
    table.set_ready(0, False)
    table.set_ready(1, False)
    res = sched.pick(
        core.Profile([(scorer, 1.0, {})]), hashes=np.array([1], dtype=np.uint64),
        lora=0, with_scores=True,
    )  # fmt: skip
    assert res.endpoints == []
    assert res.scores[scorer].tolist() == [0.0, 0.0]


def test_index_entries_of_ids_beyond_the_table_are_ignored(make_pool, core):
    _table, index, sched = loaded(make_pool, core, [0.5, 0.5])
    prompt = np.arange(1, 21, dtype=np.uint64)
    for e in (1, 7, 9):  # 7 and 9 are not table ids (high_water is 2)
        index.record(e, prompt)
    index.record(9, np.arange(100, 110, dtype=np.uint64))
    res = sched.pick(core.Profile([("prefix-cache-scorer", 1.0, {})]), hashes=prompt)
    assert res.matched_blocks.tolist() == [0, 20]
    assert res.endpoints == [1]


def test_non_contiguous_candidates_and_extra_scores(make_pool, core):
    _, _, sched = loaded(make_pool, core, [0.5, 0.5, 0.5])
    mask = np.array([True, False, False, False, True, False], dtype=np.bool_)[::2]  # T, F, T
    extra = np.asfortranarray(np.array([[0.1, 0.9, 0.2]], dtype=np.float32))
    res = sched.pick(core.Profile([]), candidates=mask, extra_scores=extra, extra_weights=[1.0],
                     k=3, reserve=False)  # fmt: skip
    assert res.endpoints == [2, 0]


def test_weighted_random_picks_in_proportion_to_scores(make_pool, core):
    _, _, sched = loaded(make_pool, core, [0.0, 0.5, 0.75, 1.0])  # scores 1, .5, .25, 0
    profile = core.Profile(KV, "weighted-random-picker")
    seen = collections.Counter(sched.pick(profile, reserve=False).endpoints[0] for _ in range(3000))
    assert seen[3] == 0
    assert 1.7 < seen[0] / seen[1] < 2.3
    assert 1.6 < seen[1] / seen[2] < 2.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"k": 1.5}, "k must be"), ({"reserve": 1}, "reserve must be"),
     ({"bogus": 1}, "unexpected keyword"), ({"seed": -1}, "seed must be")],
)  # fmt: skip
def test_cpp_pick_rejects_wrongly_typed_keywords(make_pool, kwargs, match):
    from igw import _core

    _, _, sched = loaded(make_pool, _core, [0.1])
    with pytest.raises(_core.Error, match=match):
        sched.pick(_core.Profile(KV), **kwargs)


def test_cpp_pick_accepts_numpy_scalars(make_pool):
    from igw import _core

    _, _, sched = loaded(make_pool, _core, [0.1, 0.2])
    res = sched.pick(_core.Profile(KV), k=np.int64(2), reserve=np.bool_(False),
                     prompt_tokens=np.int32(5))  # fmt: skip
    assert res.endpoints == [0, 1] and res.uncached_tokens == 5
