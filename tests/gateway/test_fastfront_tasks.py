"""The httptools front end answers each connection's requests in the connection's task.

These tests feed bytes to one ``_Connection`` over a fake transport, from a loop callback as
the server does (not from a task), and check what the handler can rely on: it runs in the
connection's task (``asyncio.timeout`` works and its expiry reaches the handler), a client
that leaves cancels it, and requests that arrive while one waits are answered after it, in
order.
"""

from __future__ import annotations

import asyncio

import pytest
from tests.gateway.fake_transport import FakeTransport

from igw.errors import ErrorCode, InferenceError
from igw.gateway.app import Gateway, Limits
from igw.gateway.fastfront import FastFront, _Connection
from igw.pipeline import Pipeline


def post(prompt: str) -> bytes:
    body = b'{"model": "m", "prompt": "%s"}' % prompt.encode()
    return b"POST /v1/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body


class Stage:
    """Runs ``behaviour(request)`` as the pipeline's only stage, then refuses with 404 and
    the prompt's bytes in the message (so answers can be told apart)."""

    name = "probe"

    def __init__(self, behaviour) -> None:
        self.behaviour = behaviour

    async def process(self, request) -> None:
        await self.behaviour(request)
        raise InferenceError(ErrorCode.NOT_FOUND, f"answered {request.body[-8:-2].decode()}")


def connection(behaviour) -> tuple[_Connection, FakeTransport]:
    pipeline = Pipeline([Stage(behaviour)])
    gateway = Gateway(pipeline, models=lambda: [], limits=Limits(idle_timeout=5))
    conn = _Connection(FastFront(gateway))
    transport = FakeTransport()
    conn.connection_made(transport)
    return conn, transport


async def from_callback(function, *args) -> None:
    """Call ``function`` from a plain loop callback, as the event loop calls a protocol."""
    done = asyncio.get_running_loop().create_future()

    def call() -> None:
        try:
            function(*args)
        finally:
            done.set_result(None)

    asyncio.get_running_loop().call_soon(call)
    await done


def waits_until_cancelled(events: list[str]):
    """A handler that waits forever and notes its cancellation in ``events``."""

    async def behaviour(request) -> None:
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    return behaviour


def first_waits_for(release: asyncio.Future, order: list[bytes]):
    """A handler that notes each request's prompt in ``order``; the one saying "first!"
    waits for ``release`` before it is answered."""

    async def behaviour(request) -> None:
        order.append(request.body[-8:-2])
        if request.body.endswith(b'first!"}'):
            await release

    return behaviour


async def settle(conn: _Connection, transport: FakeTransport) -> None:
    for _ in range(10):
        await asyncio.sleep(0)
    conn.connection_lost(None)
    await asyncio.sleep(0)
    assert conn.task is not None and conn.task.done()


async def test_the_handler_runs_in_the_connections_task():
    seen = []

    async def record(request) -> None:
        seen.append(asyncio.current_task())

    conn, transport = connection(record)
    await from_callback(conn.data_received, post("first!"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert seen == [conn.task]
    assert transport.data.startswith(b"HTTP/1.1 404") and b"first!" in transport.data
    await settle(conn, transport)


@pytest.mark.skipif(not hasattr(asyncio, "timeout"), reason="asyncio.timeout is Python 3.11+")
async def test_a_timeout_begun_in_the_first_step_expires_into_the_handler():
    async def wait_too_long(request) -> None:
        try:
            async with asyncio.timeout(0.05):
                await asyncio.get_running_loop().create_future()  # never done
        except TimeoutError:
            raise InferenceError(ErrorCode.SERVICE_UNAVAILABLE, "timed out here") from None

    conn, transport = connection(wait_too_long)
    await from_callback(conn.data_received, post("slow!!"))
    assert transport.data == b""  # waiting, taken over by the task
    for _ in range(100):
        if transport.data:
            break
        await asyncio.sleep(0.01)
    assert transport.data.startswith(b"HTTP/1.1 503") and b"timed out here" in transport.data
    await settle(conn, transport)


async def test_a_client_gone_while_the_handler_waits_cancels_it():
    events: list[str] = []
    conn, transport = connection(waits_until_cancelled(events))
    await from_callback(conn.data_received, post("gone!!"))
    for _ in range(5):
        await asyncio.sleep(0)
    await from_callback(conn.connection_lost, None)
    for _ in range(5):
        await asyncio.sleep(0)
    assert events == ["cancelled"]
    assert conn.task is not None and conn.task.done()
    assert transport.data == b""


async def test_requests_arriving_while_one_waits_are_answered_after_it_in_order():
    release = asyncio.get_running_loop().create_future()
    order: list[bytes] = []
    conn, transport = connection(first_waits_for(release, order))
    await from_callback(conn.data_received, post("first!"))
    for _ in range(5):
        await asyncio.sleep(0)
    await from_callback(conn.data_received, post("second") + post("third!"))
    await asyncio.sleep(0)
    assert order == [b"first!"]  # the others wait for their turn
    release.set_result(None)
    for _ in range(10):
        await asyncio.sleep(0)
    assert order == [b"first!", b"second", b"third!"]
    answers = bytes(transport.data).split(b"HTTP/1.1 ")[1:]
    assert [a[a.index(b"answered ") + 9 :][:6] for a in answers] == order
    await settle(conn, transport)


async def test_the_handler_runs_up_to_its_first_wait_in_the_read_callback():
    steps = []

    async def wait_once(request) -> None:
        steps.append("before the wait")
        await asyncio.sleep(0)
        steps.append("after the wait")

    conn, transport = connection(wait_once)
    await from_callback(conn.data_received, post("eager!"))
    assert steps == ["before the wait"]  # no task step has run yet
    for _ in range(5):
        await asyncio.sleep(0)
    assert steps == ["before the wait", "after the wait"]
    assert transport.data.startswith(b"HTTP/1.1 404") and b"eager!" in transport.data
    await settle(conn, transport)


async def test_a_client_gone_before_the_task_resumes_a_started_handler_cancels_it():
    events: list[str] = []
    conn, transport = connection(waits_until_cancelled(events))

    def arrive_and_leave() -> None:
        conn.data_received(post("left!!"))
        conn.connection_lost(None)  # before the task took the started handler over

    await from_callback(arrive_and_leave)
    for _ in range(5):
        await asyncio.sleep(0)
    assert events == ["cancelled"]
    assert conn.task is not None and conn.task.done()
    assert transport.data == b""


async def test_a_request_behind_one_in_progress_is_not_started_early():
    release = asyncio.get_running_loop().create_future()
    order: list[bytes] = []
    conn, transport = connection(first_waits_for(release, order))
    await from_callback(conn.data_received, post("first!"))
    await from_callback(conn.data_received, post("second"))
    assert order == [b"first!"]  # the second waits for its turn in the task
    release.set_result(None)
    for _ in range(10):
        await asyncio.sleep(0)
    assert order == [b"first!", b"second"]
    await settle(conn, transport)


async def test_a_handler_that_fails_when_started_answers_500_and_keeps_the_connection():
    conn, transport = connection(waits_until_cancelled([]))

    async def broken(*_args) -> None:
        raise RuntimeError("a bug before the handler's first wait")

    conn.gateway.serve = broken  # type: ignore[method-assign]
    await from_callback(conn.data_received, post("broke!"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert transport.data.startswith(b"HTTP/1.1 500")
    assert b"internal_error" in transport.data  # OpenAI-style error body
    assert not transport.closing  # the next request on the connection is still served
    await settle(conn, transport)
