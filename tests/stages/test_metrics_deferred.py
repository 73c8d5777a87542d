"""Metric updates made while routing are applied after the event-loop step, never lost."""

from __future__ import annotations

import asyncio

from igw.metrics import Metrics
from igw.pipeline import Request

LABELS = {"model_name": "m", "target_model_name": "m", "priority": "0"}


def _request() -> Request:
    return Request("r", body=b"x" * 100, incoming_model="m", target_model="m")


def _raw_count(metrics: Metrics) -> float:
    """The counter's value without going through the registry (which applies the queue)."""
    child = metrics.epp_request_total.labels("m", "m", "default-flow", "0")
    return child.value


def test_without_an_event_loop_updates_apply_at_once():
    metrics = Metrics()
    metrics.record_request(_request())
    assert _raw_count(metrics) == 1


async def test_on_an_event_loop_updates_wait_for_the_end_of_the_step():
    metrics = Metrics()
    metrics.record_request(_request())
    assert _raw_count(metrics) == 0
    await asyncio.sleep(0)
    assert _raw_count(metrics) == 1


async def test_reading_the_registry_applies_queued_updates_first():
    metrics = Metrics()
    metrics.record_request(_request())
    value = metrics.registry.get_sample_value("inference_objective_request_total", LABELS)
    assert value == 1


async def test_a_scrape_sees_queued_updates():
    metrics = Metrics()
    metrics.engine_recorder("scheduler", "e2e", 0.001)
    assert b"inference_extension_scheduler_e2e_duration_seconds_count 1.0" in metrics.generate()


def test_updates_queued_on_a_loop_that_closed_are_applied_by_the_next_loop():
    metrics = Metrics()

    async def record() -> None:
        metrics.record_request(_request())
        await asyncio.sleep(0)

    def record_and_stop() -> None:
        metrics.record_request(_request())  # queues the flush on this loop ...
        first.stop()  # ... which stops (and closes) before running it

    first = asyncio.new_event_loop()
    try:
        first.call_soon(record_and_stop)
        first.run_forever()
    finally:
        first.close()
    assert _raw_count(metrics) == 0
    asyncio.run(record())  # the next loop schedules its own flush: both applied
    assert _raw_count(metrics) == 2


async def test_many_updates_in_one_step_are_all_applied_in_order():
    metrics = Metrics()
    order: list[int] = []
    for i in range(100):
        metrics._defer(order.append, i)
    await asyncio.sleep(0)
    assert order == list(range(100))


async def test_scheduled_marks_the_request_running_at_once_and_counts_it_after_the_step():
    metrics = Metrics()
    metrics.scheduled(_request())
    running = metrics.epp_running.labels("m", "m")
    assert running.value == 1
    assert _raw_count(metrics) == 0
    await asyncio.sleep(0)
    assert _raw_count(metrics) == 1
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
