"""A lean keep-alive HTTP/1.1 client for the proxy's one job: POST a body, relay the answer.

Why not ``aiohttp.ClientSession`` on the hot path: measured on the 2-core dev machine, one
proxied request through aiohttp's client costs ~185 us of CPU (URL objects, cookie and
header merging, tracing hooks, timers, a StreamReader per response), more than the whole
aiohttp server side. This client is an ``asyncio.Protocol`` per connection with httptools'
llhttp parser (the parser uvicorn uses) doing the framing (Content-Length, chunked, EOF), one
``transport.write`` per request and no per-request allocations beyond the response object.
It is used when ``httptools`` is importable; otherwise the gateway uses aiohttp's client.

What it does (and only that): idle connections are reused per ``host:port``; a request on a
reused connection that the server had already closed (nothing received) is retried once on
a fresh connection, as every HTTP client does for stale keep-alive; reading pauses when the
client downstream is slower than the replica (``HIGH_WATER``); every read has a timeout;
TCP_NODELAY is set on every connection (small SSE writes must not wait for delayed ACKs).

A whole answer can be taken from the read callback: ``post(..., early=hook)`` calls
``hook(response)`` from the connection's ``data_received`` when the head and the complete
body came in one read (the usual non-streamed answer), before the waiting task is resumed.
The forwarder writes the answer to its client there, one loop iteration (and a task step)
sooner than the task could; the task still gets the same response object afterwards. The
hook must not raise. Likewise ``UpstreamResponse.follow(on_data)`` waits for more of a body
with ``on_data`` called from the read callback after each read, so a streamed chunk can be
relayed there (the lazy read timeout is moved on by every read that brings bytes).

The read timeout is one lazy timer per connection, not a loop timer armed and cancelled for
every wait (~2.3 us each, measured with uvloop; a request waits once for its head and once
per streamed chunk that is not already buffered): each wait sets the connection's deadline
and the future it applies to; the armed timer, when it fires, expires that future if its
deadline has passed, re-arms for a later deadline, or lapses when nothing waits.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from collections.abc import Callable, Iterable

try:
    import httptools
except ImportError:  # optional: without it the gateway uses aiohttp's client (slower)
    httptools = None

try:  # Python 3.11+
    from asyncio import timeout as _timeout
except ImportError:  # pragma: no cover - Python 3.10 (aiohttp depends on async-timeout there)
    from async_timeout import timeout as _timeout  # type: ignore[no-redef]

_FRAMING = frozenset({"content-length", "transfer-encoding"})
HIGH_WATER = 256 * 1024  # buffered response bytes before we stop reading from the replica
LOW_WATER = 64 * 1024
MAX_IDLE_PER_HOST = 256

# Header names as replicas spell them -> lower-case text, filled as names are seen, up to a
# bound: a replica sends the same few names on every answer (one lookup, no decode + lower).
_HEADER_NAMES: dict[bytes, str] = {}
_MAX_HEADER_NAMES = 256

# Called with the response when the whole answer came in the read that brought its head.
EarlyHook = Callable[["UpstreamResponse"], None]


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(asyncio.TimeoutError())


class _Deadline:
    """The read timeout of one connection: at most one loop timer, re-used across waits."""

    __slots__ = ("_at", "_loop", "_timer", "_waiting", "deadline")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._at = 0.0  # when the armed timer fires
        self._waiting: asyncio.Future | None = None
        self.deadline = 0.0

    def watch(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future, seconds: float):
        """``future`` fails with ``TimeoutError`` unless done within ``seconds``."""
        self._loop = loop
        self._waiting = future
        self.deadline = deadline = loop.time() + seconds
        timer = self._timer
        if timer is not None:
            if self._at <= deadline:
                return  # fires first, then re-arms for the rest
            timer.cancel()
        self._at = deadline
        self._timer = loop.call_at(deadline, self._fire)

    def done(self) -> None:
        """The wait is over (its timer, if armed, finds nothing to do and lapses)."""
        self._waiting = None

    def _fire(self) -> None:
        self._timer = None
        future = self._waiting
        if future is None or future.done() or self._loop is None:
            return
        if self._loop.time() < self.deadline:
            self._at = self.deadline
            self._timer = self._loop.call_at(self.deadline, self._fire)
            return
        self._waiting = None
        _expire(future)

    def cancel(self) -> None:
        self._waiting = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class UpstreamError(ConnectionError):
    """The replica could not be reached or broke the response."""


class UpstreamConnectError(UpstreamError):
    """Nothing was received from the replica: safe to try another endpoint."""


class UpstreamBrokenError(UpstreamError):
    """The replica failed after the response had started (mid-body)."""


class UpstreamTimeoutError(UpstreamError, asyncio.TimeoutError):
    """The replica stayed silent longer than the read timeout."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; carries at most one request at a time."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_closed",
        "_done",
        "_early",
        "_error",
        "_follow",
        "_framed",
        "_head",
        "_header_name",
        "_headers",
        "_informational",
        "_keep_alive",
        "_paused",
        "_pool",
        "_received",
        "_response",
        "_until_eof",
        "_waiter",
        "deadline",
        "key",
        "loop",
        "on_read",
        "parser",
        "transport",
        "writelines",
    )

    def __init__(self, key: tuple[str, int], on_read: Callable[[], None] | None = None) -> None:
        self.key = key
        self.on_read = on_read
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.writelines = None  # the transport's, when it has one (see UpstreamPool._start)
        # the connection's loop, looked up once: on Python 3.11 every get_running_loop()
        # is a getpid() system call
        self.loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._pool: UpstreamPool | None = None  # set by the pool that sends on it
        self._early: EarlyHook | None = None
        self.deadline = _Deadline()
        self._reset()

    def _reset(self) -> None:
        # a new dict per response (never cleared): an answer's headers outlive the connection's
        # next request when observers read them after the connection went back to the pool
        self._headers: dict[str, str] = {}
        self._framed = False  # a content-length or transfer-encoding header came
        self._header_name = ""
        # the task's wait for the head: resolved with ``_response`` at the end of the read
        # that completed the head, then forgotten
        self._head: asyncio.Future | None = None
        self._response: UpstreamResponse | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._follow: Callable[[], bool] | None = None  # see UpstreamResponse.follow
        self._paused = False
        self._received = False
        self._keep_alive = False
        self._until_eof = False  # body delimited by the connection closing (no length)
        self._informational = False  # a 1xx head (e.g. 103 Early Hints) precedes the real one

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.writelines = getattr(transport, "writelines", None)
        self.loop = asyncio.get_running_loop()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # not a TCP socket (tests may use others)
                pass

    def data_received(self, data: bytes) -> None:
        if self.on_read is not None:
            self.on_read()
        self._received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._head is not None and self._response is not None:
                self._answer_head()  # a head parsed before the bad bytes is still the answer
            self._fail(UpstreamBrokenError(f"invalid HTTP response from the replica: {exc}"))
            self.close()
            return
        if self._done and self._early is not None:
            # the whole answer is in and the task waiting for its head has not run yet
            # (it runs after this callback): the hook may answer the client from here
            hook, self._early = self._early, None
            if self._response is not None:
                hook(self._response)
        if self._head is not None and self._response is not None:
            self._answer_head()
        follow = self._follow
        if follow is not None and (self._chunks or self._done):
            if follow():  # the follower needs its task back
                self._follow = None
                self._wake()
            elif self._waiter is not None and self._pool is not None:
                # bytes came: the read timeout counts the silence from now
                self.deadline.watch(self.loop, self._waiter, self._pool.read_timeout)  # type: ignore[arg-type]

    def _answer_head(self) -> None:
        """Resolve the task's wait for the head (after the hook: scheduling the task's
        wake-up is not on the way to the client's bytes)."""
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_result(self._response)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.deadline.cancel()
        if self._until_eof and exc is None and not self._done:
            self._done = True  # HTTP/1.0-style body: the close is its end
            self._keep_alive = False
            self._wake()
        if not self._done:
            if not self._received:
                self._fail(UpstreamConnectError(f"connection closed by the replica ({exc!r})"))
            else:
                self._fail(UpstreamBrokenError(f"connection to the replica lost ({exc!r})"))

    def pause_writing(self) -> None:  # request bodies are written in one go
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks ----------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        key = _HEADER_NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_HEADER_NAMES) < _MAX_HEADER_NAMES:
                _HEADER_NAMES[name] = key
        if key in _FRAMING:
            self._framed = True
        self._headers[key] = value.decode("latin-1")  # a repeated header: the last one wins

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # informational: wait for the final head
            self._informational = True
            self._headers = {}
            self._framed = False
            return
        # llhttp forgets keep-alive once the message completes: ask while it knows.
        self._keep_alive = self.parser.should_keep_alive()
        self._until_eof = not self._framed and status not in (204, 304)
        head = self._head
        if head is not None and not head.done() and self._pool is not None:
            # the wait for it ends when this read has been parsed (data_received)
            self._response = UpstreamResponse(self._pool, self, status)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        if self._follow is None:  # else the follower sees it after this read (data_received)
            self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self._done = True
        if self._follow is None:
            self._wake()

    # -- helpers ----------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        head = self._head
        if head is not None and not head.done():
            head.set_exception(error)
        self._wake()

    @property
    def reusable(self) -> bool:
        return self._done and not self._closed and self._keep_alive

    def close(self) -> None:
        self._closed = True
        self.deadline.cancel()
        if self.transport is not None:
            self.transport.close()


