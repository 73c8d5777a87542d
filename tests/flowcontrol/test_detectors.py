"""Saturation detectors: the reference's utilization formula and igw's concurrency detector."""

from __future__ import annotations

import time

import pytest

from flowcontrol.helpers import make_pool
from igw.flowcontrol import ConcurrencyDetector, UtilizationDetector
from igw.pipeline import Request


def with_metrics(pool, rows, now=None):
    now = time.monotonic() if now is None else now
    for endpoint, (waiting, kv) in zip(pool.endpoints(), rows, strict=True):
        pool.table.update(endpoint.id, waiting=waiting, running=0, kv_util=kv, now=now)
    return pool


def test_utilization_is_the_mean_of_per_endpoint_max_of_queue_and_kv():
    pool = with_metrics(make_pool(3), [(5, 0.0), (0, 0.4), (1, 0.8)])  # 1.0, 0.5, 1.0
    assert UtilizationDetector().saturation(pool) == pytest.approx(2.5 / 3)


def test_utilization_counts_stale_endpoints_as_full():
    pool = with_metrics(make_pool(2), [(0, 0.0), (0, 0.0)])
    stale = pool.endpoints()[1]
    pool.table.update(stale.id, waiting=0, running=0, kv_util=0.0, now=time.monotonic() - 5)
    assert UtilizationDetector(staleness=1.0).saturation(pool) == pytest.approx(0.5)


def test_utilization_ignores_endpoints_that_are_not_ready():
    pool = with_metrics(make_pool(2), [(10, 0.0), (0, 0.0)])
    pool.table.set_ready(pool.endpoints()[0].id, False)
    assert UtilizationDetector().saturation(pool) == 0.0


def test_detectors_read_an_empty_pool_as_saturated():
    empty = make_pool(0)
    assert UtilizationDetector().saturation(empty) == 1.0
    assert ConcurrencyDetector().saturation(empty) == 1.0


def test_utilization_honours_the_request_subset():
    pool = with_metrics(make_pool(2), [(10, 0.0), (0, 0.0)])
    request = Request("r", subset=["10.0.0.2:8000"])
    assert UtilizationDetector().saturation(pool, request) == 0.0
    assert UtilizationDetector().saturation(pool) == 1.0


def test_utilization_rejects_bad_thresholds_naming_the_parameter():
    with pytest.raises(ValueError, match="kvCacheUtilThreshold"):
        UtilizationDetector(kv_cache_util_threshold=1.5)
    with pytest.raises(ValueError, match="queueDepthThreshold"):
        UtilizationDetector(queue_depth_threshold=0)


def test_concurrency_requests_mode_is_inflight_over_total_capacity():
    pool = make_pool(2)
    a, b = pool.endpoints()
    pool.table.add_inflight(a.id, 3, 0)
    pool.table.add_inflight(b.id, 1, 0)
    assert ConcurrencyDetector(max_concurrency=4).saturation(pool) == pytest.approx(0.5)


def test_concurrency_counts_pending_releases_as_inflight():
    pool = make_pool(2)
    pool.table.add_inflight(pool.endpoints()[0].id, 2, 0)
    assert ConcurrencyDetector(max_concurrency=2).saturation(pool, pending=2) == pytest.approx(1.0)


def test_concurrency_tokens_mode_weights_endpoints_by_kv_capacity():
    pool = make_pool(2)
    small, large = pool.endpoints()
    now = time.monotonic()
    pool.table.update(small.id, waiting=0, running=0, kv_util=0, now=now, kv_blocks=100,
                      block_size=16)  # fmt: skip
    pool.table.update(large.id, waiting=0, running=0, kv_util=0, now=now, kv_blocks=300,
                      block_size=16)  # fmt: skip
    pool.table.add_inflight(small.id, 1, 1600)  # the small one is full, the large one idle
    detector = ConcurrencyDetector(mode="tokens")
    # weighted: 1600 / (1600 + 4800); the plain mean of ratios would say 0.5
    assert detector.saturation(pool) == pytest.approx(0.25)


def test_concurrency_tokens_mode_uses_the_configured_token_capacity():
    pool = make_pool(2)
    pool.table.add_inflight(pool.endpoints()[0].id, 1, 500)
    detector = ConcurrencyDetector(mode="tokens", max_token_concurrency=1000)
    assert detector.saturation(pool) == pytest.approx(0.25)


def test_concurrency_hybrid_takes_the_larger_ratio_per_endpoint():
    pool = make_pool(2)
    a, b = pool.endpoints()
    pool.table.add_inflight(a.id, 1, 900)  # requests 0.1, tokens 0.9
    pool.table.add_inflight(b.id, 5, 100)  # requests 0.5, tokens 0.1
    detector = ConcurrencyDetector(mode="hybrid", max_concurrency=10, max_token_concurrency=1000)
    assert detector.saturation(pool) == pytest.approx((0.9 + 0.5) / 2)


def test_concurrency_rejects_bad_parameters_naming_them():
    with pytest.raises(ValueError, match="concurrencyMode"):
        ConcurrencyDetector(mode="bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="maxConcurrency"):
        ConcurrencyDetector(max_concurrency=0)


def test_lag_correction_counts_requests_sent_since_the_last_scrape_as_waiting():
    pool = with_metrics(make_pool(1), [(0, 0.0)])
    detector = UtilizationDetector(lag_correction=True)
    assert detector.saturation(pool) == 0.0  # notes the in-flight count at this scrape
    pool.table.add_inflight(pool.endpoints()[0].id, 5, 0)  # five sent before the next scrape
    assert detector.saturation(pool) == pytest.approx(1.0)


def test_lag_correction_resets_when_a_new_scrape_arrives():
    pool = with_metrics(make_pool(1), [(0, 0.0)])
    detector = UtilizationDetector(lag_correction=True)
    detector.saturation(pool)
    pool.table.add_inflight(pool.endpoints()[0].id, 5, 0)
    with_metrics(pool, [(1, 0.0)], now=time.monotonic() + 0.01)  # the server reports 1 waiting
    assert detector.saturation(pool) == pytest.approx(0.2)


def test_reference_formula_ignores_requests_sent_since_the_scrape():
    pool = with_metrics(make_pool(1), [(0, 0.0)])
    detector = UtilizationDetector()  # lag_correction off: the reference's formula
    detector.saturation(pool)
    pool.table.add_inflight(pool.endpoints()[0].id, 5, 0)
    assert detector.saturation(pool) == 0.0
