"""Slow and vanishing clients: read timeouts cut them off, disconnects release in-flight."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from igw.gateway.app import Limits

SHORT = Limits(body_timeout=0.3, idle_timeout=0.3)


async def eventually(predicate, timeout: float = 3.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


async def test_slow_body_gets_408_and_the_connection_is_closed(replicas, make_gateway):
    gw = await make_gateway(replicas[:1], limits=SHORT)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.port)
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"model": '
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)  # read() returns once it is closed
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert json.loads(body)["error"]["code"] == "body_timeout"
    assert replicas[0].hits == 0


async def test_slow_request_head_is_cut_off(replicas, make_gateway):
    gw = await make_gateway(replicas[:1], limits=SHORT)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.port)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # never finishes the head
    await writer.drain()
    started = asyncio.get_running_loop().time()
    data = await asyncio.wait_for(reader.read(), 5)
    elapsed = asyncio.get_running_loop().time() - started
    writer.close()
    assert data == b""  # closed without a response
    assert elapsed < 3


async def test_client_leaving_mid_stream_releases_in_flight_and_upstream(replicas, make_gateway):
    gate: asyncio.Queue = asyncio.Queue()
    replicas[0].behaviour.gate = gate
    replicas[0].behaviour.chunks = 5
    gw = await make_gateway(replicas[:1])
    body = {"model": "sim-model", "prompt": "hi", "stream": True}
    session = aiohttp.ClientSession()
    response = await session.post(gw.url + "/v1/completions", json=body)
    gate.put_nowait(None)
    await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
    assert gw.engine.released == 0  # still streaming
    response.close()  # the client goes away mid-stream
    await session.close()
    assert await eventually(lambda: gw.engine.released == 1)
    assert await eventually(lambda: replicas[0].cancelled == 1)  # upstream request dropped


async def test_client_leaving_while_waiting_for_a_non_streamed_answer(replicas, make_gateway):
    replicas[0].behaviour.mode = "slow_json"
    gw = await make_gateway(replicas[:1])
    body = {"model": "sim-model", "prompt": "hi"}
    async with aiohttp.ClientSession() as session:
        task = asyncio.ensure_future(session.post(gw.url + "/v1/completions", json=body))
        assert await eventually(lambda: replicas[0].hits == 1)
        task.cancel()
    assert await eventually(lambda: gw.engine.released == 1)
    assert await eventually(lambda: replicas[0].cancelled == 1)
    assert gw.engine.reserved == 1