class UpstreamResponse:
    """Status, headers and the body of one upstream answer, read chunk by chunk."""

    __slots__ = ("_conn", "_pool", "_read_timeout", "headers", "loop", "status")

    def __init__(self, pool: UpstreamPool, conn: _Connection, status: int) -> None:
        self._pool = pool
        self._conn = conn
        self._read_timeout = pool.read_timeout
        self.status = status
        self.headers = conn._headers  # lower-cased names; this response's own dict
        self.loop = conn.loop  # the running loop, for callers that schedule work after it

    @property
    def header_items(self) -> list[tuple[str, str]]:
        return list(self.headers.items())

    @property
    def complete(self) -> bool:
        conn = self._conn
        return conn._done and not conn._chunks

    @property
    def has_data(self) -> bool:
        """Body bytes are already buffered (they came with the head)."""
        return bool(self._conn._chunks)

    def chunk_now(self) -> bytes | None:
        """The next bytes of the body if some are buffered (b"" at its end), taken without
        a coroutine; None when the caller must wait (``readany``, which also raises what
        broke the body)."""
        conn = self._conn
        chunks = conn._chunks
        if not chunks:
            return b"" if conn._done else None
        chunk = chunks.popleft()
        conn._buffered -= len(chunk)
        if conn._paused and conn._buffered < LOW_WATER and conn.transport is not None:
            conn._paused = False
            conn.transport.resume_reading()
        return chunk

    async def readany(self) -> bytes:
        """The next bytes of the body, b"" at its end; ``UpstreamError`` if it broke."""
        conn = self._conn
        while not conn._chunks:
            if conn._done:
                return b""
            if conn._error is not None:
                raise conn._error
            await self._wait_for_bytes(conn)
        return self.chunk_now()  # type: ignore[return-value]  # a chunk is buffered

    async def _wait_for_bytes(self, conn: _Connection) -> None:
        """Until the read callback wakes us (bytes, the end, or a failure), at most
        ``read_timeout`` without any bytes."""
        loop = conn.loop or asyncio.get_running_loop()
        waiter = conn._waiter = loop.create_future()
        conn.deadline.watch(loop, waiter, self._read_timeout)
        try:
            await waiter
        except asyncio.TimeoutError:
            raise UpstreamTimeoutError(
                f"no data from the replica for {self._read_timeout:g}s"
            ) from None
        finally:
            conn.deadline.done()
            conn._waiter = None

    async def follow(self, on_data: Callable[[], bool]) -> None:
        """Wait for more of the body, calling ``on_data()`` from the read callback after
        each read that brought some (or its end), so the caller relays it there and then;
        ``on_data`` returns True when it needs the waiting task back. Returns then, or at
        once when some of the body is buffered already (or it has ended); raises what broke
        the body, or ``UpstreamTimeoutError`` after ``read_timeout`` without any bytes.
        ``on_data`` must not raise."""
        conn = self._conn
        if conn._chunks or conn._done:
            return
        if conn._error is not None:
            raise conn._error
        conn._follow = on_data
        try:
            await self._wait_for_bytes(conn)
        finally:
            conn._follow = None
        if conn._error is not None and not conn._chunks and not conn._done:
            raise conn._error

    def whole_body(self) -> bytes | None:
        """The whole body if all of it has come already (the usual non-streamed answer),
        taken without a wait or a coroutine; None while some of it is still to come."""
        conn = self._conn
        if not conn._done:
            return None
        chunks = conn._chunks
        if len(chunks) == 1:
            data = chunks.popleft()
        else:
            data = b"".join(chunks)
            chunks.clear()
        conn._buffered = 0
        if conn._paused and conn.transport is not None:
            conn._paused = False
            conn.transport.resume_reading()
        return data

    async def read(self) -> bytes:
        """The whole body."""
        data = self.whole_body()
        if data is not None:
            return data
        parts = []
        while True:
            chunk = await self.readany()
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)

    def release(self) -> None:
        """Done with it: the connection goes back to the pool if the body was read fully."""
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if conn is not None:
            self._pool._finished(conn)

    def close(self) -> None:
        """Abandon the response (unread or broken): the connection is closed."""
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if conn is not None:
            conn.close()


