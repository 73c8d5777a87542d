"""Forward a scheduled request to its replica and relay the answer, streaming chunk by chunk.

Rules (issue 5, item 2):
* The scheduler ranks up to k endpoints. A failure before the replica sent any response
  (connection refused or reset, a keep-alive connection closed under us, a 5xx status) tries
  the next ranked endpoint: the client has received nothing yet, so nothing is duplicated.
* Once response bytes have gone to the client nothing is retried. A stream that breaks
  mid-way (connection lost, read timeout, or an OpenAI stream ending without ``[DONE]``)
  ends with one SSE error event, ``data: {"error": {...}}``, and the request counts as failed.
* Every attempt that failed is reported to the endpoint's pool (outlier detection); the
  served attempt is reported by the pipeline's account stage at ``finish``.
* Between the replica's bytes and the client's only what may change the bytes runs
  (``Pipeline.relay_chunk``: guard.out, the reverse model rewrite, third-party stages); the
  observers (usage, accounting) run once the bytes are handed to the client socket, and the
  connection goes back to the pool after the answer is written, with ``finish``.
* With the httptools front end a whole answer that came in one read (head and body) is
  written from the upstream connection's read callback (``_EarlyAnswer``), not by the task
  that waits for it a loop round later; the task then only returns the connection and
  finishes. Measured at c=1 over sockets: epoll_pwait calls per request from ~3.6 to ~2.1
  (the minimal proxy's count), upstream byte -> client write ~37 -> ~29 us (trace medians).
  A stream that comes in pieces is relayed the same way while the task waits: each read
  by the callback that brought it (``_StreamRelay``); the task acts only at the end, when
  the client is slow (flow control) or the replica failed (~12 -> ~8 us CPU per chunk).

Upstream connections are kept alive and reused (``igw.gateway.upstream``: a lean httptools
client, or aiohttp's when httptools is missing), with TCP_NODELAY on every connection; bytes
are relayed as they come (no decompression) and ``accept-encoding: identity`` is asked
upstream so usage parsing sees plain text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from igw.gateway.errors import error_response, sse_error_event
from igw.gateway.upstream import (
    UpstreamBrokenError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamTimeoutError,
    make_pool,
)
from igw.pipeline import RESPONSE_BLOCKED_ATTR, Pipeline, Request, RequestKind

if TYPE_CHECKING:
    from igw.datastore import Endpoint

log = logging.getLogger("igw.gateway")

ENDPOINT_HEADER = "x-igw-endpoint"
REQUEST_ID_HEADER = "x-request-id"
EVENT_STREAM = "text/event-stream"

# Headers that describe one hop, not the message (RFC 9110 7.6.1), plus ones we set.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
        "expect",
    }
)
_RESPONSE_SKIP = _HOP_BY_HOP | {"date", "server"}  # aiohttp writes its own
# A replica failing the request as a whole (500 included: vLLM answers bad input with 4xx)
# before sending anything is retried on the next ranked endpoint, like Envoy's retry_on 5xx.
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
# OpenAI streams of these kinds end with "data: [DONE]"; without it the stream was cut.
# (a tuple: ``in`` finds an enum member by identity; a set would call Enum.__hash__, Python)
_DONE_KINDS = (RequestKind.COMPLETIONS, RequestKind.CHAT)
_DONE_MARK = b"[DONE]"
MAX_CACHED_TARGETS = 4096  # endpoint address -> (host, port), bounded like the pools

FailureReporter = Callable[["Endpoint"], None]


_UPSTREAM_SKIP = _HOP_BY_HOP | {REQUEST_ID_HEADER}  # the request id is ours to send


def upstream_headers(headers: Mapping[str, str], request_id: str) -> list[tuple[str, str]]:
    """The client's end-to-end headers (names lower-cased), plus the request id."""
    out = [(name, value) for name, value in headers.items() if name not in _UPSTREAM_SKIP]
    out.append((REQUEST_ID_HEADER, request_id))
    out.append(("accept-encoding", "identity"))
    return out


def upstream_header_lines(headers: Mapping[str, str], request_id: str) -> str:
    """``upstream_headers`` as HTTP/1.1 header lines, the form the upstream client writes
    (one pass and one string instead of a list of pairs formatted again there)."""
    lines = [
        f"{name}: {value}\r\n" for name, value in headers.items() if name not in _UPSTREAM_SKIP
    ]
    lines.append(f"{REQUEST_ID_HEADER}: {request_id}\r\naccept-encoding: identity\r\n")
    return "".join(lines)


