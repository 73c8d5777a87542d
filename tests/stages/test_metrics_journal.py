"""The request path journals its metric updates; they are applied in batches (a full batch
after the event-loop step, or everything before any read of the registry), never lost, and
to the same counts and sums as one update per value."""

from __future__ import annotations

import asyncio
import random
import re
import time

import numpy as np
import prometheus_client
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from igw import metrics as igw_metrics
from igw.metrics import BATCH, Metrics
from igw.pipeline import Request

from .metrics_reference import epp_text, observe_finished, reference_families

LABELS = {"model_name": "m", "target_model_name": "m", "priority": "0"}


def _request(model: str = "m", size: int = 100) -> Request:
    return Request("r", body=b"x" * size, incoming_model=model, target_model=model)


def _raw_count(metrics: Metrics) -> float:
    """The counter's value without going through the registry (which applies the journals)."""
    return metrics.epp_request_total.labels("m", "m", "default-flow", "0").value


def _count(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("inference_objective_request_total", LABELS)


def test_without_an_event_loop_a_full_batch_applies_at_once():
    metrics = Metrics()
    for _ in range(BATCH - 1):
        metrics.record_request(_request())
    assert _raw_count(metrics) == 0
    metrics.record_request(_request())
    assert _raw_count(metrics) == BATCH


def test_reading_the_registry_applies_the_journals_first():
    metrics = Metrics()
    metrics.record_request(_request())
    assert _count(metrics) == 1


async def test_on_an_event_loop_a_full_batch_waits_for_the_end_of_the_step():
    metrics = Metrics()
    for _ in range(BATCH):
        metrics.record_request(_request())
    assert _raw_count(metrics) == 0
    await asyncio.sleep(0)
    assert _raw_count(metrics) == BATCH


async def test_a_scrape_between_requests_sees_every_update():
    metrics = Metrics()
    name = b"llm_d_epp_request_duration_seconds_count{"
    for i in range(1, 6):
        request = _request()
        request.received_at, request.finished_at = 1.0, 1.5
        metrics.scheduled(request)
        metrics.engine_recorder("scheduler", "e2e", 0.001)
        metrics.request_finished(request, 10, running=True)
        text = metrics.generate()
        assert b"inference_extension_scheduler_e2e_duration_seconds_count %d.0" % i in text
        line = next(x for x in text.splitlines() if x.startswith(name))
        assert line.endswith(b" %d.0" % i)
        assert _count(metrics) == i


def test_a_batch_boundary_loses_nothing():
    metrics = Metrics()
    count = 2 * BATCH + 7
    for i in range(count):
        request = _request(size=i)
        request.received_at, request.finished_at = 1.0, 1.0 + i / 1000
        request.usage.completion_tokens = 1 + i % 3
        metrics.scheduled(request)
        metrics.engine_recorder("scheduler", "e2e", i / 1e5)
        metrics.request_finished(request, i, running=True)
    sample = metrics.registry.get_sample_value
    pair = {"model_name": "m", "target_model_name": "m"}
    assert sample("inference_objective_request_total", LABELS) == count
    assert sample("inference_objective_request_sizes_sum", pair) == sum(range(count))
    assert sample("inference_objective_response_sizes_count", pair) == count
    assert sample("inference_objective_output_tokens_sum", pair) == sum(
        1 + i % 3 for i in range(count)
    )
    assert sample("inference_extension_scheduler_e2e_duration_seconds_count") == count
    assert sample("inference_objective_running_requests", {"model_name": "m"}) == 0


def test_updates_journaled_on_a_loop_that_closed_are_applied_by_the_next_loop():
    metrics = Metrics()

    def fill_and_stop() -> None:
        for _ in range(BATCH):
            metrics.record_request(_request())  # schedules the flush on this loop ...
        first.stop()  # ... which stops (and closes) before running it

    async def fill_again() -> None:
        for _ in range(BATCH):
            metrics.record_request(_request())
        await asyncio.sleep(0)

    first = asyncio.new_event_loop()
    try:
        first.call_soon(fill_and_stop)
        first.run_forever()
    finally:
        first.close()
    assert _raw_count(metrics) == 0
    asyncio.run(fill_again())  # the next loop schedules its own flush: both applied
    assert _raw_count(metrics) == 2 * BATCH


async def test_scheduled_marks_the_request_running_at_once_and_counts_it_later():
    metrics = Metrics()
    metrics.scheduled(_request())
    assert metrics.epp_running.labels("m", "m").value == 1
    assert _raw_count(metrics) == 0
    size = metrics.registry.get_sample_value(
        "inference_objective_request_sizes_sum", {"model_name": "m", "target_model_name": "m"}
    )
    assert size == 100
    no_endpoint = {"namespace": "", "pod_name": "", "port": ""}  # the request has no decision
    attempts = metrics.registry.get_sample_value(
        "inference_extension_scheduler_attempts_total",
        {"status": "success", "target_model_name": "m", **no_endpoint},
    )
    assert attempts == 1


def test_a_finished_request_that_was_not_answered_only_leaves_the_running_gauge():
    metrics = Metrics()
    request = _request()
    metrics.running_started(request)
    metrics.request_finished(request, None, running=True, answered=False)
    assert metrics.epp_running.labels("m", "m").value == 0
    name = "inference_objective_request_duration_seconds_count"
    pair = {"model_name": "m", "target_model_name": "m"}
    assert metrics.registry.get_sample_value(name, pair) is None


def test_a_series_made_by_the_journal_is_created_when_it_was_first_observed():
    metrics = Metrics()
    before = time.time()
    request = _request()
    request.received_at = request.finished_at = time.monotonic()
    metrics.record_response(request, 10)
    time.sleep(0.05)
    applied = time.time()
    created = metrics.registry.get_sample_value(
        "llm_d_epp_request_duration_seconds_created",
        {"model_name": "m", "target_model_name": "m", "fairness_id": "default-flow",
         "priority": "0"},
    )  # fmt: skip
    assert created is not None and before - 0.01 <= created <= applied - 0.04


def test_the_journal_exposes_what_one_observe_per_value_does():
    """Random, non-dyadic values over several series and batches: counts and float sums
    equal prometheus_client's, one update per value in request order."""
    rnd = random.Random(5)
    metrics = Metrics()
    reference = prometheus_client.CollectorRegistry()
    families = reference_families(reference)
    for i in range(3 * BATCH + 11):
        model = rnd.choice(["a", "b", "c"])
        request = Request(f"r{i}", body=b"x" * rnd.randint(0, 5000), incoming_model=model,
                          target_model=model, priority=rnd.choice([0, 2]))  # fmt: skip
        request.received_at = 100.0 + rnd.random()
        request.finished_at = request.received_at + rnd.choice([rnd.random() * 7, 0.0, -1.0])
        if rnd.random() < 0.8:
            request.first_byte_at = request.received_at + rnd.random() - 0.1
        request.usage.prompt_tokens = rnd.choice([0, rnd.randint(1, 90000)])
        request.usage.completion_tokens = rnd.choice([0, rnd.randint(1, 9000)])
        request.usage.cached_tokens = rnd.choice([0, rnd.randint(1, 9000)])
        size = rnd.choice([None, rnd.randint(0, 70000)])
        metrics.scheduled(request)
        metrics.request_finished(request, size, running=True)
        labels = (model, model, "default-flow", str(request.priority))
        observe_finished(families, labels, request, size)
    ours = epp_text(metrics.registry)
    theirs = epp_text(reference)
    assert ours.splitlines() == theirs.splitlines()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(min_value=0, max_value=1e6, allow_nan=False),
            st.integers(0, 2**40).map(float),
            st.sampled_from(igw_metrics.GENERAL_LATENCY_BUCKETS).map(float),
        ),
        min_size=1,
        max_size=80,
    ),
    st.floats(min_value=0, max_value=1e3, allow_nan=False),
)
def test_observe_many_counts_and_sums_as_observe_each(values, start):
    one, many = (igw_metrics._HistogramChild(igw_metrics.GENERAL_LATENCY_BUCKETS[:-3])
                 for _ in range(2))  # fmt: skip
    one.sum = many.sum = start
    for value in values:
        one.observe(value)
    many.observe_many(np.asarray(values, dtype=np.float64))
    assert many.counts == one.counts
    assert many.sum == one.sum  # to the last bit


