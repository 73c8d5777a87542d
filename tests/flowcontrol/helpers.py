"""Shared fakes for the flow-control tests: pools, a slot detector, a clock, bounded waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from igw.datastore import Pool
from igw.pipeline import Request


def make_pool(endpoints: int = 1, name: str = "p") -> Pool:
    pool = Pool(name)
    for i in range(endpoints):
        endpoint = pool.upsert(f"10.0.0.{i + 1}:8000")
        pool.table.update(endpoint.id, waiting=0, running=0, kv_util=0.0, now=time.monotonic())
        pool.table.set_ready(endpoint.id, True)
    return pool


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SlotDetector:
    """Saturation = (busy + pending) / capacity; tests take and free slots by hand."""

    def __init__(self, capacity: int = 1, busy: int = 0) -> None:
        self.capacity = capacity
        self.busy = busy

    def saturation(self, pool, request=None, pending: int = 0) -> float:
        return (self.busy + pending) / self.capacity


def req(name: str, priority: int = 0, flow: str = "default-flow", **headers: str) -> Request:
    request = Request(name, headers=dict(headers), body=b"x" * 10)
    request.priority = priority
    request.fairness_id = flow
    return request


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.001)


async def settle(turns: int = 5) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)