def response_headers(items: Iterable[tuple[str, str]], address: str) -> dict[str, str]:
    """The replica's end-to-end headers (names lower-cased) for the client, plus ours."""
    out = {name: value for name, value in items if name not in _RESPONSE_SKIP}
    out[ENDPOINT_HEADER] = address
    return out


def response_header_lines(headers: Mapping[str, str], address: str) -> str:
    """``response_headers`` as HTTP/1.1 header lines, for a front end that writes its own
    head (the httptools one): one pass over the replica's headers, no dict in between."""
    lines = [
        f"{name}: {value}\r\n" for name, value in headers.items() if name not in _RESPONSE_SKIP
    ]
    lines.append(f"{ENDPOINT_HEADER}: {address}\r\n")
    return "".join(lines)


class Answer:
    """A whole (non-streamed) response from a replica, for the front end to write: the
    httptools front end writes it straight to the socket, the aiohttp one wraps it in a
    ``web.Response`` (building that object on every request costs more than writing it)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def to_aiohttp(self) -> web.Response:
        return web.Response(status=self.status, body=self.body, headers=self.headers)


def _read_problem(request: Request, exc: Exception) -> str:
    """What went wrong reading a relayed stream, as logged and sent in its error event."""
    if isinstance(exc, UpstreamTimeoutError):
        return f"upstream {request.served_endpoint} stopped sending (read timeout)"
    return f"upstream {request.served_endpoint} broke the stream: {exc}"


class _EarlyAnswer:
    """Writes a whole answer to the client from the upstream read callback.

    Why: the task waiting for the replica's head resumes one loop iteration after the
    answer came (another poll, a task step, four coroutine frames) before it can write;
    writing from the callback that parsed the answer is what the minimal proxy does. An
    answer is whole when its head and all of its body came in one read: a non-streamed one
    usually, a short stream often. A status the forwarder retries on the next endpoint is
    left to the task untouched. It does what the task would have done up to the write, in
    the same order, and a failure there is raised by the task as if it had failed itself.
    """

    __slots__ = (
        "endpoint", "error", "failed", "forwarder", "http_request", "last", "request", "taken",
    )  # fmt: skip

    def __init__(self, forwarder: Forwarder, http_request, request: Request) -> None:
        self.forwarder = forwarder
        self.http_request = http_request  # the httptools front end's (send_answer, send_stream)
        self.request = request
        self.endpoint = ""  # the address tried now, and whether it is the last candidate
        self.last = True
        self.taken = False
        self.failed = False  # a stream that ended without [DONE]
        self.error: Exception | None = None

    def __call__(self, upstream) -> None:
        status = upstream.status
        if status in _RETRY_STATUSES and not self.last:
            return  # the forwarder tries the next endpoint
        self.taken = True
        request = self.request
        pipeline = self.forwarder.pipeline
        upstream_headers = upstream.headers
        try:
            request.served_endpoint = endpoint = self.endpoint
            pipeline.relay_started(request, status, upstream_headers)
            headers = response_header_lines(upstream_headers, endpoint)
            body = upstream.whole_body()
            if EVENT_STREAM in upstream_headers.get("content-type", ""):
                self.failed = self.forwarder._whole_stream(
                    self.http_request, request, status, headers, body
                )
            else:
                body = pipeline.relay_chunk(request, body, True)
                self.http_request.send_answer(status, headers, body)
        except Exception as exc:  # the task raises it (a client gone: ConnectionResetError)
            self.error = exc


class _StreamRelay:
    """One streamed answer being copied to the httptools front end's chunked response, by
    the task while bytes are buffered and by the upstream read callback while the task
    waits (``Forwarder._pump_following``): a chunk goes out in the callback that read it,
    not a loop round later. ``step`` is ``_pump``'s loop body without its waits."""

    __slots__ = (
        "blocked", "ended", "error", "final", "forwarder", "problem", "request", "response",
        "status", "tail", "upstream",
    )  # fmt: skip

    def __init__(self, forwarder: Forwarder, request: Request, upstream, status, response):
        self.forwarder = forwarder
        self.request = request
        self.upstream = upstream
        self.status = status
        self.response = response  # fastfront's _Stream: send, end, paused, drain
        self.tail = b""  # the last bytes seen, for the [DONE] check
        self.final = b""  # the bytes that go out with the end of the response
        self.problem: str | None = None
        self.blocked = False
        self.ended = False  # the end of the response is written
        self.error: Exception | None = None  # raised in the callback, for the task

    def take(self, chunk: bytes) -> bytes | None:
        """The bytes to send for ``chunk`` (what may change them has run), or None when it
        completes the upstream stream: then they are kept to go out with the end."""
        self.tail = chunk[-16:] if len(chunk) >= 16 else (self.tail + chunk)[-16:]
        out = self.forwarder.pipeline.relay_chunk(self.request, chunk, False)
        if self.upstream.complete:
            self.final = out  # goes out with the end of the response; observed at finish
            return None
        return out

    def sent(self) -> bool:
        """After the client has a chunk: the observers (usage, accounting) see it. True when
        policy (guard.out) ended the stream: stop reading; the unread connection is closed
        (forward's finally), which cancels the replica's generation instead of computing
        tokens nobody will see."""
        self.forwarder.pipeline.observe(self.request)
        if RESPONSE_BLOCKED_ATTR in self.request.attrs:
            self.blocked = True
        return self.blocked

    def step(self) -> bool | None:
        """Relay what is buffered: True at the end of the stream (or ended by policy),
        False when more must be waited for, None when the client's writes are paused."""
        upstream = self.upstream
        response = self.response
        while True:
            chunk = upstream.chunk_now()
            if chunk is None:
                return False
            if not chunk:
                return True
            out = self.take(chunk)
            if out is None:
                return True
            if out:
                response.send(out)
            if self.sent():
                return True
            if response.paused:
                return None

    def end(self) -> None:
        """Write the end of the response (with the [DONE] check and any error event)."""
        self.final, self.problem = self.forwarder._stream_end(
            self.request, self.status, self.tail, self.final, self.problem, self.blocked
        )
        self.response.end(self.final)
        self.ended = True

    def on_data(self) -> bool:
        """From the upstream read callback: relay what came; True when the task must take
        over (the stream ended and its end is written, the client is paused, a failure)."""
        try:
            state = self.step()
            if state is False:
                return False
            if state is True:
                self.end()
        except Exception as exc:  # the task raises it (a client gone: ConnectionResetError)
            self.error = exc
        return True


