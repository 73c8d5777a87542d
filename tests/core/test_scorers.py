"""Every built-in scorer's formula (REFERENCE.md Part 2, 1.3), table-driven, on both
implementations. Each case sets up endpoints, asks for per-scorer scores and compares."""

from __future__ import annotations

import numpy as np
import pytest

ROWS = [  # waiting, running, kv_util, inflight_requests, inflight_tokens
    (0, 10, 0.10, 0, 0),
    (5, 20, 0.50, 2, 1000),
    (10, 30, 0.90, 4, 3000),
]


def scores_for(make_pool, core, scorer, params=None, *, rows=ROWS, setup=None, **pick):
    table, index, sched = make_pool(core, len(rows))
    for e, (w, r, kv, ir, it) in enumerate(rows):
        table.update(e, waiting=w, running=r, kv_util=kv, now=1.0)
        table.add_inflight(e, ir, it)
    if setup:
        setup(table, index)
    profile = core.Profile([(scorer, 1.0, params or {})])
    res = sched.pick(profile, with_scores=True, reserve=False, record=False, **pick)
    return res.scores[scorer].tolist(), res.scores["total"].tolist()


def approx(values):
    return pytest.approx(values, rel=1e-6, abs=1e-6)


def test_queue_scorer_is_min_max_over_waiting(make_pool, core):
    got, _ = scores_for(make_pool, core, "queue-scorer")
    assert got == approx([1.0, 0.5, 0.0])


def test_queue_scorer_all_equal_scores_one(make_pool, core):
    got, _ = scores_for(make_pool, core, "queue-scorer", rows=[(3, 0, 0, 0, 0)] * 3)
    assert got == approx([1.0, 1.0, 1.0])


def test_running_requests_size_scorer_is_min_max_over_running(make_pool, core):
    got, _ = scores_for(make_pool, core, "running-requests-size-scorer")
    assert got == approx([1.0, 0.5, 0.0])


def test_kv_cache_utilization_scorer_is_one_minus_util(make_pool, core):
    got, _ = scores_for(make_pool, core, "kv-cache-utilization-scorer")
    assert got == approx([0.9, 0.5, 0.1])


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [(128.0, [0.5, 0.5 * (1 - 5 / 128), 0.5 * (1 - 10 / 128)]), (8.0, [0.5, 0.5 * 3 / 8, 0.0])],
)
def test_load_aware_scorer(make_pool, core, threshold, expected):
    got, _ = scores_for(make_pool, core, "load-aware-scorer", {"queueThreshold": threshold})
    assert got == approx(expected)


def test_active_request_scorer_default(make_pool, core):
    got, _ = scores_for(make_pool, core, "active-request-scorer")
    assert got == approx([1.0, 0.5, 0.0])


def test_active_request_scorer_idle_threshold_and_max_busy(make_pool, core):
    params = {"idleThreshold": 2, "maxBusyScore": 0.5}
    got, _ = scores_for(make_pool, core, "active-request-scorer", params)
    assert got == approx([1.0, 1.0, 0.0])
    rows = [(0, 0, 0, 1, 0), (0, 0, 0, 3, 0), (0, 0, 0, 4, 0)]
    got, _ = scores_for(make_pool, core, "active-request-scorer", {"maxBusyScore": 0.5}, rows=rows)
    assert got == approx([0.5 * 3 / 4, 0.5 * 1 / 4, 0.0])


def test_token_load_scorer_counts_inflight_plus_uncached(make_pool, core):
    params = {"queueThresholdTokens": 10000}
    got, _ = scores_for(make_pool, core, "token-load-scorer", params, prompt_tokens=1000)
    assert got == approx([1 - 1000 / 10000, 1 - 2000 / 10000, 1 - 4000 / 10000])
    got, _ = scores_for(make_pool, core, "token-load-scorer", params)
    assert got == approx([1.0, 0.9, 0.7])


def test_token_load_scorer_saturates_at_threshold(make_pool, core):
    got, _ = scores_for(make_pool, core, "token-load-scorer", {"queueThresholdTokens": 1500})
    assert got == approx([1.0, 1 - 1000 / 1500, 0.0])


def lora_setup(table, index):
    a, b = table.adapter_id("a"), table.adapter_id("b")
    table.update(0, waiting=0, running=0, kv_util=0.0, now=1.0, lora_active=[a], max_lora=1)
    table.update(1, waiting=0, running=0, kv_util=0.0, now=1.0, lora_active=[b], max_lora=4)
    table.update(2, waiting=0, running=0, kv_util=0.0, now=1.0, lora_active=[b],
                 lora_waiting=[a], max_lora=1)  # fmt: skip


def test_lora_affinity_scorer_tiers(make_pool, core):
    rows = [*ROWS, (0, 0, 0.0, 0, 0)]  # endpoint 3: no LoRA info (max_lora 0)
    got, _ = scores_for(
        make_pool, core, "lora-affinity-scorer", rows=rows, setup=lora_setup, lora=0
    )
    assert got == approx([1.0, 0.8, 0.6, 0.0])


