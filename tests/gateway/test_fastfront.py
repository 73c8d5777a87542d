"""The httptools front end's own HTTP handling (the shared behaviour runs in every other
gateway test through the ``fastfront`` variant of ``make_gateway``)."""

from __future__ import annotations

import asyncio
import json

import pytest

from igw.gateway.app import Limits

pytestmark = pytest.mark.parametrize("make_gateway", ["fastfront"], indirect=True)

BODY = json.dumps({"model": "sim-model", "prompt": "hi"}).encode()


def post(body: bytes = BODY, extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    return (
        b"POST /v1/completions HTTP/" + version + b"\r\nHost: x\r\n"
        b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


async def exchange(port: int, data: bytes, *, until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        if until_close:
            return await asyncio.wait_for(reader.read(), 5)
        return await asyncio.wait_for(reader.readuntil(b'"hello"'), 5)
    finally:
        writer.close()


async def test_pipelined_requests_are_answered_in_order(replicas, make_gateway):
    gw = await make_gateway(replicas[:2])
    first = json.dumps({"model": "sim-model", "prompt": "one"}).encode()
    second = json.dumps({"model": "sim-model", "prompt": "two"}).encode()
    closing = post(second, b"Connection: close\r\n")
    answer = await exchange(gw.gateway.port, post(first) + closing)
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert b"connection: close" in answer.split(b"HTTP/1.1 200 OK")[2]
    assert sorted(r.bodies[0] for r in replicas[:2]) == sorted([first, second])


async def test_expect_100_continue_is_answered(replicas, make_gateway):
    gw = await make_gateway(replicas[:1])
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.port)
    head, body = post(extra=b"Expect: 100-continue\r\n").split(b"\r\n\r\n", 1)
    writer.write(head + b"\r\n\r\n")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == (
        b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    writer.write(body)
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_http_1_0_request_is_answered_and_closed(replicas, make_gateway):
    gw = await make_gateway(replicas[:1])
    answer = await exchange(gw.gateway.port, post(version=b"1.0"))
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b"connection: close" in answer


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", b"431"),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", b"414"),
    ],
)
async def test_broken_http_gets_json_error_and_close(replicas, make_gateway, data, status):
    gw = await make_gateway(replicas[:1])
    answer = await exchange(gw.gateway.port, data)
    assert answer.startswith(b"HTTP/1.1 " + status)
    error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert set(error) == {"message", "type", "param", "code"}


async def test_content_length_over_the_limit_is_refused_before_the_body(replicas, make_gateway):
    gw = await make_gateway(replicas[:1], limits=Limits(client_max_size=100))
    head = post(b"x" * 1000).split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    answer = await exchange(gw.gateway.port, head)  # no body sent at all
    assert answer.startswith(b"HTTP/1.1 413")
    assert replicas[0].hits == 0


async def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout(replicas, make_gateway):
    gw = await make_gateway(replicas[:1], limits=Limits(idle_timeout=0.3))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.port)
    writer.write(post())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    started = asyncio.get_running_loop().time()
    rest = await asyncio.wait_for(reader.read(), 5)  # the body, then EOF when idle too long
    assert b'"hello"' in rest
    assert asyncio.get_running_loop().time() - started < 3
    writer.close()