class _HeadWithFirstChunk(web.StreamResponse):
    """A stream whose head is written together with its first chunk (as ``web.Response``
    does), used when that chunk is already in hand: no head-only segment."""

    _send_headers_immediately = False


class Forwarder:
    """Sends a scheduled ``Request`` upstream and writes the answer to the client."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 600.0,
        report_failure: FailureReporter | None = None,
        max_attempts: int = 3,
        lean: bool | None = None,
        on_read: Callable[[], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.upstream = make_pool(
            connect_timeout=connect_timeout, read_timeout=read_timeout, lean=lean, on_read=on_read
        )
        self.lean = isinstance(self.upstream, UpstreamPool)
        # the form the pool writes: the lean client takes ready header lines, aiohttp pairs
        self._headers_for_upstream = upstream_header_lines if self.lean else upstream_headers
        self.report_failure = report_failure
        self.max_attempts = max(1, max_attempts)
        # "ip:port" -> (host, port): Endpoint.host / .port split the address on every call
        self._targets: dict[str, tuple[str, int]] = {}

    async def close(self) -> None:
        await self.upstream.close()

    def _after(self, request: Request, failed: bool, upstream) -> None:
        """Right after the answer went to the client: the upstream connection goes back to
        the keep-alive pool (or is closed), the queued observers run, then ``finish``."""
        if upstream is not None:
            if not failed and upstream.complete:
                upstream.release()
            else:
                upstream.close()  # unread or broken: never reuse the connection
        self.pipeline.finish(request, failed=failed)

    async def forward(
        self, http_request: web.BaseRequest, request: Request
    ) -> web.StreamResponse | Answer | None:
        """Relay ``request`` to ``request.decision.endpoints``; ``finish`` always follows.

        Returns the streamed response already written, None when a whole answer was written
        with the front end's ``send_answer`` (the httptools one has it), an ``Answer`` to
        write, or an error ``web.Response``. Only the response stages that may change the
        bytes run before the answer goes out; the observers (usage, accounting) run after
        it, at ``finish``: at once when the answer is already written, else in the loop's
        next round (after the front end wrote what this returns)."""
        upstream = None
        failed = False
        written = False  # the client has the answer: what follows needs no loop round
        pipeline = self.pipeline
        send = getattr(http_request, "send_answer", None)
        early = _EarlyAnswer(self, http_request, request) if send is not None else None
        try:
            upstream, endpoint = await self._connect(http_request, request, early)
            if upstream is None:
                failed = True
                return error_response(
                    502,
                    f"no replica could be reached for model {request.target_model!r} "
                    f"(tried {endpoint})",
                    code="upstream_unreachable",
                )
            if early is not None and early.taken:  # written from the read callback
                if early.error is not None:
                    raise early.error
                failed = early.failed
                written = True
                return None
            request.served_endpoint = endpoint
            status = upstream.status
            upstream_headers = upstream.headers
            pipeline.relay_started(request, status, upstream_headers)
            if send is not None:  # the httptools front end: header lines
                headers = response_header_lines(upstream_headers, endpoint)
            else:
                headers = response_headers(upstream_headers.items(), endpoint)
            if EVENT_STREAM in upstream_headers.get("content-type", ""):
                response, failed = await self._relay_stream(
                    http_request, request, upstream, status, headers
                )
                written = True
                return response
            data = upstream.whole_body()  # the usual non-streamed answer: here already
            if data is None:
                data = await upstream.read()
            body = pipeline.relay_chunk(request, data, True)
            if send is None:
                return Answer(status, headers, body)
            send(status, headers, body)
            written = True
            return None
        except UpstreamError as exc:
            # Failed while reading a non-streamed body: nothing was sent to the client yet.
            failed = True
            return error_response(502, f"upstream {request.served_endpoint} failed: {exc}")
        finally:
            # Returning the connection, the observers and the account stage (metrics,
            # release, outlier report) run once the answer is with the socket: off the
            # latency path, still once. An answer this returns is written by the front end
            # after it: then they wait for the loop's next round. (The connection knows its
            # loop: on Python 3.11 each get_running_loop() is a getpid() system call.)
            if written:
                self._after(request, failed, upstream)
            else:
                loop = upstream.loop if upstream is not None else None
                (loop or asyncio.get_running_loop()).call_soon(
                    self._after, request, failed, upstream
                )

    async def _connect(
        self, http_request: web.BaseRequest, request: Request, early: _EarlyAnswer | None = None
    ):
        """Open the upstream response on the first ranked endpoint that answers (``early``
        may take a whole answer from the read callback; it is told which attempt this is)."""
        decision = request.decision
        assert decision is not None, "forward() needs a scheduled request"
        headers = self._headers_for_upstream(request.headers, request.request_id)
        body = request.upstream_body
        path = http_request.path_qs
        candidates = decision.endpoints
        if len(candidates) > self.max_attempts:
            candidates = candidates[: self.max_attempts]
        last = len(candidates) - 1
        for index, endpoint in enumerate(candidates):
            host, port = self._target(endpoint)
            if early is not None:
                early.endpoint = endpoint.address
                early.last = index == last
            try:
                upstream = await self.upstream.post(
                    host, port, path, headers, body, early, request.sent
                )
            except (UpstreamConnectError, UpstreamTimeoutError) as exc:
                log.warning(
                    "request %s: %s failed before any response (%s); %s",
                    request.request_id, endpoint.address, exc,
                    "trying next endpoint" if index < last else "giving up",
                )  # fmt: skip
                self._report(endpoint)
                continue
            if upstream.status in _RETRY_STATUSES and index < last:
                log.warning(
                    "request %s: %s answered %d; trying next endpoint",
                    request.request_id, endpoint.address, upstream.status,
                )  # fmt: skip
                upstream.close()
                self._report(endpoint)
                continue
            return upstream, endpoint.address
        return None, ", ".join([endpoint.address for endpoint in candidates])  # all tried

    def _target(self, endpoint: Endpoint) -> tuple[str, int]:
        target = self._targets.get(endpoint.address)
        if target is None:
            if len(self._targets) >= MAX_CACHED_TARGETS:
                self._targets.clear()
            target = self._targets[endpoint.address] = (endpoint.host, endpoint.port)
        return target

    def _report(self, endpoint: Endpoint) -> None:
        if self.report_failure is not None:
            self.report_failure(endpoint)

    async def _relay_stream(self, http_request, request, upstream, status, headers):
        """Pass SSE chunks through as they arrive; returns (response, failed).

        Fewer segments, fewer wake-ups of the client: when the replica's first bytes came
        with its head, our head goes out with them; the chunk that completes the upstream
        stream goes out together with the end of the chunked response. A chunk already
        buffered is taken without a coroutine (``chunk_now``); the observers (usage,
        accounting) see each chunk once the client has it.
        """
        make = getattr(http_request, "stream_response", None)  # the httptools front end
        if make is not None:
            response = make(status, headers, defer_head=upstream.has_data)
        else:
            factory = _HeadWithFirstChunk if upstream.has_data else web.StreamResponse
            response = factory(status=status, headers=headers)
        try:
            if not getattr(response, "defer_head", False):  # else prepare() has nothing to do
                await response.prepare(http_request)
            if hasattr(response, "send") and hasattr(upstream, "follow"):
                problem = await self._pump_following(request, upstream, status, response)
            else:
                problem = await self._pump(request, upstream, status, response)
        except ConnectionResetError:
            # The client left mid-stream: not the replica's fault. The caller drops the
            # upstream request; aiohttp ignores the rest of this response.
            log.debug("request %s: client disconnected mid-stream", request.request_id)
            return response, False
        return response, problem is not None

    async def _pump(self, request, upstream, status, response) -> str | None:
        """Copy the stream (the aiohttp front end or client: writes are awaited); returns
        what went wrong upstream, or None. The per-chunk rules are ``_StreamRelay``'s."""
        relay = _StreamRelay(self, request, upstream, status, response)
        while True:
            chunk = upstream.chunk_now()
            if chunk is None:  # nothing buffered: wait for the replica
                try:
                    chunk = await upstream.readany()
                except (UpstreamBrokenError, UpstreamTimeoutError) as exc:
                    relay.problem = _read_problem(request, exc)
                    break
            if not chunk:
                break
            out = relay.take(chunk)
            if out is None:
                break
            if out:
                await response.write(out)
            if relay.sent():
                break
        final, problem = self._stream_end(
            request, status, relay.tail, relay.final, relay.problem, relay.blocked
        )
        await response.write_eof(final)
        return problem

    async def _pump_following(self, request, upstream, status, response) -> str | None:
        """``_pump`` for the httptools front end and the lean client: while the task waits
        for the replica, each chunk is relayed by the read callback that brought it
        (``_StreamRelay.on_data``), the end of the stream too; the task is woken when the
        stream has ended, the client is slow (flow control: it awaits the drain) or the
        replica failed. Same bytes, order, observers and error event as ``_pump``."""
        relay = _StreamRelay(self, request, upstream, status, response)
        while True:
            state = relay.step()
            if state is True:
                break
            if state is None or response.paused:  # the client reads slower than we send
                await response.drain()  # (woken by the callback for it, or paused here)
                continue
            try:
                await upstream.follow(relay.on_data)
            except (UpstreamBrokenError, UpstreamTimeoutError) as exc:
                relay.problem = _read_problem(request, exc)
                break
            if relay.error is not None:
                raise relay.error  # as if the task had failed there (a client gone, a bug)
            if relay.ended:
                return relay.problem
        relay.end()
        return relay.problem

    def _stream_end(self, request, status, tail, final, problem=None, blocked=False):
        """The last bytes of a relayed stream (``final`` and what the stages add at its end,
        an error event if it broke or ended without ``[DONE]``) and what went wrong."""
        if problem is None and not blocked and status == 200 and request.kind in _DONE_KINDS:
            if _DONE_MARK not in tail:
                problem = f"upstream {request.served_endpoint} ended the stream without [DONE]"
        final += self.pipeline.relay_chunk(request, b"", True)
        if problem is not None:
            log.warning("request %s: %s", request.request_id, problem)
            final += sse_error_event(problem)
        return final, problem

    def _whole_stream(self, http_request, request, status, headers, body: bytes) -> bool:
        """A stream whose every byte is in hand, relayed at once as ``_pump`` would relay it
        (its chunks as one, which SSE readers cannot tell apart); returns whether it failed.
        A client gone is not the replica's failure (as in ``_relay_stream``)."""
        final = self.pipeline.relay_chunk(request, body, False) if body else b""
        blocked = RESPONSE_BLOCKED_ATTR in request.attrs  # guard.out ended it: no [DONE] check
        final, problem = self._stream_end(request, status, body[-16:], final, None, blocked)
        try:
            http_request.send_stream(status, headers, final)
        except ConnectionResetError:
            log.debug("request %s: client disconnected before the stream", request.request_id)
            return False
        return problem is not None
