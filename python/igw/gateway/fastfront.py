"""An optional HTTP/1.1 front end on httptools' request parser (``--frontend httptools``).

Why: measured on the dev machine, aiohttp's server takes about half of the gateway's own
HTTP cost per request (~190 us of CPU with aiohttp in front, ~100 us with this protocol, same
upstream client, no pipeline). This module serves exactly what the gateway needs and no more:
the four inference paths, ``/v1/models``, ``/health``, ``/metrics``, JSON errors for the rest.

What it guarantees, like the aiohttp front end:
* a request head must arrive within ``idle_timeout`` of the connection opening or of the last
  answer (trickling bytes do not extend it); a body within ``body_timeout`` (408, closed);
* heads over 64 KiB are refused (431), bodies over ``client_max_size`` too (413, from the
  Content-Length when there is one, else while reading a chunked body); ``Expect:
  100-continue`` is answered; broken HTTP gets a JSON 400 and the connection is closed;
* requests on one connection are answered in order (pipelining), one at a time, by one task
  per connection (no task per request); a client that disconnects cancels its handler, so
  the forwarder releases the request's in-flight reservation and drops the upstream request;
* writes respect the transport's flow control (a slow reader pauses the relay).

A whole answer (head and body in one upstream read) is written by the forwarder from the
upstream connection's read callback through ``FastRequest.send_answer`` (``send_stream`` for
a stream), and the chunks of a stream that comes in pieces through ``_Stream.send`` from
the reads that bring them; always while its request is the one the connection's task is
serving, so pipelined answers keep their order; the task resumes afterwards to finish it.

An inference request that finds its connection idle is started in the read callback that
parsed it (``_Connection._start_now``): its handler runs there, with the connection's task made
current, up to its first wait (usually the request written to its replica, the wait for the
answer), and the task takes it over from there (``_resume``). Handing it to the task first cost
a loop step before the pipeline started (a future's callback, a task step, the coroutine frames
resumed: ~7 us on the c=1 trace); now the task's wake-up happens while the replica computes.
Same-run interleaved A/B (``bench/ab_gateways.py``, 6,000 turns, both orders): 2-3 us faster
non-streamed, ~5 us streamed. (An earlier attempt at this, with an older pipeline, measured
slower; the difference now is within the noise of one run, so both orders were run.) Requests
behind one in progress wait for the task as before, so answers keep their order.

Timers are lazy, because arming and cancelling a loop timer costs ~2.3 us (measured, uvloop)
and a keep-alive request used to do it twice: the head deadline moves with every answer but
its one timer stays armed, and on firing early it re-arms for what is left; the body timer is
armed only when a body is still incomplete after the bytes at hand were parsed (a request
that arrives whole, the usual case, never needs one, nor a clock read for its deadline).
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import http
import logging
import time
import types
from typing import TYPE_CHECKING, Any

import httptools
from aiohttp import web

from igw.gateway.errors import error_body, error_response
from igw.gateway.proxy import Answer

try:  # the task bookkeeping asyncio's own task steps use (present since Python 3.7)
    from asyncio.tasks import _enter_task, _leave_task
except ImportError:  # pragma: no cover - then requests start in the task, one step later
    _enter_task = _leave_task = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from igw.gateway.app import Gateway

log = logging.getLogger("igw.gateway")

MAX_HEAD_BYTES = 64 * 1024
MAX_PIPELINED = 16  # parsed requests waiting for their turn before we stop reading
_SKIP_RESPONSE_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
_date_cache: tuple[int, bytes] = (0, b"")

# Header names as clients spell them -> lower-case text. Filled as names are seen, up to a
# bound (names are the client's choice): a hit is one dict lookup instead of a decode and a
# lower() per header.
_HEADER_NAMES: dict[bytes, str] = {}
_MAX_HEADER_NAMES = 512
_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")}


def _date_header() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, f"date: {email.utils.formatdate(now, usegmt=True)}\r\n".encode())
    return _date_cache[1]


_REASONS = {status.value: status.phrase for status in http.HTTPStatus}


def _reason(status: int) -> str:
    return _REASONS.get(status, "Unknown")


# "HTTP/1.1 200 OK\r\n" per status code (three digits: at most 900 entries)
_STATUS_LINES: dict[int, str] = {}


def _head(status: int, items, *, keep_alive: bool, length: int | None) -> bytes:
    lines = []
    for name, value in items:  # a plain loop: ~2x cheaper than extending with a generator
        if name.lower() not in _SKIP_RESPONSE_HEADERS:
            lines.append(f"{name}: {value}\r\n")
    return _head_of_lines(status, "".join(lines), keep_alive=keep_alive, length=length)


def _head_of_lines(status: int, lines: str, *, keep_alive: bool, length: int | None) -> bytes:
    """The response head around header ``lines`` that carry no framing headers."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {_reason(status)}\r\n"
    framing = _CHUNKED if length is None else f"content-length: {length}\r\n"
    close = "" if keep_alive else _CLOSE
    return f"{line}{lines}{framing}{close}".encode("latin-1") + _date_header() + b"\r\n"


