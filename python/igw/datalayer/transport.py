"""How a scraper fetches its endpoint's metrics page: one object per endpoint, two kinds.

``AiohttpFetch`` uses the data layer's shared ``aiohttp.ClientSession`` (keep-alive pool).
``LeanFetch`` keeps ONE persistent HTTP/1.1 connection per endpoint as an
``asyncio.Protocol`` with httptools' llhttp parser (the parser uvicorn uses) doing the
framing: Content-Length, chunked and close-delimited bodies. A scraper sends one GET at a
time, so a connection per endpoint is all the pooling it needs.

Why two: measured on the 2-core dev machine, a scrape through aiohttp's client costs about
200 us of CPU (URL and header objects, cookie jar, tracing hooks, a StreamReader per
response), while the same GET over a plain protocol costs about 120 us; at 100 endpoints
every 50 ms that is the difference between ~0.45 and ~0.25 of a core
(``bench/test_datalayer_bench.py`` measures both). ``LeanFetch`` is used when httptools is
importable; aiohttp remains the fallback and serves the rarer probes and model listings.

Both raise ``FetchError`` with a kind (timeout, connect, transport, too_big) and a message
that names the URL; neither ever raises anything else for network trouble.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl as ssl_module
import zlib
from collections.abc import Callable

import aiohttp
import yarl

try:
    import httptools
except ImportError:  # optional; the aiohttp fetcher is used without it
    httptools = None

try:  # Python 3.11+
    from asyncio import timeout as _timeout
except ImportError:  # pragma: no cover - Python 3.10 (aiohttp depends on async-timeout there)
    from async_timeout import timeout as _timeout  # type: ignore[no-redef]

TIMEOUT = "timeout"
CONNECT = "connect"
TRANSPORT = "transport"
TOO_BIG = "too_big"
STALE = "stale"  # a kept-alive connection the server had closed: reconnect, not a failure

HAVE_HTTPTOOLS = httptools is not None


class FetchError(Exception):
    """A page could not be fetched; ``kind`` says how (transport kinds mark the endpoint as
    possibly down, ``too_big`` does not)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@functools.lru_cache(maxsize=1)
def _insecure_context() -> ssl_module.SSLContext:
    # Model servers behind a pool commonly use self-signed certificates; the reference
    # picker scrapes them with verification off by default. One shared context: building
    # one per endpoint would cost milliseconds each on the event loop.
    context = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl_module.CERT_NONE
    return context


def _decode(body: bytes, encoding: str, url: yarl.URL) -> bytes:
    if not encoding or encoding == "identity":
        return body
    if encoding in ("gzip", "x-gzip", "deflate"):
        try:
            wbits = 47 if encoding != "deflate" else 15  # 47: gzip or zlib header, auto
            return zlib.decompress(body, wbits)
        except zlib.error as exc:
            raise FetchError(TRANSPORT, f"GET {url}: bad {encoding} body: {exc}") from None
    raise FetchError(TRANSPORT, f"GET {url}: unsupported content-encoding {encoding!r}")