def test_a_count_beyond_float64_is_dropped_and_the_rest_of_its_batch_kept():
    metrics = Metrics()
    good, bad = _request(), _request()
    good.received_at, good.finished_at = 1.0, 2.0
    bad.usage.prompt_tokens = 10**400
    metrics.record_response(good, 10)
    metrics.record_response(bad, 10)
    name = "inference_objective_request_duration_seconds_count"
    pair = {"model_name": "m", "target_model_name": "m"}
    assert metrics.registry.get_sample_value(name, pair) == 1


@pytest.mark.parametrize("batch", [1, 3])
def test_any_batch_size_gives_the_same_exposition(monkeypatch, batch):
    def run(size: int) -> str:
        monkeypatch.setattr(igw_metrics, "BATCH", size)
        metrics = Metrics()
        for i in range(10):
            request = _request(model="ab"[i % 2], size=i)
            request.received_at, request.finished_at = 1.0, 1.0 + i / 7
            request.usage.prompt_tokens = i
            metrics.scheduled(request)
            metrics.engine_recorder("scorer", "p", i / 3)
            metrics.request_finished(request, i, running=True)
        text = metrics.generate().decode()
        text = "".join(x for x in text.splitlines(True) if not x.startswith("process_"))
        return re.sub(r"(_created\{?.*) \S+\n", r"\1 T\n", text)

    assert run(batch) == run(10_000)


