"""The hand-written ``/metrics`` page is valid Prometheus text (checked with
prometheus_client's own parser) and its histograms add up."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from igw.sim import SimFleet

from .helpers import post


@pytest.mark.parametrize("engine_type", ["vllm", "sglang", "trtllm-serve"])
async def test_metrics_page_parses_with_the_reference_parser(http, engine_type):
    models = ['odd "name" \\ here']
    async with SimFleet(1, speed=100, engine_type=engine_type, models=models) as fleet:
        await post(http, fleet.urls[0] + "/v1/completions", {"prompt": "hi", "max_tokens": 3})
        async with http.get(fleet.urls[0] + "/metrics") as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "igw_sim_engine_lag_seconds" in families
    labelled = [s for f in families.values() for s in f.samples if "model_name" in s.labels]
    assert labelled and all(s.labels["model_name"] == models[0] for s in labelled)


async def test_histogram_buckets_are_cumulative_and_end_at_the_count(http):
    async with SimFleet(1, speed=100) as fleet:
        for n in (2, 5, 9):
            await post(http, fleet.urls[0] + "/v1/completions", {"prompt": "x", "max_tokens": n})
        async with http.get(fleet.urls[0] + "/metrics") as resp:
            text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = families["vllm:request_generation_tokens"].samples
    buckets = [(s.labels["le"], s.value) for s in samples if s.name.endswith("_bucket")]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)
    assert dict(buckets)["2.0"] == 1 and dict(buckets)["5.0"] == 2 and dict(buckets)["10.0"] == 3
    assert buckets[-1] == ("+Inf", 3)
    (total,) = [s.value for s in samples if s.name.endswith("_sum")]
    assert total == 16