class AiohttpFetch:
    """GET one URL through a shared aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: yarl.URL,
        *,
        headers: dict[str, str] | None,
        max_bytes: int,
    ) -> None:
        self.url = url
        self._session = session
        self._headers = headers
        self._max_bytes = max_bytes
        self._ssl = False if url.scheme == "https" else None

    async def get(self, timeout: float) -> tuple[int, bytes]:
        url = self.url
        try:
            async with self._session.get(
                url,
                timeout=aiohttp.ClientTimeout(total=timeout),
                ssl=self._ssl,
                headers=self._headers,
            ) as resp:
                size = resp.content_length or 0
                if size > self._max_bytes:  # not read: aiohttp drops the connection
                    raise FetchError(TOO_BIG, f"GET {url}: page of {size} bytes is too big")
                body = await resp.read()
                if len(body) > self._max_bytes:
                    raise FetchError(TOO_BIG, f"GET {url}: page of {len(body)} bytes is too big")
                return resp.status, body
        except asyncio.TimeoutError:
            raise FetchError(TIMEOUT, f"GET {url}: no answer within {timeout:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            raise FetchError(CONNECT, f"GET {url}: cannot connect: {exc.os_error}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise FetchError(TRANSPORT, f"GET {url}: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        """The session is shared; nothing of ours to release."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection carrying one GET at a time."""

    def __init__(self, max_bytes: int) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.max_bytes = max_bytes
        self.begin(None)

    def begin(
        self, waiter: asyncio.Future[None] | None, on_done: Callable[[], None] | None = None
    ) -> None:
        self.waiter = waiter
        self.on_done = on_done
        self.received = False
        self.done = False
        self.keep_alive = False
        self.until_eof = False
        self.framed = False  # Content-Length or Transfer-Encoding seen
        self.encoding = ""
        self.status = 0
        self.chunks: list[bytes] = []
        self.size = 0
        self.error: FetchError | None = None
        self._header = b""

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(TRANSPORT, f"invalid HTTP response: {exc}")
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.until_eof and exc is None and not self.done:
            self.done = True  # HTTP/1.0-style body: the close is its end
            self._wake()
        elif not self.done:
            what = "closed the connection" if exc is None else f"connection lost ({exc})"
            self._fail(TRANSPORT, f"server {what}" + ("" if self.received else " (idle)"))

    # -- httptools callbacks -------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or name == b"transfer-encoding":
            self.framed = True
        elif name == b"content-encoding":
            self.encoding = value.decode("latin-1").strip().lower()

    def on_headers_complete(self) -> None:
        # llhttp forgets keep-alive once the message completes: ask while it knows.
        self.keep_alive = self.parser.should_keep_alive()
        self.status = self.parser.get_status_code()
        self.until_eof = not self.framed and self.status >= 200 and self.status not in (204, 304)

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.max_bytes:
            self._fail(TOO_BIG, f"page of more than {self.max_bytes} bytes is too big")
            self.close()
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.done = True
        self._wake()

    # -- helpers -------------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        on_done = self.on_done
        if on_done is not None:
            self.on_done = None  # once per request
            on_done()

    def _fail(self, kind: str, message: str) -> None:
        if self.error is None:
            self.error = FetchError(kind, message)
        self._wake()

    def expire(self) -> None:
        """The answer did not come in time (a timer's callback)."""
        self._fail(TIMEOUT, "no answer in time")

    @property
    def reusable(self) -> bool:
        return not self.closed and self.done and self.keep_alive

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class LeanFetch:
    """GET one URL over one persistent connection (reopened when the server closes it)."""

    def __init__(self, url: yarl.URL, *, headers: dict[str, str], max_bytes: int) -> None:
        if httptools is None:
            raise RuntimeError("LeanFetch needs the httptools package")
        if url.host is None or url.port is None:
            raise ValueError(f"metrics URL {url} has no host or port")
        self.url = url
        self._host = url.host
        self._port = url.port
        self._ssl = _insecure_context() if url.scheme == "https" else None
        host = f"[{self._host}]" if ":" in self._host else self._host
        lines = [f"GET {url.raw_path_qs} HTTP/1.1", f"Host: {host}:{url.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self._request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._max_bytes = max_bytes
        self._conn: _Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeout = 0.0

    @property
    def ready(self) -> bool:
        """A kept-alive connection is open and idle: ``start`` can send at once."""
        conn = self._conn
        return conn is not None and conn.reusable

    def start(self, timeout: float, on_done: Callable[[], None]) -> bool:
        """Send the GET on the kept-alive connection without a task: ``on_done()`` is called
        (from the protocol's callback) once the answer is complete or the request failed;
        then read it with ``result()``. False, and nothing sent, when no connection is ready
        (use ``get``, which connects). The caller enforces ``timeout`` with ``expire()``."""
        conn = self._conn
        if conn is None or not conn.reusable or conn.transport is None:
            return False
        self._timeout = timeout
        conn.begin(None, on_done)
        conn.transport.write(self._request)
        return True

    def expire(self) -> None:
        """The answer of ``start`` is late: fail it (``on_done`` runs, ``result`` raises)."""
        if self._conn is not None:
            self._conn.expire()

    def result(self) -> tuple[int, bytes]:
        """The answer ``start`` asked for. Raises ``FetchError`` as ``get`` does; kind
        ``STALE`` when the kept-alive connection had been closed by the server before it
        answered anything (nothing is wrong: ``get`` again on a fresh connection)."""
        conn = self._conn
        if conn is None:
            raise FetchError(TRANSPORT, f"GET {self.url}: connection closed")
        return self._outcome(conn, self._timeout)

    def _outcome(self, conn: _Connection, timeout: float) -> tuple[int, bytes]:
        """The answer on ``conn`` (done), or the ``FetchError`` it came to: kind ``STALE``
        for a transport failure before any byte (a kept-alive connection the server had
        closed)."""
        error = conn.error
        if error is None:
            body = b"".join(conn.chunks)
            if not conn.keep_alive:
                conn.close()
            return conn.status, _decode(body, conn.encoding, self.url)
        conn.close()
        if error.kind == TIMEOUT:
            raise FetchError(TIMEOUT, f"GET {self.url}: no answer within {timeout:g}s")
        if not conn.received and error.kind == TRANSPORT:
            raise FetchError(STALE, f"GET {self.url}: {error}")
        raise FetchError(error.kind, f"GET {self.url}: {error}")

    async def get(self, timeout: float) -> tuple[int, bytes]:
        # One timer on the answer instead of an ``asyncio.timeout`` per scrape (a Timeout
        # object, a task lookup and an uncancel dance: ~10% of a scrape's CPU); the loop is
        # looked up once (each lookup is a getpid() system call).
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for attempt in (1, 2):
            conn = self._conn
            reused = conn is not None and conn.reusable
            if not reused:
                if conn is not None:
                    conn.close()
                conn = self._conn = await self._connect(deadline - loop.time(), timeout)
            waiter = loop.create_future()
            conn.begin(waiter)
            assert conn.transport is not None
            conn.transport.write(self._request)
            handle = loop.call_at(deadline, conn.expire)
            try:
                await waiter
            except asyncio.CancelledError:
                self.close()  # the late answer must not be taken for the next request's
                raise
            finally:
                handle.cancel()
            try:
                return self._outcome(conn, timeout)
            except FetchError as exc:
                if exc.kind != STALE:
                    raise
                if reused and attempt == 1:
                    continue  # a kept-alive connection the server had closed: once more, fresh
                raise FetchError(TRANSPORT, str(exc)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connect(self, remaining: float, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with _timeout(max(0.0, remaining)):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self._max_bytes),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except asyncio.TimeoutError:
            raise FetchError(TIMEOUT, f"GET {self.url}: no answer within {timeout:g}s") from None
        except (OSError, ssl_module.SSLError) as exc:
            raise FetchError(CONNECT, f"GET {self.url}: cannot connect: {exc}") from None
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
