"""A stream that does not come whole is relayed by the upstream read callback as it comes.

With the httptools front end and the lean client the forwarder's task waits for the replica
with ``UpstreamResponse.follow``: every later read is relayed by the callback that read it
(``_StreamRelay.on_data``), the end of the stream too, and the task is woken only when it
must act: the stream ended, the client reads too slowly (flow control), the replica failed.
These tests drive the lean client over a fake transport and check the bytes, their order,
who wrote them, flow control, the error event and that the request is finished once.
"""

from __future__ import annotations

import asyncio

import pytest

from igw import datastore
from igw.gateway import upstream
from igw.gateway.proxy import Forwarder
from igw.pipeline import Decision, Pipeline, Request, RequestKind

pytestmark = pytest.mark.skipif(upstream.httptools is None, reason="httptools is not installed")

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
END = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Transport:
    def __init__(self, conn, answer) -> None:
        self.conn = conn
        self.answer = answer

    def writelines(self, parts) -> None:
        self.answer(self.conn)

    def write(self, data: bytes) -> None:
        self.answer(self.conn)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default=None):
        return default


def _in_reads(*parts: bytes, gap: float = 0.01, lose: bool = False):
    """The answer in several reads ``gap`` apart (the connection lost after them if
    ``lose``)."""

    def answer(conn) -> None:
        loop = asyncio.get_running_loop()
        for i, part in enumerate(parts):
            loop.call_later(i * gap, conn.data_received, part)
        if lose:
            loop.call_later(len(parts) * gap, conn.connection_lost, None)

    return answer


class _Response:
    """The fast front end's chunked response: records each write and where it ran."""

    defer_head = True

    def __init__(self, client: _Client) -> None:
        self.client = client

    def _record(self, kind: str, data: bytes) -> None:
        if self.client.gone:
            raise ConnectionResetError("client disconnected")
        in_callback = asyncio.current_task() is None  # a loop callback, not the task
        self.client.writes.append((kind, data, in_callback))
        if self.client.pause_after_first:
            self.client.paused = True  # its transport's buffer is full now

    async def prepare(self, _request) -> None:
        pass

    def send(self, data: bytes) -> None:
        self._record("chunk", data)

    async def write(self, data: bytes) -> None:
        self.send(data)
        await self.drain()

    def end(self, data: bytes = b"") -> None:
        self._record("end", data)

    async def write_eof(self, data: bytes = b"") -> None:
        self.end(data)

    @property
    def paused(self) -> bool:
        return self.client.paused

    async def drain(self) -> None:
        if self.client.paused:
            self.client.drained += 1
            await self.client.resumed.wait()


class _Client:
    path_qs = "/v1/completions"

    def __init__(self) -> None:
        self.writes: list[tuple[str, bytes, bool]] = []
        self.paused = False
        self.pause_after_first = False
        self.resumed = asyncio.Event()
        self.gone = False
        self.drained = 0

    def send_answer(self, status, lines, body) -> None:  # marks the fast front end
        raise AssertionError("a stream is not a whole answer")

    def stream_response(self, status, lines, *, defer_head):
        return _Response(self)


class _Count:
    name = "count"

    def __init__(self) -> None:
        self.finished = 0
        self.seen = b""

    def on_headers(self, request, status, headers) -> None:
        pass

    def on_chunk(self, request, data: bytes, end_of_stream: bool) -> bytes:
        self.seen += data
        return data

    def on_finish(self, request) -> None:
        self.finished += 1


def _setup(answer, *, read_timeout: float = 5.0):
    stage = _Count()
    forwarder = Forwarder(Pipeline([], [stage]), lean=True, read_timeout=read_timeout)
    pool = forwarder.upstream

    async def connect(key):
        conn = upstream._Connection(key)
        conn.connection_made(_Transport(conn, answer))
        return conn

    pool._connect = connect  # type: ignore[method-assign]
    datapool = datastore.Pool("p")
    endpoint = datapool.upsert("127.0.0.1:9")
    request = Request("r", decision=Decision(pool=datapool, endpoints=[endpoint], reserved=False))
    request.kind = RequestKind.COMPLETIONS
    return forwarder, request, stage


async def test_later_chunks_and_the_end_are_written_by_the_read_callback():
    answer = _in_reads(HEAD + chunk(b"data: a\n\n"), chunk(b"data: [DONE]\n\n"), END)
    forwarder, request, stage = _setup(answer)
    client = _Client()
    await forwarder.forward(client, request)
    assert [(kind, data) for kind, data, _ in client.writes] == [
        ("chunk", b"data: a\n\n"),
        ("chunk", b"data: [DONE]\n\n"),
        ("end", b""),
    ]
    assert [where for _, _, where in client.writes] == [False, True, True]  # task, then reads
    assert stage.finished == 1 and not request.failed
    assert stage.seen == b"data: a\n\ndata: [DONE]\n\n"


async def test_a_paused_client_gets_nothing_more_until_it_drained():
    answer = _in_reads(
        HEAD, chunk(b"data: a\n\n"), chunk(b"data: b\n\n"), chunk(b"data: [DONE]\n\n"), END
    )
    forwarder, request, stage = _setup(answer)
    client = _Client()
    client.pause_after_first = True  # a slow reader: its buffer fills with the first chunk
    task = asyncio.ensure_future(forwarder.forward(client, request))
    await asyncio.sleep(0.08)  # every read is in by now
    assert [data for _, data, _ in client.writes] == [b"data: a\n\n"]  # then it waits
    client.pause_after_first = client.paused = False
    client.resumed.set()
    await task
    assert b"".join(data for _, data, _ in client.writes) == (
        b"data: a\n\ndata: b\n\ndata: [DONE]\n\n"
    )
    assert client.writes[-1][0] == "end"
    assert client.drained >= 1 and stage.finished == 1


async def test_a_stream_lost_midway_ends_with_an_error_event_and_fails():
    answer = _in_reads(HEAD + chunk(b"data: a\n\n"), chunk(b"data: b\n\n"), lose=True)
    forwarder, request, stage = _setup(answer)
    client = _Client()
    await forwarder.forward(client, request)
    kinds = [kind for kind, _, _ in client.writes]
    assert kinds == ["chunk", "chunk", "end"]
    assert b"broke the stream" in client.writes[-1][1]
    assert stage.finished == 1 and request.failed


async def test_a_silent_replica_is_cut_by_the_read_timeout_counted_from_its_last_bytes():
    # reads 0.08 s apart over 0.24 s, a 0.2 s timeout: only if every read moves it on do
    # all three chunks get through before the silence after them is cut
    parts = (chunk(b"data: a\n\n"), chunk(b"data: b\n\n"), chunk(b"data: c\n\n"))
    forwarder, request, stage = _setup(_in_reads(HEAD, *parts, gap=0.08), read_timeout=0.2)
    client = _Client()
    await forwarder.forward(client, request)
    sent = [data for _, data, _ in client.writes]
    assert sent[:3] == [b"data: a\n\n", b"data: b\n\n", b"data: c\n\n"]
    assert b"read timeout" in client.writes[-1][1]
    assert stage.finished == 1 and request.failed


async def test_a_client_gone_midway_is_not_the_replicas_failure():
    answer = _in_reads(HEAD + chunk(b"data: a\n\n"), chunk(b"data: b\n\n"), END)
    forwarder, request, stage = _setup(answer)
    client = _Client()
    task = asyncio.ensure_future(forwarder.forward(client, request))
    await asyncio.sleep(0.005)
    client.gone = True
    await task
    await asyncio.sleep(0)
    assert stage.finished == 1 and not request.failed