def make_pool(
    *,
    connect_timeout: float,
    read_timeout: float,
    lean: bool | None = None,
    on_read: Callable[[], None] | None = None,
):
    """The fast client when httptools is importable (or ``lean`` forces a choice).
    ``on_read`` is called on every read from a replica (the lean client only: aiohttp's
    reads are its own)."""
    if lean is None:
        lean = httptools is not None
    if lean:
        return UpstreamPool(
            connect_timeout=connect_timeout, read_timeout=read_timeout, on_read=on_read
        )
    return AiohttpPool(connect_timeout=connect_timeout, read_timeout=read_timeout)


class UpstreamPool:
    """Keep-alive connections to the replicas, keyed by host and port."""

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 600.0,
        on_read: Callable[[], None] | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.on_read = on_read  # igw.busypoll's poke, when busy polling is on
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._closed = False

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with _timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: _Connection(key, self.on_read), *key)
        except asyncio.TimeoutError:
            raise UpstreamConnectError(
                f"connect to {key[0]}:{key[1]} timed out after {self.connect_timeout:g}s"
            ) from None
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect to {key[0]}:{key[1]}: {exc}") from None
        return conn

    async def post(
        self,
        host: str,
        port: int,
        path: str,
        headers: Iterable[tuple[str, str]] | str,
        body: bytes,
        early: EarlyHook | None = None,
        sent: Callable[[], None] | None = None,
    ) -> UpstreamResponse:
        """Send the request and wait for the response head (status and headers).

        ``headers``: name-value pairs, or the same as HTTP/1.1 header lines ("name:
        value\\r\\n" each, as ``proxy.upstream_header_lines`` makes them).

        ``sent()`` is called right after the request is written, before the wait: work the
        sending did not need runs while the replica computes (``Request.later``). When a new
        connection must be opened it is called before that wait instead: other requests are
        scheduled meanwhile and must see this one's bookkeeping (its prefix blocks).

        ``early(response)`` is called from the read callback if the whole answer arrives
        in one read (see the module docstring)."""
        key = (host, port)
        if type(headers) is not str:
            headers = "".join([f"{name}: {value}\r\n" for name, value in headers])
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\n{headers}"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        idle = self._idle.get(key)
        while True:
            fresh = not idle
            if fresh and sent is not None:
                sent()  # before waiting for a connection: other requests run meanwhile
            conn = await self._connect(key) if fresh else idle.pop()  # type: ignore[union-attr]
            if not fresh and conn._closed:
                continue
            try:
                answered = self._start(conn, head, body, early)
            except UpstreamConnectError:
                if fresh:
                    raise
                continue  # the server closed it while idle: the next one / a new one
            break
        if sent is not None:
            sent()
        # the wait for the head, in this frame (a coroutine fewer per request)
        loop = conn.loop
        conn.deadline.watch(loop, answered, self.read_timeout)  # type: ignore[arg-type]
        try:
            response = await answered
        except asyncio.TimeoutError:
            conn.close()
            raise UpstreamTimeoutError(
                f"no response head from the replica within {self.read_timeout:g}s"
            ) from None
        except BaseException:
            conn.close()
            raise
        finally:
            conn.deadline.done()
            conn._early = None  # from here on the task reads the answer
        return response

    def _start(
        self, conn: _Connection, head: bytes, body: bytes, early: EarlyHook | None = None
    ) -> asyncio.Future:
        """Write the request on ``conn``; returns the future of its response head.

        The write comes first and the connection's per-response state is reset after it:
        no byte of the answer can be read before this callback returns to the loop (a
        protocol hears its transport only from the loop; a failed write reports the lost
        connection from the loop too), and every step before the write is time the request
        waits for (``Request.later``)."""
        transport = conn.transport
        if conn._closed or transport is None or transport.is_closing():
            raise UpstreamConnectError("the idle connection was closed")
        writelines = conn.writelines
        if writelines is not None and body:
            # head and body as two buffers: no copy of the (16 KB+) body into a joined one;
            # uvloop sends both in one writev (measured: ~3 us less CPU per 16 KB request)
            writelines((head, body))
        else:
            transport.write(head + body)
        conn._reset()
        conn._pool = self
        conn._early = early
        loop = conn.loop or asyncio.get_running_loop()
        conn.loop = loop
        answered = conn._head = loop.create_future()  # the response head (UpstreamResponse)
        return answered

    def _finished(self, conn: _Connection) -> None:
        if self._closed or not conn.reusable:
            conn.close()
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= MAX_IDLE_PER_HOST:
            conn.close()
        else:
            idle.append(conn)

    async def close(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


# ----------------------------------------------------------------- aiohttp fallback


class AiohttpPool:
    """The same interface over ``aiohttp.ClientSession`` (used when httptools is missing)."""

    def __init__(self, *, connect_timeout: float = 5.0, read_timeout: float = 600.0) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self.read_timeout = read_timeout
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._session = None

    def _get_session(self):
        if self._session is None or self._session.closed:
            aiohttp = self._aiohttp
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None),
                timeout=self._timeout,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def post(
        self,
        host: str,
        port: int,
        path: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        early: EarlyHook | None = None,  # aiohttp gives no read callback: never called
        sent: Callable[[], None] | None = None,  # called before the request: aiohttp sends it
    ):
        if sent is not None:
            sent()
        aiohttp = self._aiohttp
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}{path}"
        try:
            response = await self._get_session().post(url, data=body, headers=list(headers))
        except asyncio.TimeoutError:
            raise UpstreamTimeoutError(f"no response head from {host}:{port} in time") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise UpstreamConnectError(f"cannot reach {host}:{port}: {exc!r}") from None
        return _AiohttpResponse(response, aiohttp)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class _AiohttpResponse:
    __slots__ = ("_aiohttp", "_response", "header_items", "headers", "loop", "status")

    def __init__(self, response, aiohttp) -> None:
        self._response = response
        self._aiohttp = aiohttp
        self.loop = None  # callers look the running loop up
        self.status = response.status
        self.header_items = [(k.lower(), v) for k, v in response.headers.items()]
        self.headers = dict(self.header_items)

    @property
    def complete(self) -> bool:
        return self._response.content.is_eof()

    @property
    def has_data(self) -> bool:
        return False  # aiohttp exposes no buffered size: send the head at once

    async def readany(self) -> bytes:
        aiohttp = self._aiohttp
        try:
            return await self._response.content.readany()
        except asyncio.TimeoutError:
            raise UpstreamTimeoutError("the replica stopped sending (read timeout)") from None
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise UpstreamBrokenError(f"connection to the replica lost ({exc!r})") from None

    def whole_body(self) -> bytes | None:
        return None  # aiohttp does not say: read() waits for it

    def chunk_now(self) -> bytes | None:
        return None  # readany() then

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()
