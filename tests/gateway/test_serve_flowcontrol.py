"""``igw serve`` honours flow control from a pool's EndpointPickerConfig."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from igw.config import ConfigError
from igw.flowcontrol import ConcurrencyDetector
from igw.gateway.config import parse_config
from igw.gateway.serve import ServeOptions, start_stack

EPP = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: queue-scorer}
- {name: conc, type: concurrency-detector, parameters: {maxConcurrency: 1}}
schedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer}]}]
"""
FLOW = """
featureGates: [flowControl]
flowControl:
  saturationDetector: {pluginRef: conc}
"""
GATEWAY = """
pools:
  p: {sim: {replicas: 1, speed: 5, models: [gold, std]}, eppConfig: picker.yaml}
models:
  gold: {pool: p, priority: 10}
  std: {pool: p}
"""


async def _start(tmp_path, epp: str):
    (tmp_path / "picker.yaml").write_text(epp)
    options = ServeOptions(port=0, seed=7, config_path=tmp_path / "igw.yaml")
    return await start_stack(parse_config(GATEWAY), options)


async def _complete(session, url: str, model: str, tokens: int, done: list[str], name: str):
    body = {"model": model, "prompt": f"hello {name}", "max_tokens": tokens, "ignore_eos": True}
    async with session.post(url + "/v1/completions", json=body) as response:
        await response.read()
        done.append(name)
        return response.status


async def test_queued_requests_are_dispatched_by_priority_when_the_config_enables_it(tmp_path):
    stack = await _start(tmp_path, EPP + FLOW)
    try:
        assert stack.flow is not None
        async with aiohttp.ClientSession() as session:
            done: list[str] = []
            first = asyncio.create_task(_complete(session, stack.url, "std", 200, done, "first"))
            pool = stack.router.pools["p"].pool
            deadline = time.monotonic() + 5
            while pool.table.snapshot().inflight_requests.sum() < 1:  # "first" is in flight
                assert time.monotonic() < deadline
                await asyncio.sleep(0.002)
            rest = []
            for name, model in (("low1", "std"), ("high1", "gold"), ("low2", "std")):
                call = _complete(session, stack.url, model, 2, done, name)
                rest.append(asyncio.create_task(call))
                await asyncio.sleep(0.02)  # all arrive while "first" runs, in this order
            statuses = await asyncio.wait_for(asyncio.gather(first, *rest), 20)
        assert statuses == [200, 200, 200, 200]
        assert done == ["first", "high1", "low1", "low2"]
    finally:
        await stack.stop()
    assert stack.flow.closed


async def test_without_the_gate_the_legacy_path_uses_the_pools_configured_detector(tmp_path):
    stack = await _start(tmp_path, EPP + "saturationDetector: {pluginRef: conc}\n")
    try:
        assert stack.flow is None
        stage = next(s for s in stack.gateway.pipeline.stages if s.name == "flowcontrol")
        assert stage.controller is None
        detector = stage.detector.detectors["p"]
        assert isinstance(detector, ConcurrencyDetector) and detector.max_concurrency == 1
    finally:
        await stack.stop()


async def test_a_bad_flow_control_section_fails_at_start_naming_file_and_field(tmp_path):
    bad = EPP + FLOW + "  maxRequests: lots\n"
    with pytest.raises(ConfigError) as caught:
        await _start(tmp_path, bad)
    assert "picker.yaml" in str(caught.value)
    assert "flowControl.maxRequests" in str(caught.value)
