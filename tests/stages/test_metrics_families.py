"""igw's lean metric families expose exactly what prometheus_client's own classes would."""

from __future__ import annotations

import re

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from igw import metrics as igw_metrics
from igw.metrics import Metrics
from igw.pipeline import Request


def _text(registry: CollectorRegistry) -> str:
    # _created samples hold creation timestamps, which differ between the two registries.
    return re.sub(r"(_created\{?.*) \S+\n", r"\1 T\n", generate_latest(registry).decode())


def _pair(kind: str, **kwargs):
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    a = getattr(igw_metrics, kind)("x_seconds", "help", ("model",), registry=ours, **kwargs)
    b = getattr(prometheus_client, kind)("x_seconds", "help", ("model",), registry=theirs,
                                         **kwargs)  # fmt: skip
    return a, b, ours, theirs


@pytest.mark.parametrize(
    "value", [0.0, 0.005, 0.0051, 0.7, 3.0, 3599.0, 3600.0, 1e9, float("inf")]
)
def test_histogram_matches_prometheus_client_at_and_between_bucket_bounds(value) -> None:
    a, b, ours, theirs = _pair("Histogram", buckets=igw_metrics.GENERAL_LATENCY_BUCKETS)
    for family in (a, b):
        family.labels("m").observe(value)
        family.labels("m").observe(0.3)
    assert _text(ours) == _text(theirs)


def test_counter_and_gauge_match_prometheus_client() -> None:
    a, b, ours, theirs = _pair("Counter")
    for family in (a, b):
        family.labels("m").inc()
        family.labels(model="n").inc(2.5)
    assert _text(ours) == _text(theirs)
    g, h, ours, theirs = _pair("Gauge")
    for family in (g, h):
        family.labels("m").inc()
        family.labels("m").inc()
        family.labels("m").dec()
        family.labels("n").set(7)
    assert _text(ours) == _text(theirs)


def test_counter_refuses_negative_increments() -> None:
    counter = igw_metrics.Counter("c_total", "help", ("model",))
    with pytest.raises(ValueError):
        counter.labels("m").inc(-1)


def test_wrong_label_count_names_the_family() -> None:
    counter = igw_metrics.Counter("c_total", "help", ("model", "target"))
    with pytest.raises(ValueError, match="c_total"):
        counter.labels("only-one")


def test_non_string_label_values_share_the_string_series() -> None:
    counter = igw_metrics.Counter("c_total", "help", ("priority",), registry=CollectorRegistry())
    counter.labels(2).inc()
    counter.labels("2").inc()
    assert counter.labels(2) is counter.labels("2")
    samples = [s for m in counter.collect() for s in m.samples if s.name == "c_total"]
    assert [(s.labels, s.value) for s in samples] == [({"priority": "2"}, 2.0)]


def _request(model: str) -> Request:
    request = Request("r", incoming_model=model, target_model=model, body=b"x" * 10)
    request.received_at, request.finished_at = 1.0, 1.5
    request.usage.completion_tokens = 5
    return request


def test_series_cache_is_bounded_and_keeps_counting_after_a_reset(monkeypatch) -> None:
    monkeypatch.setattr(igw_metrics, "MAX_CACHED_SERIES", 2)
    metrics = Metrics()
    for model in ("a", "b", "c", "a"):
        metrics.record_request(_request(model))
    assert len(metrics._by_labels) <= 2
    labels = {"model_name": "a", "target_model_name": "a", "priority": "0"}
    assert metrics.registry.get_sample_value("inference_objective_request_total", labels) == 2


def test_a_series_appears_only_once_something_was_recorded_in_it() -> None:
    metrics = Metrics()
    request = _request("m")
    metrics.record_request(request)
    labels = {"model_name": "m", "target_model_name": "m"}
    name = "inference_objective_request_duration_seconds_count"
    assert metrics.registry.get_sample_value(name, labels) is None
    metrics.record_response(request, 10)
    assert metrics.registry.get_sample_value(name, labels) == 1
    assert metrics.registry.get_sample_value("inference_objective_output_tokens_sum", labels) == 5