def test_observe_many_puts_nan_where_observe_does():
    one, many = (igw_metrics._HistogramChild((1.0, 2.0)) for _ in range(2))
    values = [float("nan"), 1.5, float("inf")]
    for value in values:
        one.observe(value)
    many.observe_many(np.asarray(values))
    assert many.counts == one.counts == [1, 1, 1]


def test_a_batch_that_fails_to_apply_is_logged_and_the_others_still_apply(monkeypatch, caplog):
    metrics = Metrics()

    def broken(log, clock):
        raise RuntimeError("boom")

    monkeypatch.setattr(metrics, "_apply_responses", broken)
    request = _request()
    metrics.scheduled(request)
    metrics.request_finished(request, 10, running=True)
    with caplog.at_level("ERROR", logger="igw.metrics"):
        assert _count(metrics) == 1  # the scrape goes on
    assert "finished-request updates dropped" in caplog.text
    assert metrics._response_log == []


def test_scheduling_attempts_are_counted_per_target_and_endpoint():
    from igw.datastore import Endpoint
    from igw.pipeline import Decision

    metrics = Metrics()
    a = Endpoint(0, "10.0.0.1:8000", name="pod-a", namespace="ns")
    b = Endpoint(1, "10.0.0.2:8001", name="pod-b", namespace="ns")
    for model, endpoint in [("m", a), ("m", b), ("m", a), ("n", a), ("m", a)]:
        request = _request(model)
        request.decision = Decision(pool=None, endpoints=[endpoint])  # type: ignore[arg-type]
        metrics.scheduled(request)
    metrics.record_request(_request("m"))  # counted, but not an attempt

    def attempts(target: str, pod: str, port: str) -> float | None:
        return metrics.registry.get_sample_value(
            "inference_extension_scheduler_attempts_total",
            {"status": "success", "target_model_name": target, "pod_name": pod,
             "namespace": "ns", "port": port},
        )  # fmt: skip

    assert attempts("m", "pod-a", "8000") == 3
    assert attempts("m", "pod-b", "8001") == 1
    assert attempts("n", "pod-a", "8000") == 1
    assert _count(metrics) == 5
