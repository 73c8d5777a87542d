"""The lazy timers of the httptools front end and the upstream client keep their deadlines.

Each connection re-uses one timer across requests (it re-arms when it fires before the
current deadline), so these tests check the deadlines that move: the idle timeout counts from
the last answer, the body timeout from the head whatever trickles in, and the upstream read
timeout of a reused connection from the new request.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from igw.gateway.app import Limits

BODY = json.dumps({"model": "sim-model", "prompt": "hi"}).encode()


def post(body: bytes = BODY) -> bytes:
    return (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def answer_of(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


@pytest.mark.parametrize("make_gateway", ["fastfront"], indirect=True)
async def test_idle_timeout_counts_from_the_last_answer(replicas, make_gateway):
    gw = await make_gateway(replicas[:1], limits=Limits(idle_timeout=0.6))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.port)
    try:
        for _ in range(3):  # 3 x 0.4 s > 0.6 s since the connection opened
            await asyncio.sleep(0.4)
            writer.write(post())
            assert (await answer_of(reader)).startswith(b"HTTP/1.1 200")
        loop = asyncio.get_running_loop()
        idle_from = loop.time()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed once idle too long
        assert loop.time() - idle_from >= 0.5
    finally:
        writer.close()


@pytest.mark.parametrize("make_gateway", ["fastfront"], indirect=True)
async def test_a_trickled_body_gets_408_at_the_deadline_set_by_its_head(replicas, make_gateway):
    gw = await make_gateway(replicas[:1], limits=Limits(body_timeout=0.5, idle_timeout=5.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.port)
    head, body = post().split(b"\r\n\r\n", 1)
    loop = asyncio.get_running_loop()

    async def trickle() -> None:
        for byte in body[1:16]:  # every 0.1 s for 1.5 s: each piece well within the timeout
            await asyncio.sleep(0.1)
            writer.write(bytes([byte]))

    writer.write(head + b"\r\n\r\n" + body[:1])
    started = loop.time()
    trickling = asyncio.ensure_future(trickle())
    try:
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 408")
        assert 0.4 <= loop.time() - started < 1.3  # the pieces did not extend the deadline
        assert replicas[0].hits == 0
    finally:
        trickling.cancel()
        await asyncio.gather(trickling, return_exceptions=True)  # a write after the close
        writer.close()


@pytest.mark.parametrize("make_gateway", ["fastfront"], indirect=True)
async def test_a_body_completed_in_pieces_in_time_is_served(replicas, make_gateway):
    gw = await make_gateway(replicas[:1], limits=Limits(body_timeout=1.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.port)
    head, body = post().split(b"\r\n\r\n", 1)
    try:
        writer.write(head + b"\r\n\r\n")
        for piece in (body[:5], body[5:10], body[10:]):
            await asyncio.sleep(0.05)
            writer.write(piece)
        assert (await answer_of(reader)).startswith(b"HTTP/1.1 200")
        writer.write(post())  # the connection is still fine for the next request
        assert (await answer_of(reader)).startswith(b"HTTP/1.1 200")
        assert replicas[0].bodies == [BODY, BODY]
    finally:
        writer.close()


async def test_reused_upstream_connection_times_out_from_its_new_request():
    from igw.gateway.upstream import UpstreamPool, UpstreamTimeoutError, httptools

    if httptools is None:
        pytest.skip("httptools is not installed")
    requests = connections = 0
    handler_done = asyncio.Event()

    async def first_only(reader, writer):
        nonlocal requests, connections
        connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                requests += 1
                if requests == 1:  # the second request is never answered
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()
            handler_done.set()

    server = await asyncio.start_server(first_only, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(read_timeout=0.5)
    loop = asyncio.get_running_loop()
    try:
        response = await pool.post("127.0.0.1", port, "/v1/completions", [], b"")
        assert await response.read() == b"ok"
        response.release()
        await asyncio.sleep(0.3)  # the first request's deadline is 0.2 s away
        started = loop.time()
        with pytest.raises(UpstreamTimeoutError):
            await pool.post("127.0.0.1", port, "/v1/completions", [], b"")
        assert 0.45 <= loop.time() - started < 3
        assert (requests, connections) == (2, 1)  # sent on the kept-alive connection
    finally:
        await pool.close()
        await asyncio.wait_for(handler_done.wait(), 5)  # its side closed before the loop ends
        server.close()
        await server.wait_closed()
