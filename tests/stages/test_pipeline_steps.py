"""Pipeline stages done at once (``process_now``) or awaited (``process``), in order."""

from __future__ import annotations

import asyncio

import pytest

from igw.errors import InferenceError, bad_request
from igw.pipeline import Pipeline, Request


class _Sync:
    """Always finishes at once; ``process`` must then never be awaited."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def process_now(self, request: Request) -> bool:
        self.log.append(f"{self.name}:now")
        return True

    async def process(self, request: Request) -> None:
        raise AssertionError(f"{self.name}: process awaited although process_now finished")


class _Declines:
    """Declines to finish at once (does nothing then) and waits in ``process``."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def process_now(self, request: Request) -> bool:
        return False

    async def process(self, request: Request) -> None:
        await asyncio.sleep(0)
        self.log.append(f"{self.name}:awaited")


class _AsyncOnly:
    """A stage written before process_now existed."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def process(self, request: Request) -> None:
        self.log.append(f"{self.name}:awaited")


async def test_stages_that_finish_at_once_are_never_awaited() -> None:
    log: list[str] = []
    pipeline = Pipeline([_Sync("a", log), _Sync("b", log)])
    request = Request(request_id="r")
    assert pipeline.advance(request) == 2
    assert log == ["a:now", "b:now"]


async def test_advance_stops_at_the_first_stage_that_must_wait() -> None:
    log: list[str] = []
    pipeline = Pipeline([_Sync("a", log), _Declines("b", log), _Sync("c", log)])
    assert pipeline.advance(Request(request_id="r")) == 1
    assert log == ["a:now"]


async def test_run_keeps_the_stage_order_across_sync_and_awaited_stages() -> None:
    log: list[str] = []
    stages = [_Sync("a", log), _Declines("b", log), _AsyncOnly("c", log), _Sync("d", log)]
    await Pipeline(stages).run(Request(request_id="r"))
    assert log == ["a:now", "b:awaited", "c:awaited", "d:now"]


async def test_a_stage_list_changed_after_use_is_followed() -> None:
    log: list[str] = []
    pipeline = Pipeline([_Sync("a", log)])
    await pipeline.run(Request(request_id="r"))
    pipeline.stages.append(_AsyncOnly("b", log))
    await pipeline.run(Request(request_id="r"))
    assert log == ["a:now", "a:now", "b:awaited"]


async def test_an_error_raised_at_once_stops_the_pipeline() -> None:
    log: list[str] = []

    class Refuses(_Sync):
        def process_now(self, request: Request) -> bool:
            raise bad_request("no")

    pipeline = Pipeline([Refuses("a", log), _Sync("b", log)])
    with pytest.raises(InferenceError):
        await pipeline.run(Request(request_id="r"))
    assert log == []
