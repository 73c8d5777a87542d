"""Property: no byte stream makes the httptools front end raise, answer non-HTTP, or hang."""

from __future__ import annotations

import asyncio
import logging

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.gateway.fake_transport import FakeTransport

from igw.errors import ErrorCode, InferenceError
from igw.gateway.app import Gateway, Limits
from igw.gateway.fastfront import FastFront, _Connection
from igw.pipeline import Pipeline


class Refuse:
    name = "refuse"

    async def process(self, request) -> None:
        raise InferenceError(ErrorCode.NOT_FOUND, "no models in this test")


VALID = [
    b"POST /v1/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    b"GET /health HTTP/1.1\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"GET /nope HTTP/1.0\r\n\r\n",
]
streams = st.lists(
    st.one_of(st.binary(max_size=120), st.sampled_from(VALID)), min_size=1, max_size=6
)


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def feed(chunks: list[bytes]) -> FakeTransport:
    gateway = Gateway(Pipeline([Refuse()]), models=lambda: [], limits=Limits(idle_timeout=5))
    conn = _Connection(FastFront(gateway))
    transport = FakeTransport()
    conn.connection_made(transport)
    for chunk in chunks:
        conn.data_received(chunk)  # must never raise
        await asyncio.sleep(0)
    for _ in range(20):  # let the answering task run
        await asyncio.sleep(0)
    conn.connection_lost(None)
    await asyncio.sleep(0)
    assert conn.task is not None and conn.task.done()
    if conn.head_timer is not None:
        conn.head_timer.cancel()
    return transport


@settings(max_examples=80, deadline=None)
@given(streams)
def test_any_byte_stream_gets_http_answers_or_nothing(chunks):
    errors = Errors()
    logger = logging.getLogger("igw.gateway")
    logger.addHandler(errors)
    try:
        transport = asyncio.run(feed(chunks))
    finally:
        logger.removeHandler(errors)
    assert not errors.records, errors.records[0].getMessage()  # no unexpected error path
    if transport.data:
        assert bytes(transport.data).startswith(b"HTTP/1.1 ")
