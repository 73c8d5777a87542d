"""Flow control inside the standard pipeline (``build_pipeline``), with a fake engine."""

from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client import generate_latest

from flowcontrol.helpers import make_pool, until
from igw.errors import DROP_REASON_HEADER, InferenceError
from igw.flowcontrol import ConcurrencyDetector, FlowControl, FlowControlSettings
from igw.metrics import Metrics
from igw.pipeline import Decision, Request
from igw.stages import build_pipeline


class ReservingEngine:
    """Picks the first endpoint and holds one in-flight request on it, as the core does."""

    def schedule(self, request, pool, *, k=None):
        endpoint = pool.endpoints()[0]
        pool.table.add_inflight(endpoint.id, 1, 0)
        return Decision(pool=pool, endpoints=[endpoint])

    def release(self, decision) -> None:
        if decision.reserved:
            decision.reserved = False
            decision.pool.table.add_inflight(decision.primary.id, -1, 0)


class Objectives:
    def priority(self, name):
        return {"gold": 10, "standard": 0, "batch": -1}.get(name)


def request(name: str, objective: str) -> Request:
    body = json.dumps({"model": "m", "prompt": f"hello {name}"}).encode()
    return Request(name, headers={"x-llm-d-inference-objective": objective}, body=body)


def saturated_pipeline(metrics: Metrics | None = None, tick: float = 30.0):
    """One endpoint that takes one request at a time (concurrency detector, capacity 1).

    The fallback tick is 30 s, so every dispatch below is driven by ``Pipeline.finish``.
    """
    pool = make_pool(1)
    flow = FlowControl(
        FlowControlSettings(tick=tick),
        detector=ConcurrencyDetector(max_concurrency=1),
        metrics=metrics,
    )
    pipeline = build_pipeline(
        ReservingEngine(), pool, objectives=Objectives(), metrics=metrics, flow_controller=flow
    )
    flow.attach(pipeline)
    return pipeline, pool, flow


async def test_high_priority_requests_are_dispatched_before_low_ones():
    pipeline, pool, _ = saturated_pipeline()
    first = await pipeline.run(request("first", "standard"))  # fills the only slot
    order: list[Request] = []

    async def run(r: Request) -> None:
        order.append(await pipeline.run(r))

    waiting = [request("low1", "standard"), request("high1", "gold"), request("low2", "standard")]
    waiting.append(request("high2", "gold"))
    tasks = [asyncio.create_task(run(r)) for r in waiting]
    await asyncio.sleep(0.01)
    assert order == []  # all queued behind "first"
    pipeline.finish(first)
    for done in range(1, 5):
        await until(lambda done=done: len(order) == done, timeout=1.0)
        pipeline.finish(order[-1])
    await asyncio.gather(*tasks)
    assert [r.request_id for r in order] == ["high1", "high2", "low1", "low2"]
    assert pool.table.snapshot().inflight_requests[0] == 0  # every reservation released


async def test_sheddable_request_gets_429_through_the_pipeline_when_saturated():
    pipeline, _, _ = saturated_pipeline()
    await pipeline.run(request("first", "standard"))
    with pytest.raises(InferenceError) as info:
        await pipeline.run(request("batch", "batch"))
    assert info.value.http_status == 429
    assert info.value.headers[DROP_REASON_HEADER] == "rejected-saturated"


async def test_flow_control_metrics_are_exported_on_the_front_end_registry():
    metrics = Metrics()
    pipeline, pool, flow = saturated_pipeline(metrics)
    first = await pipeline.run(request("first", "standard"))
    queued = asyncio.create_task(pipeline.run(request("second", "gold")))
    await until(lambda: flow.controller_for(pool).queued == 1)
    text = generate_latest(metrics.registry).decode()
    for prefix in ("inference_extension", "llm_d_epp"):
        assert f'{prefix}_flow_control_queue_size{{fairness_id="default-flow"' in text
        assert (
            f'{prefix}_flow_control_pool_saturation{{inference_pool="p",stage="effective"}} 1.0'
            in text
        )
    pipeline.finish(first)
    second = await asyncio.wait_for(queued, 1.0)
    text = generate_latest(metrics.registry).decode()
    assert 'outcome="Dispatched"' in text
    assert 'priority="10"' in text
    assert 'inference_extension_flow_control_queue_bytes{fairness_id="default-flow",' in text
    pipeline.finish(second)
    await flow.close()


async def test_two_flow_controls_share_one_registry():
    metrics = Metrics()
    FlowControl(metrics=metrics)
    FlowControl(metrics=metrics)  # registering the families twice would raise


async def test_install_wires_a_pipeline_from_config():
    from igw.flowcontrol import install

    plugin = {"name": "c", "type": "concurrency-detector", "parameters": {"maxConcurrency": 1}}
    config = {"plugins": [plugin], "flowControl": {"saturationDetector": {"pluginRef": "c"}}}
    pool = make_pool(1)
    pipeline = build_pipeline(ReservingEngine(), pool, objectives=Objectives())
    flow = install(pipeline, config)
    assert flow is not None and flow in pipeline.response_stages
    stage = next(s for s in pipeline.stages if s.name == "flowcontrol")
    assert stage.controller is flow
    first = await pipeline.run(request("first", "standard"))
    queued = asyncio.create_task(pipeline.run(request("second", "standard")))
    await until(lambda: flow.controller_for(pool).queued == 1)
    pipeline.finish(first)  # capacity frees: the queued request goes at once
    pipeline.finish(await asyncio.wait_for(queued, 1.0))
    await flow.close()


async def test_install_leaves_the_legacy_path_with_the_configured_detector():
    from igw.flowcontrol import install

    plugin = {"name": "c", "type": "concurrency-detector", "parameters": {"maxConcurrency": 3}}
    pipeline = build_pipeline(ReservingEngine(), make_pool(1))
    flow = install(pipeline, {"plugins": [plugin], "saturationDetector": {"pluginRef": "c"}})
    stage = next(s for s in pipeline.stages if s.name == "flowcontrol")
    assert flow is None and stage.controller is None
    assert isinstance(stage.detector, ConcurrencyDetector) and stage.detector.max_concurrency == 3
