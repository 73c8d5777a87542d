"""Python filters as masks, alone and inside the engine."""

from __future__ import annotations

import numpy as np
import pytest
from sched_helpers import add_endpoint, make_request

from igw.config import load_config
from igw.errors import ErrorCode, InferenceError
from igw.scheduling import SchedulingEngine, default_registry


def _filter(type_name: str, params: dict | None = None):
    return default_registry().create(type_name, type_name, params or {})


def _kept(pool, plugin, request=None) -> set[str]:
    mask = np.ones(pool.table.high_water, dtype=np.bool_)
    out = plugin.filter(request or make_request(), pool, pool.table.snapshot(), mask)
    return {e.address for e in pool.endpoints() if out[e.id]}


@pytest.fixture
def labelled_pool(make_pool):
    pool = make_pool()
    add_endpoint(pool, 0, labels={"llm-d.ai/role": "decode", "tier": "gold"})
    add_endpoint(pool, 1, labels={"llm-d.ai/role": "prefill", "tier": "silver"})
    add_endpoint(pool, 2, labels={"llm-d.ai/role": "both"})
    add_endpoint(pool, 3, labels={})
    add_endpoint(pool, 4, labels={"llm-d.ai/role": "encode"})
    return pool


def ip(i: int) -> str:
    return f"192.168.1.{i + 1}:8000"


def test_label_selector_match_labels(labelled_pool):
    plugin = _filter("label-selector-filter", {"matchLabels": {"tier": "gold"}})
    assert _kept(labelled_pool, plugin) == {ip(0)}


def test_label_selector_match_expressions(labelled_pool):
    plugin = _filter(
        "label-selector-filter",
        {
            "matchExpressions": [
                {"key": "llm-d.ai/role", "operator": "In", "values": ["decode", "both", "prefill"]},
                {"key": "tier", "operator": "DoesNotExist"},
            ]
        },
    )
    assert _kept(labelled_pool, plugin) == {ip(2)}


def test_by_label_with_and_without_unlabelled(labelled_pool):
    strict = _filter("by-label", {"label": "tier", "validValues": ["silver"]})
    assert _kept(labelled_pool, strict) == {ip(1)}
    loose = _filter("by-label", {"label": "tier", "validValues": ["silver"], "allowsNoLabel": True})
    assert _kept(labelled_pool, loose) == {ip(1), ip(2), ip(3), ip(4)}


def test_decode_filter_keeps_decode_capable_and_unlabelled(labelled_pool):
    assert _kept(labelled_pool, _filter("decode-filter")) == {ip(0), ip(2), ip(3)}


def test_prefill_filter_keeps_prefill_capable_only(labelled_pool):
    assert _kept(labelled_pool, _filter("prefill-filter")) == {ip(1), ip(2)}


def test_encode_filter_keeps_encoders(labelled_pool):
    assert _kept(labelled_pool, _filter("encode-filter")) == {ip(4)}


def test_filter_only_clears_entries_of_the_incoming_mask(labelled_pool):
    plugin = _filter("decode-filter")
    mask = np.zeros(labelled_pool.table.high_water, dtype=np.bool_)
    mask[labelled_pool.by_address(ip(3)).id] = True
    out = plugin.filter(make_request(), labelled_pool, None, mask)
    assert {e.address for e in labelled_pool.endpoints() if out[e.id]} == {ip(3)}


def test_header_based_testing_filter_by_ip_and_ip_port(labelled_pool):
    plugin = _filter("header-based-testing-filter")
    by_ip = make_request(headers={"test-epp-endpoint-selection": "192.168.1.2"})
    assert _kept(labelled_pool, plugin, by_ip) == {ip(1)}
    by_port = make_request(headers={"test-epp-endpoint-selection": f" {ip(2)}, 10.0.0.1:1 "})
    assert _kept(labelled_pool, plugin, by_port) == {ip(2)}
    wrong_port = make_request(headers={"test-epp-endpoint-selection": "192.168.1.3:9999"})
    assert _kept(labelled_pool, plugin, wrong_port) == set()
    assert _kept(labelled_pool, plugin, make_request()) == set()


def _engine_with(filter_yaml: str) -> SchedulingEngine:
    config = load_config(
        text=(
            "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
            f"plugins: [{filter_yaml}, {{type: queue-scorer}}]\n"
        )
    )
    return SchedulingEngine(config)


