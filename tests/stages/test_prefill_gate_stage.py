"""The schedule stage waits at the engine's prefill gate, and never longer than allowed."""

from __future__ import annotations

import asyncio

import pytest

from igw.datastore import Pool
from igw.pipeline import Decision, Request
from igw.stages import ScheduleStage


class GatedEngine:
    """Holds every request until ``open()``; records who stopped waiting."""

    def __init__(self, *, hold: bool = True, max_wait: float = 5.0) -> None:
        self.hold, self.max_wait = hold, max_wait
        self.waiters: list = []
        self.stopped: list[Decision] = []

    def schedule(self, request, pool, *, k=None):
        return Decision(pool=pool, endpoints=pool.endpoints()[:1], reserved=True)

    def release(self, decision) -> None:
        pass

    def hold_for_prefill(self, decision, request, notify) -> bool:
        if self.hold:
            self.waiters.append(notify)
        return self.hold

    def stop_waiting(self, decision) -> None:
        self.stopped.append(decision)

    def prefill_gate_max_wait(self, decision) -> float:
        return self.max_wait

    def open(self) -> None:
        for notify in self.waiters:
            notify()


def _pool() -> Pool:
    pool = Pool("p")
    endpoint = pool.upsert("10.0.0.1:8000")
    pool.table.set_ready(endpoint.id, True)
    return pool


def _request() -> Request:
    return Request("r", stream=True)


async def test_a_held_request_is_scheduled_when_the_gate_opens():
    engine = GatedEngine()
    pool = _pool()
    stage = ScheduleStage(engine, lambda _r: pool)
    request = _request()
    task = asyncio.ensure_future(stage.process(request))
    await asyncio.sleep(0.01)
    assert not task.done()
    engine.open()
    await asyncio.wait_for(task, 1.0)
    assert request.decision is not None and engine.stopped == []


async def test_a_request_held_too_long_goes_anyway_and_gives_its_place_up():
    engine = GatedEngine(max_wait=0.02)
    pool = _pool()
    request = _request()
    await asyncio.wait_for(ScheduleStage(engine, lambda _r: pool).process(request), 1.0)
    assert engine.stopped == [request.decision]


async def test_a_client_leaving_while_held_gives_its_place_up():
    engine = GatedEngine()
    pool = _pool()
    request = _request()
    task = asyncio.ensure_future(ScheduleStage(engine, lambda _r: pool).process(request))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.stopped == [request.decision]


async def test_a_request_the_gate_does_not_hold_does_not_wait():
    engine = GatedEngine(hold=False)
    pool = _pool()
    request = _request()
    await asyncio.wait_for(ScheduleStage(engine, lambda _r: pool).process(request), 0.5)
    assert request.decision is not None and engine.stopped == []


class CountingGatedEngine(GatedEngine):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scheduled = 0

    def schedule(self, request, pool, *, k=None):
        self.scheduled += 1
        return super().schedule(request, pool, k=k)


async def test_a_request_held_in_a_pipeline_is_scheduled_once_and_waits_for_the_gate():
    from igw.pipeline import Pipeline

    engine = CountingGatedEngine()
    pool = _pool()
    pipeline = Pipeline([ScheduleStage(engine, lambda _r: pool)])
    request = _request()
    task = asyncio.ensure_future(pipeline.run(request))
    await asyncio.sleep(0.01)
    assert not task.done()  # process_now found it held: the pipeline awaits process
    engine.open()
    await asyncio.wait_for(task, 1.0)
    assert engine.scheduled == 1 and engine.stopped == []


async def test_a_streamed_request_the_gate_lets_through_needs_no_wait():
    engine = CountingGatedEngine(hold=False)
    pool = _pool()
    stage = ScheduleStage(engine, lambda _r: pool)
    request = _request()
    assert stage.process_now(request) is True
    assert engine.scheduled == 1 and request.decision is not None
