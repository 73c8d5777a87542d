"""A client dropping a stream is routine for a replica: no ERROR log, no traceback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import aiohttp

from igw.sim import SimFleet


async def _drop_mid_stream(url: str) -> bytes:
    """Send a streamed completion over a raw socket, read the first bytes, then reset."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = json.dumps({"model": "sim-model", "prompt": "hello", "max_tokens": 400,
                       "ignore_eos": True, "stream": True}).encode()  # fmt: skip
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode() + body
    )
    first = await asyncio.wait_for(reader.read(1024), 10)
    writer.close()  # as a gateway dropping the upstream request
    return first


async def test_a_client_dropping_a_stream_logs_no_error(caplog):
    caplog.set_level(logging.DEBUG)
    async with SimFleet(1, speed=20) as fleet:
        first = await _drop_mid_stream(fleet.urls[0])
        await asyncio.sleep(0.5)  # the replica keeps writing into the closed connection
    assert b"200" in first.split(b"\r\n", 1)[0]
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert problems == [], [r.getMessage() for r in problems]


async def test_a_write_failing_with_connection_reset_is_logged_at_debug_only(
    caplog, monkeypatch
):
    from aiohttp import web

    real_write = web.StreamResponse.write
    calls = 0

    async def failing_write(self, data):
        nonlocal calls
        calls += 1
        if calls > 1:  # the first events go out, then the peer is gone
            raise ConnectionResetError("Cannot write to closing transport")
        await real_write(self, data)

    monkeypatch.setattr(web.StreamResponse, "write", failing_write)
    caplog.set_level(logging.DEBUG)
    body = {"model": "sim-model", "prompt": "hello", "max_tokens": 40, "ignore_eos": True,
            "stream": True}  # fmt: skip
    async with SimFleet(1, speed=50) as fleet, aiohttp.ClientSession() as session:
        url = fleet.urls[0] + "/v1/completions"
        with contextlib.suppress(aiohttp.ClientError):
            async with session.post(url, json=body) as response:
                await response.read()
        await asyncio.sleep(0.1)
    assert calls > 1
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert problems == [], [r.getMessage() for r in problems]
    assert any("client left request" in r.getMessage() for r in caplog.records)
