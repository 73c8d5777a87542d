"""The upstream request goes out as head + body buffers (no joined copy of the body) when
the transport takes several at once, and as one write otherwise; the bytes are the same."""

from __future__ import annotations

import asyncio

import pytest

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class _Transport:
    def __init__(self, on_sent) -> None:
        self.writes: list[bytes] = []
        self.on_sent = on_sent

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.on_sent()

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default=None):
        return default


class _VectorTransport(_Transport):
    def __init__(self, on_sent) -> None:
        super().__init__(on_sent)
        self.batches: list[list[bytes]] = []

    def writelines(self, parts) -> None:
        self.batches.append(list(parts))
        self.on_sent()


async def _post(transport_type, body: bytes):
    from igw.gateway import upstream

    if upstream.httptools is None:
        pytest.skip("httptools is not installed")
    loop = asyncio.get_running_loop()
    pool = upstream.UpstreamPool(read_timeout=5.0)
    conn = upstream._Connection(("127.0.0.1", 9))
    transport = transport_type(lambda: loop.call_soon(conn.data_received, ANSWER))
    conn.connection_made(transport)

    async def connect(_key):
        return conn

    pool._connect = connect  # type: ignore[method-assign]
    response = await pool.post("127.0.0.1", 9, "/v1/completions", [("a", "b")], body)
    assert response.status == 200 and response.whole_body() == b"{}"
    return transport


async def test_head_and_body_go_out_as_two_buffers_without_copying_the_body():
    body = b'{"prompt": "' + b"x" * 20000 + b'"}'
    transport = await _post(_VectorTransport, body)
    assert transport.writes == [] and len(transport.batches) == 1
    head, sent = transport.batches[0]
    assert sent is body  # the caller's object: not copied into a joined buffer
    assert head.startswith(b"POST /v1/completions HTTP/1.1\r\n")
    assert head.endswith(b"content-length: %d\r\n\r\n" % len(body))


async def test_without_writelines_the_same_bytes_go_out_in_one_write():
    body = b'{"prompt": "hi"}'
    vector = await _post(_VectorTransport, body)
    single = await _post(_Transport, body)
    assert single.writes == [b"".join(vector.batches[0])]
