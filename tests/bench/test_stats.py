"""Statistics are computed right on known inputs."""

from __future__ import annotations

import pytest

from igw.bench.stats import (
    COLUMNS,
    Sample,
    format_table,
    hit_rate,
    hot_spot_factor,
    percentile,
    summarize,
)


def test_percentile_interpolates_linearly() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)


def test_percentile_of_nothing_is_none_not_zero() -> None:
    assert percentile([], 50) is None


def test_hot_spot_factor_is_workers_times_max_share() -> None:
    assert hot_spot_factor({"a": 25, "b": 25, "c": 25, "d": 25}) == pytest.approx(1.0)
    assert hot_spot_factor({"a": 70, "b": 10, "c": 10, "d": 10}) == pytest.approx(2.8)
    assert hot_spot_factor({"a": 100, "b": 0}) == pytest.approx(2.0)
    assert hot_spot_factor({}) is None


def test_hit_rate_is_hits_over_queries() -> None:
    assert hit_rate(30, 40) == pytest.approx(0.75)
    assert hit_rate(0, 0) is None


def test_summarize_uses_only_successful_samples_for_latency() -> None:
    samples = [
        Sample(
            index=i, ok=True, ttft=0.010 * (i + 1), e2e=0.1, itls=[0.002, 0.004], output_tokens=10
        )
        for i in range(10)
    ] + [Sample(index=10, ok=False, ttft=99.0, error="HTTP 500")]
    row = summarize(
        "p",
        samples,
        wall_seconds=2.0,
        per_replica={"a": 6, "b": 4},
        cache_hits=50,
        cache_queries=200,
    )
    assert row["ttft_p50_ms"] == pytest.approx(55.0)
    assert row["ttft_p99_ms"] == pytest.approx(99.1)
    assert row["itl_p50_ms"] == pytest.approx(3.0)
    assert row["e2e_p90_ms"] == pytest.approx(100.0)
    assert row["throughput_rps"] == pytest.approx(5.0)
    assert row["output_tok_s"] == pytest.approx(50.0)
    assert row["errors"] == 1
    assert row["cache_hit_rate"] == pytest.approx(0.25)
    assert row["hot_spot"] == pytest.approx(1.2)


def test_summarize_all_failed_shows_no_latency() -> None:
    row = summarize("p", [Sample(index=0, ok=False)], wall_seconds=1.0)
    assert row["ttft_p50_ms"] is None and row["errors"] == 1 and row["throughput_rps"] == 0


def test_table_has_every_column_and_dashes_for_missing() -> None:
    row = summarize("round-robin", [Sample(index=0, ok=False)], wall_seconds=1.0)
    text = format_table([row])
    header = text.splitlines()[0]
    for _, title, _ in COLUMNS:
        assert title in header
    assert "round-robin" in text and " -" in text.splitlines()[2]


def test_markdown_table_has_units_and_one_line_per_row() -> None:
    rows = [summarize(n, [Sample(index=0, ok=True, ttft=0.5, e2e=1.0)], 1.0) for n in "ab"]
    lines = format_table(rows, markdown=True).splitlines()
    assert lines[0].startswith("| policy | TTFT p50 (ms)")
    assert len(lines) == 4 and lines[2].startswith("| a | 500 |")
