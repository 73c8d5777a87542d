"""A whole answer that arrives with its head is written from the upstream read callback.

The upstream client calls the ``early`` hook from ``data_received`` when the head and the
complete body came in one read, before the task waiting for the head resumes; the forwarder
writes the answer to the client there. These tests drive the lean client over a fake
transport and check what the rest of the gateway relies on: the hook sees only complete
answers, the task still gets the same response, a cancelled request is never answered, a
status the forwarder retries is left to it, and a failure in the callback (a client gone, a
stage raising) reaches the task and the request is finished exactly once.
"""

from __future__ import annotations

import asyncio

import pytest

from igw import datastore
from igw.gateway import upstream
from igw.gateway.proxy import Forwarder
from igw.pipeline import RESPONSE_BLOCKED_ATTR, Decision, Pipeline, Request, RequestKind

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"


def _sse(events: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(events), events)
    )


pytestmark = pytest.mark.skipif(upstream.httptools is None, reason="httptools is not installed")


class _Transport:
    """An upstream socket: each request written is answered by ``answer(conn)``."""

    def __init__(self, conn, answer) -> None:
        self.conn = conn
        self.answer = answer
        self.closed = False

    def write(self, data: bytes) -> None:
        self.answer(self.conn)

    def writelines(self, parts) -> None:
        self.answer(self.conn)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default=None):
        return default


def _in_one_read(data: bytes):
    return lambda conn: asyncio.get_running_loop().call_soon(conn.data_received, data)


def _pool(answers: dict[int, object]) -> upstream.UpstreamPool:
    """A pool whose connection to port P answers with ``answers[P]``."""
    pool = upstream.UpstreamPool(read_timeout=5.0)

    async def connect(key):
        conn = upstream._Connection(key)
        conn.connection_made(_Transport(conn, answers[key[1]]))
        return conn

    pool._connect = connect  # type: ignore[method-assign]
    return pool


async def test_a_whole_answer_in_one_read_goes_to_the_hook_before_the_task_resumes():
    seen = []
    post_returned = []
    pool = _pool({9: _in_one_read(OK)})

    def hook(response) -> None:
        seen.append((response, response.whole_body(), bool(post_returned)))

    response = await pool.post("127.0.0.1", 9, "/v1/completions", [], b"{}", hook)
    post_returned.append(True)
    assert len(seen) == 1
    taken, body, after_post = seen[0]
    assert taken is response and response.status == 200
    assert body == b"{}" and not after_post and response.complete


async def test_an_answer_whose_body_comes_in_a_later_read_is_left_to_the_task():
    seen = []
    head, body = OK[:-2], OK[-2:]

    def answer(conn) -> None:
        loop = asyncio.get_running_loop()
        loop.call_soon(conn.data_received, head)
        loop.call_later(0.01, conn.data_received, body)

    pool = _pool({9: answer})
    response = await pool.post("127.0.0.1", 9, "/", [], b"{}", seen.append)
    assert await response.read() == b"{}"
    await asyncio.sleep(0.02)
    assert seen == []


async def test_a_request_cancelled_before_its_answer_is_not_answered():
    seen = []
    conns = []
    pool = _pool({9: conns.append})  # the answer is delivered by hand below
    task = asyncio.ensure_future(pool.post("127.0.0.1", 9, "/", [], b"{}", seen.append))
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    conns[0].data_received(OK)
    assert seen == []


# ------------------------------------------------------------------------- the forwarder


class _Client:
    """The front end's request: ``send_answer`` writes to a client that may be gone."""

    path_qs = "/v1/completions"

    def __init__(self, gone: bool = False) -> None:
        self.gone = gone
        self.answers: list[tuple[int, str, bytes]] = []

    def send_answer(self, status: int, headers: str, body: bytes) -> None:
        if self.gone:
            raise ConnectionResetError("client disconnected")
        self.answers.append((status, headers, body))

    def stream_response(self, status: int, headers: str, *, defer_head: bool):
        return _ClientStream(self, status)

    def send_stream(self, status: int, headers: str, data: bytes) -> None:
        self.send_answer(status, headers, data)


class _ClientStream:
    """The front end's chunked response: ``end`` writes all that is left at once."""

    def __init__(self, client: _Client, status: int) -> None:
        self.client = client
        self.status = status
        self.defer_head = True
        self.data = b""

    async def write(self, data: bytes) -> None:
        self.data += data

    async def write_eof(self, data: bytes = b"") -> None:
        self.end(data)

    def end(self, data: bytes = b"") -> None:
        self.client.send_answer(self.status, "", self.data + data)


class _Finishes:
    """A response stage counting ``on_finish``; ``on_chunk`` may raise."""

    name = "count"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.finished = 0

    def on_headers(self, request, status, headers) -> None:
        pass

    def on_chunk(self, request, chunk: bytes, end_of_stream: bool) -> bytes:
        if self.fail:
            raise ValueError("stage bug")
        return chunk

    def on_finish(self, request) -> None:
        self.finished += 1


