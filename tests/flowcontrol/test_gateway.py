"""Flow control attached to the standalone HTTP gateway, over simulated replicas.

``FlowControl.attach`` works on any pipeline, so the gateway needs no other change to use
it: these tests are the evidence that the HTTP front end carries queueing, priority order
and the drop-reason header through to clients.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from igw.errors import DROP_REASON_HEADER
from igw.flowcontrol import ConcurrencyDetector, FlowControl
from igw.gateway.config import parse_config
from igw.gateway.serve import ServeOptions, start_stack

CONFIG = """
pools:
  p: {sim: {replicas: 1, speed: 5, models: [gold, std, batch]}}
models:
  gold: {pool: p, priority: 10}
  std: {pool: p}
  batch: {pool: p, priority: -1}
"""


async def start_with_flow_control():
    stack = await start_stack(parse_config(CONFIG), ServeOptions(port=0, seed=7))
    flow = FlowControl(detector=ConcurrencyDetector(max_concurrency=1)).attach(
        stack.gateway.pipeline
    )
    return stack, flow


async def complete(session, url: str, model: str, tokens: int, done: list[str], name: str):
    body = {"model": model, "prompt": f"hello {name}", "max_tokens": tokens, "ignore_eos": True}
    async with session.post(url + "/v1/completions", json=body) as response:
        await response.read()
        done.append(name)
        return response.status, response.headers.get(DROP_REASON_HEADER)


async def test_gateway_serves_high_priority_first_when_the_replica_is_busy():
    stack, flow = await start_with_flow_control()
    try:
        async with aiohttp.ClientSession() as session:
            done: list[str] = []
            first = asyncio.create_task(complete(session, stack.url, "std", 200, done, "first"))
            pool = next(iter(stack.router.pools.values())).pool
            deadline = time.monotonic() + 5
            while pool.table.snapshot().inflight_requests.sum() < 1:  # "first" is in flight
                assert time.monotonic() < deadline
                await asyncio.sleep(0.002)
            rest = []
            for name, model in (("low1", "std"), ("high1", "gold"), ("low2", "std")):
                rest.append(asyncio.create_task(complete(session, stack.url, model, 2, done, name)))
                await asyncio.sleep(0.02)  # arrive in this order, all while "first" runs
            results = await asyncio.wait_for(asyncio.gather(first, *rest), 20)
        assert all(status == 200 for status, _ in results)
        assert done == ["first", "high1", "low1", "low2"]
    finally:
        await flow.close()
        await stack.stop()


async def test_gateway_answers_429_with_the_drop_reason_for_sheddable_traffic_when_full():
    stack, flow = await start_with_flow_control()
    try:
        async with aiohttp.ClientSession() as session:
            done: list[str] = []
            busy = asyncio.create_task(complete(session, stack.url, "std", 200, done, "busy"))
            pool = next(iter(stack.router.pools.values())).pool
            deadline = time.monotonic() + 5
            while pool.table.snapshot().inflight_requests.sum() < 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.002)
            status, reason = await complete(session, stack.url, "batch", 2, done, "batch")
            assert (status, reason) == (429, "rejected-saturated")
            await asyncio.wait_for(busy, 20)
    finally:
        await flow.close()
        await stack.stop()