_CHUNKED = "transfer-encoding: chunked\r\n"
_CLOSE = "connection: close\r\n"


class FastRequest:
    """One parsed request: what the gateway's handler and forwarder need to know."""

    __slots__ = ("_conn", "body", "headers", "keep_alive", "method", "path_qs", "started")

    def __init__(
        self,
        conn: _Connection,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes,
        keep_alive: bool,
    ) -> None:
        self._conn = conn
        self.method = method
        self.path_qs = url
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        # (handler coroutine, what it awaits) when the read callback started it, or
        # (None, its response) when it finished there (``_Connection._start_now``)
        self.started: tuple[Any, Any] | None = None

    @property
    def path(self) -> str:
        url = self.path_qs
        return url if "?" not in url else url.split("?", 1)[0]

    # The forwarder gives this front end its headers as ready header lines
    # (``proxy.response_header_lines``: end-to-end ones only, "name: value\r\n" each).

    def send_answer(self, status: int, lines: str, body: bytes) -> None:
        """Write a whole answer now; the forwarder may call this from the upstream read
        callback, while this request is still the connection's current one (so in order)."""
        head = _head_of_lines(status, lines, keep_alive=self.keep_alive, length=len(body))
        self._conn.write(head + body)

    def send_stream(self, status: int, lines: str, data: bytes) -> None:
        """Write a whole chunked answer now (a stream whose every byte is in hand): head,
        ``data`` as one chunk, the last chunk; in one write, like ``send_answer``."""
        head = _head_of_lines(status, lines, keep_alive=self.keep_alive, length=None)
        tail = b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n"
        self._conn.write(head + tail)

    def stream_response(self, status: int, lines: str, *, defer_head: bool):
        return _Stream(self._conn, status, lines, defer_head=defer_head,
                       keep_alive=self.keep_alive)  # fmt: skip


class _Stream:
    """A chunked response written straight to the connection (the forwarder's SSE relay)."""

    __slots__ = ("_conn", "_head", "_sent_head", "defer_head")

    def __init__(self, conn, status, lines: str, *, defer_head: bool, keep_alive: bool) -> None:
        self._conn = conn
        self._head = _head_of_lines(status, lines, keep_alive=keep_alive, length=None)
        self._sent_head = False
        self.defer_head = defer_head

    def _take_head(self) -> bytes:
        if self._sent_head:
            return b""
        self._sent_head = True
        return self._head

    async def prepare(self, _request: Any) -> None:
        if not self.defer_head:
            self._conn.write(self._take_head())

    async def write(self, data: bytes) -> None:
        if data:
            self.send(data)
            await self._conn.drain()

    def send(self, data: bytes) -> None:
        """One chunk, without waiting for a slow client (see ``paused``, ``drain``): the
        forwarder may call it from the upstream read callback."""
        if data:
            self._conn.write(self._take_head() + b"%x\r\n" % len(data) + data + b"\r\n")

    @property
    def paused(self) -> bool:
        """The client's transport asked us to stop writing (flow control)."""
        can_write = self._conn.can_write
        return can_write is not None and not can_write.done()

    async def drain(self) -> None:
        await self._conn.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        self.end(data)

    def end(self, data: bytes = b"") -> None:
        """``write_eof`` without a coroutine (the forwarder may call it from a callback)."""
        chunk = b"%x\r\n" % len(data) + data + b"\r\n" if data else b""
        self._conn.write(self._take_head() + chunk + b"0\r\n\r\n")


