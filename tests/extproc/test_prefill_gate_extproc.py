"""The prefill gate behind Envoy: a second long prompt for a replica is answered (routed) only
once the first one's response has started, over real ext_proc streams."""

from __future__ import annotations

import asyncio
import json

import pytest
from epp_harness import make_pool, req_body, req_headers, resp_body, resp_headers, running_epp
from sched_helpers import gated_config

from igw.scheduling import SchedulingEngine

pytestmark = pytest.mark.usefixtures("epp_transport")


def _gated_engine(tokens: int = 256) -> SchedulingEngine:
    return SchedulingEngine(gated_config(tokens))


def _long_streamed(i: int, request_id: str) -> list:
    prompt = f"document {i} " + "lorem ipsum dolor sit amet " * 300
    body = json.dumps({"model": "my-model", "prompt": prompt, "stream": True, "max_tokens": 5})
    return [req_headers({"x-request-id": request_id}), req_body(body.encode())]


async def _routed(call, messages) -> object:
    for message in messages:
        await call.write(message)
    return await call.read()


async def test_a_second_long_prompt_is_routed_once_the_first_has_its_first_token():
    pool = make_pool([(0, 0.1)])
    async with running_epp(pool, engine=_gated_engine()) as epp:
        first = epp.stub.Process()
        reply = await asyncio.wait_for(_routed(first, _long_streamed(1, "first")), 5)
        assert reply.WhichOneof("response") == "request_headers"
        second = epp.stub.Process()
        waiting = asyncio.ensure_future(_routed(second, _long_streamed(2, "second")))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # held: the replica is busy prefilling the first prompt
        await first.write(resp_headers({":status": "200", "content-type": "text/event-stream"}))
        await first.read()
        await first.write(resp_body(b'data: {"choices":[{"text":"a"}]}\n\n'))  # first token
        reply = await asyncio.wait_for(waiting, 5)
        assert reply.WhichOneof("response") == "request_headers"
        for call in (first, second):
            await call.done_writing()
            call.cancel()
    assert epp.engine.gate_tickets == 0 and epp.engine.outstanding == 0


async def test_a_held_stream_that_envoy_closes_gives_its_place_up():
    pool = make_pool([(0, 0.1)])
    async with running_epp(pool, engine=_gated_engine()) as epp:
        first = epp.stub.Process()
        await asyncio.wait_for(_routed(first, _long_streamed(1, "first")), 5)
        second = epp.stub.Process()
        waiting = asyncio.ensure_future(_routed(second, _long_streamed(2, "second")))
        await asyncio.sleep(0.3)
        second.cancel()  # the client went away while its request waited
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.sleep(0.1)
        assert epp.engine.gate_tickets == 1  # only the first prompt's
        first.cancel()
        await asyncio.sleep(0.1)
    assert epp.engine.gate_tickets == 0 and epp.engine.outstanding == 0
