"""The upstream client's whole-body read when the body is already in (no waits)."""

from __future__ import annotations

import asyncio

import pytest

BIG = 300 * 1024  # above the client's HIGH_WATER: reading from the replica pauses


class _Transport:
    """Stands in for the replica's socket; records flow-control calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def write(self, data: bytes) -> None:
        self.calls.append("write")

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default=None):
        return default

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


async def test_a_large_body_that_arrived_whole_is_read_and_reading_resumes():
    from igw.gateway.upstream import (
        HIGH_WATER,
        UpstreamPool,
        UpstreamResponse,
        _Connection,
        httptools,
    )

    assert BIG > HIGH_WATER
    if httptools is None:
        pytest.skip("httptools is not installed")
    conn = _Connection(("127.0.0.1", 1))
    transport = _Transport()
    conn.connection_made(transport)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG + b"a" * BIG)
    assert transport.calls == ["pause"]  # over HIGH_WATER while the body came in
    pool = UpstreamPool()
    response = UpstreamResponse(pool, conn, 200)
    assert await response.read() == b"a" * BIG
    assert transport.calls == ["pause", "resume"]  # a kept-alive connection reads again
    assert response.complete and conn.reusable


async def test_a_body_read_in_one_go_equals_the_bytes_sent_in_pieces():
    from igw.gateway.upstream import UpstreamPool, httptools

    if httptools is None:
        pytest.skip("httptools is not installed")
    pieces = [b"first ", b"second ", b"third"]

    async def answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()  # after a complete message: the body stays whole

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(read_timeout=5.0)
    try:
        response = await pool.post("127.0.0.1", port, "/v1/completions", [], b"")
        for _ in range(300):  # let the whole body arrive before reading it
            if response._conn._done:
                break
            await asyncio.sleep(0.01)
        assert response._conn._done
        assert await response.read() == b"".join(pieces)
        assert await response.readany() == b""
        response.release()
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()


async def test_whole_body_is_none_until_the_body_has_all_come():
    from igw.gateway.upstream import UpstreamPool, UpstreamResponse, _Connection, httptools

    if httptools is None:
        pytest.skip("httptools is not installed")
    conn = _Connection(("127.0.0.1", 1))
    conn.connection_made(_Transport())
    response = UpstreamResponse(UpstreamPool(), conn, 200)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
    assert response.whole_body() is None  # half of it: the caller must wait (read)
    conn.data_received(b"world")
    assert response.whole_body() == b"helloworld"
    assert response.complete and conn.reusable


async def test_response_headers_stay_with_their_response_when_the_connection_is_reused():
    from igw.gateway.upstream import UpstreamPool, httptools

    if httptools is None:
        pytest.skip("httptools is not installed")

    served = asyncio.Event()

    async def answer(reader, writer):
        for kind in (b"a", b"b"):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nX-Kind: %s\r\nContent-Length: 0\r\n\r\n" % kind)
            await writer.drain()
        writer.close()
        await writer.wait_closed()
        served.set()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(read_timeout=5.0)
    try:
        first = await pool.post("127.0.0.1", port, "/", [], b"")
        headers, conn = first.headers, first._conn
        first.release()  # back to the pool: the next request reuses the connection
        second = await pool.post("127.0.0.1", port, "/", [], b"")
        assert second._conn is conn and second.headers["x-kind"] == "b"
        assert headers["x-kind"] == "a"  # an observer reading it late sees its own answer
        second.release()
        await asyncio.wait_for(served.wait(), 5)
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()