class _Connection(asyncio.Protocol):
    """One client connection: parse requests, answer them in order with one task."""

    def __init__(self, front: FastFront) -> None:
        self.front = front
        self.gateway = front.gateway
        self.limits = front.gateway.limits
        self.on_read = front.gateway.poke  # busy polling's poke (None: off)
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.queue: collections.deque[FastRequest] = collections.deque()
        self.waiter: asyncio.Future | None = None
        self.task: asyncio.Task | None = None
        self.head_timer: asyncio.TimerHandle | None = None
        self.head_deadline: float | None = None  # loop time the next head must be in by
        self.body_timer: asyncio.TimerHandle | None = None
        self.can_write: asyncio.Future | None = None
        self.closed = False
        self.rejected = False
        self.reading_paused = False
        self._reset_message()

    def _reset_message(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.body_size = 0
        self.head_size = 0
        self.head_done = False  # this message's head is in: the body timer governs now

    # -- transport events ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.front.connections.add(self)
        self._arm_head_timer()
        self.task = self.loop.create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.front.connections.discard(self)
        for timer in (self.head_timer, self.body_timer):
            if timer is not None:
                timer.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client left: the handler's finally releases in-flight
        if self.can_write is not None and not self.can_write.done():
            self.can_write.set_exception(ConnectionResetError("client disconnected"))

    def data_received(self, data: bytes) -> None:
        if self.on_read is not None:
            self.on_read()
        if self.rejected:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported", "bad_request")
            return
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed HTTP request: {exc}", "bad_request")
            return
        if self.closed or self.transport is None:
            return
        if self.head_done and self.body_timer is None:
            # a head is in and its body is not complete yet: time the rest of it (the loop's
            # clock has not moved since the head was parsed, in this same callback)
            self.body_timer = self.loop.call_at(
                self.loop.time() + self.limits.body_timeout, self._body_timeout
            )

    def pause_writing(self) -> None:
        if self.can_write is None or self.can_write.done():
            self.can_write = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.can_write is not None and not self.can_write.done():
            self.can_write.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)
        if self.head_size > MAX_HEAD_BYTES:
            self._reject(414, "request line exceeds 64 KiB", "uri_too_long")
            raise httptools.HttpParserError("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_HEAD_BYTES:
            self._reject(431, "request head exceeds 64 KiB", "headers_too_large")
            raise httptools.HttpParserError("head too large")  # stop parsing this stream
        key = _HEADER_NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_HEADER_NAMES) < _MAX_HEADER_NAMES:
                _HEADER_NAMES[name] = key
        headers = self.headers
        if key in headers:
            headers[key] = f"{headers[key]}, {value.decode('latin-1')}"
        else:
            headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.head_done = True
        self.head_deadline = None  # its timer, if armed, finds nothing to do
        headers = self.headers
        length = headers.get("content-length")
        if length is not None:
            limit = self.limits.client_max_size
            if length.isdigit() and int(length) > limit:
                self._reject(413, f"request body exceeds the limit of {limit} bytes",
                             "request_too_large")  # fmt: skip
                raise httptools.HttpParserError("body too large")
        expect = headers.get("expect")
        if expect is not None and expect.lower() == "100-continue":
            self._write_quietly(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.limits.client_max_size:
            self._reject(413, f"request body exceeds the limit of "
                         f"{self.limits.client_max_size} bytes", "request_too_large")  # fmt: skip
            raise httptools.HttpParserError("body too large")
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        parser = self.parser
        method = parser.get_method()
        body = self.body
        request = FastRequest(
            self,
            _METHODS.get(method) or method.decode("latin-1"),
            self.url.decode("latin-1"),
            self.headers,
            body[0] if len(body) == 1 else b"".join(body),
            parser.should_keep_alive(),
        )
        # ready for the next message (here, not in an on_message_begin callback: one Python
        # call fewer per request; the first message's state comes from __init__)
        self._reset_message()
        waiter = self.waiter
        if waiter is not None and not self.queue and request.method == "POST":
            self._start_now(request)  # the task is idle: nothing to answer before this one
        self.queue.append(request)
        if len(self.queue) >= MAX_PIPELINED and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _start_now(self, request: FastRequest) -> None:
        """Run an inference request's handler from this read callback up to its first wait
        (usually: the request written to its replica, the wait for the answer); the
        connection's task takes it from there (``_resume``).

        Why: handing the request to the task first costs a loop step (a future's callback,
        a task step, the coroutine frames resumed) before the pipeline starts, and every
        microsecond before the upstream write is a microsecond the client waits; the task's
        wake-up now happens while the replica computes. The task is made current for the
        run, so what the handler does behaves as it does in the task (``asyncio.timeout``,
        cancellation: the task's cancel reaches the handler's wait through ``_resume``)."""
        path = request.path
        if path not in self.front.inference or _enter_task is None:
            return
        loop, task = self.loop, self.task
        try:
            _enter_task(loop, task)
        except RuntimeError:  # fed from inside a task (not the loop's read callback): as before
            return
        coro = self.gateway.serve(request, path, request.headers, request.body)
        try:
            request.started = (coro, coro.send(None))
        except StopIteration as stop:
            request.started = (None, stop.value)
        except Exception:  # the handler catches its own failures: this is a bug in it
            log.exception("fast front end: request handler failed when started")
            request.started = (None, _internal_error())
        finally:
            _leave_task(loop, task)

    # -- timers and rejections --------------------------------------------------------------
    def _arm_head_timer(self) -> None:
        self.head_deadline = deadline = self.loop.time() + self.limits.idle_timeout
        if self.head_timer is None:
            self.head_timer = self.loop.call_at(deadline, self._head_timeout)
        # else: the armed timer fires earlier than this deadline and re-arms for the rest

    def _head_timeout(self) -> None:
        self.head_timer = None
        deadline = self.head_deadline
        if deadline is None or self.closed:
            return  # a head came in since the timer was armed
        if self.loop.time() < deadline:
            self.head_timer = self.loop.call_at(deadline, self._head_timeout)
            return
        if not self.queue and not self.head_done and self.transport is not None:
            self.transport.close()  # idle keep-alive, or a head that never completed

    def _body_timeout(self) -> None:
        self.body_timer = None
        self._reject(408, f"request body not received within {self.limits.body_timeout:g}s",
                     "body_timeout")  # fmt: skip

    def _reject(self, status: int, message: str, code: str) -> None:
        """Answer an unusable request and close (the stream cannot be parsed further)."""
        if self.rejected or self.closed:
            return
        self.rejected = True
        body = error_body(status, message, code=code)
        items = [("content-type", "application/json")]
        self._write_quietly(_head(status, items, keep_alive=False, length=len(body)) + body)
        if self.transport is not None:
            self.transport.close()

    # -- writing ------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise ConnectionResetError("client disconnected")
        transport.write(data)

    def _write_quietly(self, data: bytes) -> None:
        """Write from a parser callback: a client already gone is not an error there."""
        try:
            self.write(data)
        except ConnectionResetError:
            pass

    async def drain(self) -> None:
        if self.can_write is not None and not self.can_write.done():
            await self.can_write

    def _send_answer(self, answer: Answer, keep_alive: bool) -> None:
        body = answer.body
        head = _head(answer.status, answer.headers.items(), keep_alive=keep_alive, length=len(body))
        self.write(head + body)

    def _send(self, response: web.Response, keep_alive: bool) -> None:
        body = response.body or b""
        if not isinstance(body, (bytes, bytearray)):
            body = bytes(body)  # pragma: no cover - the gateway only builds bytes bodies
        items = list(response.headers.items())
        if response.content_type and "content-type" not in {k.lower() for k, _ in items}:
            items.append(("content-type", response.content_type))
        self.write(_head(response.status, items, keep_alive=keep_alive, length=len(body)) + body)

    # -- the request loop ---------------------------------------------------------------------
    async def _serve(self) -> None:
        front = self.front
        inference = front.inference
        serve = self.gateway.serve
        try:
            while not self.closed:
                while not self.queue:
                    self.waiter = self.loop.create_future()
                    try:
                        await self.waiter
                    finally:
                        self.waiter = None
                request = self.queue.popleft()
                if self.reading_paused and len(self.queue) < MAX_PIPELINED // 2:
                    self.reading_paused = False
                    if self.transport is not None:
                        self.transport.resume_reading()
                started = request.started
                if started is not None:  # begun in the read callback (_start_now)
                    request.started = None
                    coro, response = started
                    if coro is not None:
                        response = await _resume(coro, response)
                else:
                    path = request.path
                    if path in inference and request.method == "POST":  # dispatch's usual case
                        response = await serve(request, path, request.headers, request.body)
                    else:
                        response = await front.dispatch(request)
                if response is None or type(response) is _Stream:
                    pass  # written already (from the read callback, or streamed)
                elif type(response) is Answer:
                    self._send_answer(response, request.keep_alive)
                elif isinstance(response, web.Response):  # an ABC check: ~1 us, not for None
                    self._send(response, request.keep_alive)
                if not request.keep_alive:
                    if self.transport is not None:
                        self.transport.close()
                    return
                if not self.queue and not self.head_done:
                    self._arm_head_timer()  # idle, or the next head is still arriving
        except (asyncio.CancelledError, ConnectionResetError):
            return
        except Exception:
            log.exception("fast front end: unexpected error; closing the connection")
            if self.transport is not None:
                self.transport.close()
        finally:
            for request in self.queue:  # started in the read callback, never resumed
                if request.started is not None and request.started[0] is not None:
                    _cancel(request.started[0])


@types.coroutine
def _resume(coro, awaited):
    """Await the rest of ``coro``, a coroutine already run (outside any task) up to
    yielding ``awaited``: the awaiting task waits for what ``coro`` waits for, and what the
    task is sent or thrown (a result, a cancellation) goes on to ``coro``."""
    while True:
        try:
            yield awaited
        except BaseException as exc:
            try:
                awaited = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            awaited = coro.send(None)
        except StopIteration as stop:
            return stop.value


def _cancel(coro) -> None:
    """Cancel a started handler that no task will resume (its client left first): its
    ``finally`` clauses release what it holds, as a cancelled task's would."""
    try:
        coro.throw(asyncio.CancelledError())
    except BaseException:
        return
    coro.close()  # it waited again instead of ending


def _internal_error() -> web.Response:
    return error_response(500, "internal error in the gateway", code="internal_error")


class FastFront:
    """Serves a ``Gateway`` with the httptools protocol above."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.connections: set[_Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        from igw.gateway.app import INFERENCE_PATHS

        self.inference = frozenset(INFERENCE_PATHS)
        self._gets = {
            "/health": gateway.handle_health,
            "/metrics": gateway.handle_metrics,
        }

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, backlog=1024, reuse_address=True
        )
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.close()
            await self._server.wait_closed()
            self._server = None

    async def dispatch(self, request: FastRequest):
        path, method = request.path, request.method
        gateway = self.gateway
        if path in self.inference:
            if method == "POST":
                return await gateway.serve(request, path, request.headers, request.body)
            return gateway.unknown_response(method, path)
        if path == "/v1/models" and method == "GET":
            return gateway.models_response(request.headers)
        handler = self._gets.get(path)
        if handler is not None and method == "GET":
            return await handler(None)
        return gateway.unknown_response(method, path)