def _forwarder(stage, answers: dict[int, object]) -> tuple[Forwarder, Request]:
    forwarder = Forwarder(Pipeline([], [stage]), lean=True)
    forwarder.upstream = _pool(answers)
    pool = datastore.Pool("p")
    endpoints = [pool.upsert(f"127.0.0.1:{port}") for port in answers]
    request = Request("r", decision=Decision(pool=pool, endpoints=endpoints, reserved=False))
    return forwarder, request


async def test_a_whole_answer_is_written_by_the_forwarder_and_finished_once():
    stage = _Finishes()
    forwarder, request = _forwarder(stage, {9: _in_one_read(OK)})
    client = _Client()
    assert await forwarder.forward(client, request) is None  # written already
    assert [(s, b) for s, _, b in client.answers] == [(200, b"{}")]
    assert "x-igw-endpoint: 127.0.0.1:9\r\n" in client.answers[0][1]
    assert stage.finished == 1 and request.served_endpoint == "127.0.0.1:9"
    await asyncio.sleep(0)
    assert stage.finished == 1


async def test_a_retried_status_is_left_to_the_forwarder_which_tries_the_next_endpoint():
    stage = _Finishes()
    forwarder, request = _forwarder(stage, {9: _in_one_read(BUSY), 10: _in_one_read(OK)})
    client = _Client()
    await forwarder.forward(client, request)
    assert [(s, b) for s, _, b in client.answers] == [(200, b"{}")]
    assert request.served_endpoint == "127.0.0.1:10" and stage.finished == 1


async def test_the_last_endpoints_error_status_is_relayed():
    stage = _Finishes()
    forwarder, request = _forwarder(stage, {9: _in_one_read(BUSY), 10: _in_one_read(BUSY)})
    client = _Client()
    await forwarder.forward(client, request)
    assert [s for s, _, _ in client.answers] == [503]
    assert stage.finished == 1


async def test_a_client_gone_when_the_answer_arrives_reaches_the_task_and_finishes_once():
    stage = _Finishes()
    forwarder, request = _forwarder(stage, {9: _in_one_read(OK)})
    with pytest.raises(ConnectionResetError):
        await forwarder.forward(_Client(gone=True), request)
    for _ in range(3):
        await asyncio.sleep(0)
    assert stage.finished == 1


async def test_a_stage_failing_in_the_read_callback_fails_the_task_and_finishes_once():
    stage = _Finishes(fail=True)
    forwarder, request = _forwarder(stage, {9: _in_one_read(OK)})
    client = _Client()
    with pytest.raises(ValueError, match="stage bug"):
        await forwarder.forward(client, request)
    for _ in range(3):
        await asyncio.sleep(0)
    assert client.answers == [] and stage.finished == 1


async def test_a_whole_stream_in_one_read_is_relayed_at_once():
    stage = _Finishes()
    events = b"data: {}\n\ndata: [DONE]\n\n"
    forwarder, request = _forwarder(stage, {9: _in_one_read(_sse(events))})
    request.kind = RequestKind.COMPLETIONS
    client = _Client()
    assert await forwarder.forward(client, request) is None  # written already
    assert [(s, b) for s, _, b in client.answers] == [(200, events)]
    assert stage.finished == 1 and not request.failed


async def test_a_whole_stream_without_done_ends_with_an_error_event_and_fails():
    stage = _Finishes()
    forwarder, request = _forwarder(stage, {9: _in_one_read(_sse(b"data: {}\n\n"))})
    request.kind = RequestKind.COMPLETIONS
    client = _Client()
    await forwarder.forward(client, request)
    [(status, _, body)] = client.answers
    assert status == 200 and body.startswith(b'data: {}\n\ndata: {"error"')
    assert b"without [DONE]" in body
    assert stage.finished == 1 and request.failed


async def test_a_head_followed_by_broken_bytes_in_the_same_read_is_still_the_answer():
    broken = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n"
    seen = []
    pool = _pool({9: _in_one_read(broken)})
    response = await pool.post("127.0.0.1", 9, "/", [], b"{}", seen.append)
    assert response.status == 200 and seen == []  # not a whole answer: left to the task
    with pytest.raises(upstream.UpstreamBrokenError, match="invalid HTTP response"):
        await response.read()


class _Blocks(_Finishes):
    """guard.out's way of ending a stream: replace the bytes and mark the request."""

    def on_chunk(self, request, chunk: bytes, end_of_stream: bool) -> bytes:
        if chunk:
            request.attrs[RESPONSE_BLOCKED_ATTR] = True
            return b"data: blocked\n\n"
        return chunk


async def test_a_whole_stream_ended_by_policy_gets_no_missing_done_error():
    stage = _Blocks()
    forwarder, request = _forwarder(stage, {9: _in_one_read(_sse(b"data: {}\n\n"))})
    request.kind = RequestKind.COMPLETIONS
    client = _Client()
    await forwarder.forward(client, request)
    assert [b for _, _, b in client.answers] == [b"data: blocked\n\n"]
    assert stage.finished == 1 and not request.failed