def test_lora_affinity_scorer_without_adapter_is_neutral(make_pool, core):
    got, _ = scores_for(make_pool, core, "lora-affinity-scorer", setup=lora_setup)
    assert got == approx([1.0, 1.0, 1.0])


def test_lora_affinity_scorer_unknown_adapter_scores_free_slots_only(make_pool, core):
    """An adapter in no endpoint's lists (find_adapter -> -1): 0.8 where a slot is free
    (endpoint 1: 1 of 4 used), 0.0 where the slots are full, as the reference scores it."""
    rows = [*ROWS, (0, 0, 0.0, 0, 0)]
    got, _ = scores_for(
        make_pool, core, "lora-affinity-scorer", rows=rows, setup=lora_setup,
        lora=core.UNKNOWN_ADAPTER,
    )  # fmt: skip
    assert got == approx([0.0, 0.8, 0.0, 0.0])


def prefix_setup(table, index):
    index.record(0, np.arange(1, 9, dtype=np.uint64))  # 8 of 10 blocks
    index.record(1, np.arange(1, 3, dtype=np.uint64))  # 2 of 10


HASHES = np.arange(1, 11, dtype=np.uint64)


def test_prefix_cache_scorer_is_matched_fraction(make_pool, core):
    got, _ = scores_for(make_pool, core, "prefix-cache-scorer", setup=prefix_setup, hashes=HASHES)
    assert got == approx([0.8, 0.2, 0.0])


def test_prefix_cache_scorer_length_term(make_pool, core):
    params = {"matchLengthWeight": 0.5, "scaleTokens": 1024}
    got, _ = scores_for(
        make_pool,
        core,
        "prefix-cache-scorer",
        params,
        setup=prefix_setup,
        hashes=HASHES,
        block_tokens=64,
    )
    expected = [0.5 * min(1, m * 64 / 1024) ** 2 + 0.5 * m / 10 for m in (8, 2, 0)]
    assert got == approx(expected)


def test_prefix_cache_scorer_without_prompt_is_zero(make_pool, core):
    got, _ = scores_for(make_pool, core, "prefix-cache-scorer", setup=prefix_setup)
    assert got == approx([0.0, 0.0, 0.0])


def test_predicted_ttft_scorer_is_fastest_over_each(make_pool, core):
    def setup(table, index):
        prefix_setup(table, index)
        table.set_prefill_rate(1, 4000.0)

    params = {"defaultPrefillRate": 8000.0, "waitingTokens": 100.0}
    got, _ = scores_for(
        make_pool, core, "predicted-ttft-scorer", params, setup=setup, hashes=HASHES,
        prompt_tokens=640, block_tokens=64,
    )  # fmt: skip
    ttft = [
        (0 + 0 * 100 + (640 - 8 * 64)) / 8000,
        (1000 + 5 * 100 + (640 - 2 * 64)) / 4000,
        (3000 + 10 * 100 + 640) / 8000,
    ]
    assert got == approx([min(ttft) / t for t in ttft])


def test_predicted_ttft_scorer_zero_work_scores_one(make_pool, core):
    rows = [(0, 0, 0, 0, 0), (2, 0, 0, 0, 0)]
    got, _ = scores_for(make_pool, core, "predicted-ttft-scorer", rows=rows)
    assert got == approx([1.0, 0.0])


def test_total_is_weighted_sum_without_normalization(make_pool, core):
    table, _index, sched = make_pool(core, 3)
    for e, (w, r, kv, _, _) in enumerate(ROWS):
        table.update(e, waiting=w, running=r, kv_util=kv, now=1.0)
    profile = core.Profile([("queue-scorer", 2.0, {}), ("kv-cache-utilization-scorer", 3.0, {})])
    res = sched.pick(profile, with_scores=True, reserve=False, record=False)
    assert res.scores["total"].tolist() == approx([2 * 1 + 3 * 0.9, 2 * 0.5 + 3 * 0.5, 0.3])
    assert res.endpoints == [0]


def test_extra_scores_are_clamped_and_weighted(make_pool, core):
    _table, _index, sched = make_pool(core, 3)
    extra = np.array([[2.0, -1.0, np.nan], [0.25, 0.5, 1.0]], dtype=np.float32)
    res = sched.pick(
        core.Profile([]), extra_scores=extra, extra_weights=[1.0, 4.0], with_scores=True,
        reserve=False, record=False,
    )  # fmt: skip
    assert res.scores["extra[0]"].tolist() == approx([1.0, 0.0, 0.0])
    assert res.scores["total"].tolist() == approx([2.0, 2.0, 4.0])
    assert res.endpoints == [2]


def test_ineligible_endpoints_score_zero(make_pool, core):
    table, _index, sched = make_pool(core, 3)
    table.set_ready(1, False)
    res = sched.pick(
        core.Profile([("kv-cache-utilization-scorer", 1.0, {})]), with_scores=True,
        reserve=False, record=False,
    )  # fmt: skip
    assert res.scores["kv-cache-utilization-scorer"].tolist() == approx([1.0, 0.0, 1.0])