def test_engine_routes_only_within_the_filtered_set(labelled_pool):
    engine = _engine_with("{type: prefill-filter}")
    picks = {
        engine.schedule(make_request(f"p{i}"), labelled_pool).primary.address for i in range(20)
    }
    assert picks <= {ip(1), ip(2)} and picks


def test_engine_answers_429_when_filters_leave_nothing(labelled_pool):
    engine = _engine_with("{type: header-based-testing-filter}")
    with pytest.raises(InferenceError) as info:
        engine.schedule(make_request(), labelled_pool)
    assert info.value.code == ErrorCode.RESOURCE_EXHAUSTED
    assert info.value.headers["x-llm-d-request-dropped-reason"] == "rejected-saturated"
    request = make_request(headers={"test-epp-endpoint-selection": "192.168.1.5"})
    assert engine.schedule(request, labelled_pool).primary.address == ip(4)


def test_utilization_filter_caps_every_condition(make_pool):
    pool = make_pool([(0, 0, 0.2), (1, 9, 0.3), (2, 0, 0.95), (3, 1, 0.1)])
    pool.table.add_inflight(pool.by_address(ip(3)).id, 7, 0)
    plugin = _filter(
        "utilization-filter",
        {
            "conditions": [
                {"metric": "waiting-queue", "maxValue": 5},
                {"metric": "kv-cache-utilization", "maxValue": 0.9},
                {"metric": "active-requests", "maxValue": 4},
            ]
        },
    )
    assert _kept(pool, plugin) == {ip(0)}


def test_utilization_filter_falls_back_only_when_asked(make_pool):
    pool = make_pool([(0, 9, 0.2), (1, 9, 0.3)])
    strict = _filter(
        "utilization-filter", {"conditions": [{"metric": "waiting-queue", "maxValue": 1}]}
    )
    assert _kept(pool, strict) == set()
    lenient = _filter(
        "utilization-filter",
        {"conditions": [{"metric": "waiting-queue", "maxValue": 1}], "fallbackOnEmpty": True},
    )
    assert _kept(pool, lenient) == {ip(0), ip(1)}


def _affinity_engine(params: str) -> SchedulingEngine:
    return _engine_with(f"{{type: prefix-cache-affinity-filter, parameters: {params}}}")


def test_prefix_affinity_filter_sticks_to_the_holder_under_moderate_load(make_pool):
    pool = make_pool([(i, 0, 0.0) for i in range(3)])
    engine = _affinity_engine("{}")
    prompt = "long shared system prompt " * 200
    first = engine.schedule(make_request(prompt), pool)
    engine.release(first)
    pool.table.update(first.primary.id, waiting=50, running=0, kv_util=0.0, now=1.0)
    # the queue-scorer alone would leave the holder (queue 50 vs 0); the filter keeps it
    again = engine.schedule(make_request(prompt + "next question"), pool)
    assert again.primary is first.primary


def test_prefix_affinity_filter_breaks_stickiness_past_the_ttft_penalty(make_pool):
    pool = make_pool([(i, 0, 0.0) for i in range(3)])
    engine = _affinity_engine("{maxTTFTPenaltyMs: 1000, peakPrefillThroughput: 10000}")
    prompt = "long shared system prompt " * 200
    first = engine.schedule(make_request(prompt), pool)
    engine.release(first)
    pool.table.add_inflight(first.primary.id, 30, 20000)  # 2 s of prefill queued on the holder
    pool.table.update(first.primary.id, waiting=50, running=0, kv_util=0.0, now=1.0)
    again = engine.schedule(make_request(prompt + "next question"), pool)
    assert again.primary is not first.primary


def test_prefix_affinity_filter_keeps_everyone_without_a_holder(make_pool):
    pool = make_pool([(i, 0, 0.0) for i in range(3)])
    engine = _affinity_engine("{}")
    picks = {engine.schedule(make_request(f"fresh {i} " * 100), pool).primary.id for i in range(30)}
    assert len(picks) > 1


def test_prefix_affinity_latency_predictor_source_is_refused():
    from igw.config import ConfigError

    with pytest.raises(ConfigError, match="latencyPredictor is not implemented"):
        _affinity_engine("{ttftSource: latencyPredictor}")
