"""Observer streams on a port of their own, over a receive-only gRPC transport.

Why this exists: grpc-python spends 70-100 µs of CPU on every message it receives, whatever
the servicer then does, so the 1,000 chunks of a long streamed answer cost ~80 ms on an
observer stream before igw has looked at one of them (``bench/test_extproc_bench.py``). An
observability-mode stream needs almost nothing of gRPC: Envoy sends, igw reads, and the only
thing igw ever writes is the stream's end. ``igw epp --observer-port`` serves these streams
here, in one asyncio protocol per connection, and hands every ``ProcessingRequest`` to the same
``Observer`` the grpc.aio servicer uses, so both ports interpret a stream identically.

Why not the ``h2`` library: measured on the same 1,000-chunk stream, its per-frame state
machine alone costs ~11 µs a frame, more than the whole per-message budget. A server that only
receives meets few frame types (DATA, HEADERS and CONTINUATION, SETTINGS, PING,
WINDOW_UPDATE, RST_STREAM, GOAWAY, PRIORITY; RFC 9113), so the framing is done here and
header blocks go through ``hpack`` (python-hyper's HPACK codec, the one h2 uses), which keeps
the dynamic tables right.

Two more savings:

* Flow control is granted in bulk: large windows at the start, and a WINDOW_UPDATE only once a
  stream has consumed 32 KiB or the connection a quarter of its window.
* Reads are batched while a connection is busy: after a read that came less than
  ``read_batch`` seconds after the previous one, reading pauses for ``read_batch``, so the
  frames queue in the socket and the next read takes them all at once. A connection that was
  quiet for longer than ``read_batch`` is read at once, so the first chunk after a long
  prefill is not delayed. On a busy connection a chunk's time stamp (time to first token, the
  prefill gate's release) is late by at most ``read_batch``; ``--observer-read-batch=0``
  turns batching off.

What goes back to Envoy: a ``Process`` stream gets its response headers when it opens and
``grpc-status: 0`` when it ends. When igw ends it early (``--observe-until first-token``) an
RST_STREAM(NO_ERROR) follows, so Envoy stops sending. ``grpc.health.v1.Health/Check`` is answered
as on the main port, because Envoy health-checks the cluster. Any other method gets
UNIMPLEMENTED. A message igw cannot decode is logged, and the rest of its stream is read
without being interpreted, as on the grpc.aio path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import TYPE_CHECKING, cast

import hpack
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

if TYPE_CHECKING:
    from igw.extproc.director import Director
    from igw.extproc.health import HealthServicer
    from igw.extproc.observer import Observer

log = logging.getLogger("igw.extproc")

PROCESS_PATH = b"/envoy.service.ext_proc.v3.ExternalProcessor/Process"
HEALTH_CHECK_PATH = b"/grpc.health.v1.Health/Check"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types, flags, error codes and settings of RFC 9113.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR = 0, 1, 2, 6, 9
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS = 1, 3
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = 4, 5, 6

DEFAULT_WINDOW = 65_535  # every window before the peer has acknowledged our SETTINGS
STREAM_WINDOW = 1 << 22
CONNECTION_WINDOW = 1 << 26
STREAM_UPDATE_AT = 1 << 15  # below DEFAULT_WINDOW: no stall before our SETTINGS are acked
MAX_FRAME_SIZE = 1 << 20
MAX_STREAMS = 1 << 16
MAX_HEADER_LIST = 1 << 16
DEFAULT_MAX_MESSAGE = 4 << 20  # grpc's default receive limit
DEFAULT_READ_BATCH = 0.001

RESPONSE_HEADERS = ((":status", "200"), ("content-type", "application/grpc"))
# gRPC status codes used here
GRPC_OK, GRPC_INVALID_ARGUMENT, GRPC_UNIMPLEMENTED = 0, 3, 12


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return b"".join(
        (len(payload).to_bytes(3, "big"), bytes((kind, flags)), stream_id.to_bytes(4, "big"),
         payload)
    )  # fmt: skip


def _settings_payload() -> bytes:
    pairs = (
        (SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS),
        (SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
        (SETTINGS_MAX_FRAME_SIZE, MAX_FRAME_SIZE),
        (SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST),
    )
    return b"".join(key.to_bytes(2, "big") + value.to_bytes(4, "big") for key, value in pairs)


SERVER_PREFACE = frame(SETTINGS, 0, 0, _settings_payload()) + frame(
    WINDOW_UPDATE, 0, 0, (CONNECTION_WINDOW - DEFAULT_WINDOW).to_bytes(4, "big")
)


class ConnectionError_(Exception):
    """The peer broke HTTP/2: GOAWAY with ``code`` and close the connection."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Call:
    """One HTTP/2 stream (one gRPC call) on an observer connection."""

    __slots__ = ("consumed", "ignored", "observer", "path", "pending", "unary")

    def __init__(self, path: bytes) -> None:
        self.path = path
        self.observer: Observer | None = None
        self.pending = b""  # the start of a gRPC message cut by a frame boundary
        self.unary: list[bytes] | None = None  # messages of a unary call, answered at its end
        self.consumed = 0  # flow-controlled bytes not yet given back by WINDOW_UPDATE
        self.ignored = False  # read and dropped (undecodable input, answered call)


class ObserverConnection(asyncio.Protocol):
    """One HTTP/2 connection from Envoy, carrying any number of observer streams."""

    def __init__(self, server: ObserverServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.preface_seen = False
        self.calls: dict[int, Call] = {}
        self.last_stream_id = 0
        self.continuing: tuple[int, int, list[bytes]] | None = None  # (stream, flags, parts)
        self.decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
        self.encoder = hpack.Encoder()
        self.out: list[bytes] = []
        self.connection_consumed = 0
        self.last_read = -1.0
        self.paused = False

    # ---------------------------------------------------------------- asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        self.transport.write(SERVER_PREFACE)

    def data_received(self, data: bytes) -> None:
        try:
            self._receive(data)
        except ConnectionError_ as error:
            log.warning("observer connection: %s; closing it", error)
            self._goaway(error.code)
        except Exception:
            log.exception("observer connection failed; closing it")
            self._goaway(INTERNAL_ERROR)
        self._flush()
        self._batch_reads()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        calls, self.calls = self.calls, {}
        for call in calls.values():
            self._close_observer(call, broken=True)

    # ---------------------------------------------------------------- reading
    def _batch_reads(self) -> None:
        window = self.server.read_batch
        transport = self.transport
        if not window or transport is None or transport.is_closing():
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - self.last_read < window and not self.paused:
            self.paused = True
            transport.pause_reading()
            loop.call_later(window, self._resume)
        self.last_read = now

    def _resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _receive(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        pos = 0
        if not self.preface_seen:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(buf):
                    raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 client preface")
                self.buffer = buf
                return
            if not buf.startswith(PREFACE):
                raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 client preface")
            self.preface_seen = True
            pos = len(PREFACE)
        size = len(buf)
        while size - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            if length > MAX_FRAME_SIZE:
                raise ConnectionError_(FRAME_SIZE_ERROR, f"frame of {length} bytes")
            end = pos + 9 + length
            if end > size:
                break
            kind = buf[pos + 3]
            flags = buf[pos + 4]
            stream_id = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            if self.continuing is not None and kind != CONTINUATION:
                raise ConnectionError_(PROTOCOL_ERROR, "header block interrupted")
            if kind == DATA:
                self._data(stream_id, flags, buf[pos + 9 : end], length)
            else:
                self._control(kind, flags, stream_id, buf[pos + 9 : end])
            pos = end
        self.buffer = buf[pos:] if pos < size else b""

    def _data(self, stream_id: int, flags: int, payload: bytes, length: int) -> None:
        if stream_id == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "DATA on stream 0")
        self.connection_consumed += length
        if self.connection_consumed >= CONNECTION_WINDOW // 4:
            self.out.append(frame(WINDOW_UPDATE, 0, 0, self.connection_consumed.to_bytes(4, "big")))
            self.connection_consumed = 0
        call = self.calls.get(stream_id)
        if call is None:
            if stream_id > self.last_stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return  # a stream igw already ended: Envoy's frames in flight
        if flags & PADDED:
            payload = _unpad(payload)
        if not call.ignored:
            self._messages(stream_id, call, payload)
        if flags & END_STREAM:
            self._remote_end(stream_id)
            return
        call.consumed += length
        if call.consumed >= STREAM_UPDATE_AT and stream_id in self.calls:
            self.out.append(frame(WINDOW_UPDATE, 0, stream_id, call.consumed.to_bytes(4, "big")))
            call.consumed = 0

    def _messages(self, stream_id: int, call: Call, payload: bytes) -> None:
        """Cut the gRPC length-prefixed messages out of the stream and deliver each."""
        buf = call.pending + payload if call.pending else payload
        pos, size = 0, len(buf)
        limit = self.server.max_message
        while size - pos >= 5:
            length = int.from_bytes(buf[pos + 1 : pos + 5], "big")
            if length > limit or buf[pos]:
                why = "compressed" if buf[pos] else f"{length} bytes, limit {limit}"
                self._give_up(call, f"message {why}")
                return
            end = pos + 5 + length
            if end > size:
                break
            self._deliver(stream_id, call, buf[pos + 5 : end])
            if call.ignored:
                return
            pos = end
        call.pending = buf[pos:] if pos < size else b""

    def _deliver(self, stream_id: int, call: Call, raw: bytes) -> None:
        observer = call.observer
        if observer is None:
            if call.unary is not None:
                call.unary.append(raw)
            return
        try:
            message = pb.ProcessingRequest.FromString(raw)
        except DecodeError as error:
            self._give_up(call, f"undecodable ProcessingRequest ({error})")
            return
        try:
            observer.handle(message)
        except Exception:
            log.exception("observer stream: message dropped, the rest of it ignored")
            self._give_up(call, "")
            return
        if observer.finished_early:
            self._end_early(stream_id, call)

    def _give_up(self, call: Call, why: str) -> None:
        if why:
            log.warning("observer stream: %s; the rest of it is read and ignored", why)
        call.ignored = True
        call.pending = b""
        if call.observer is not None:
            call.observer.give_up()

    # ---------------------------------------------------------------- control frames
    def _control(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == HEADERS:
            self._headers_frame(stream_id, flags, payload)
        elif kind == CONTINUATION:
            self._continuation(stream_id, flags, payload)
        elif kind == SETTINGS:
            self._settings(flags, payload)
        elif kind == PING:
            if len(payload) != 8:
                raise ConnectionError_(FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
            if not flags & ACK:
                self.out.append(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            call = self.calls.pop(stream_id, None)
            if call is not None:
                self._close_observer(call, broken=True)
        elif kind == PUSH_PROMISE:
            raise ConnectionError_(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # PRIORITY, WINDOW_UPDATE (igw sends only a few bytes), GOAWAY (Envoy closes the
        # connection once its streams end) and unknown types need nothing.

    def _settings(self, flags: int, payload: bytes) -> None:
        if flags & ACK:
            return
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
        for pos in range(0, len(payload), 6):
            key = int.from_bytes(payload[pos : pos + 2], "big")
            if key == SETTINGS_HEADER_TABLE_SIZE:
                self.encoder.header_table_size = int.from_bytes(payload[pos + 2 : pos + 6], "big")
        self.out.append(frame(SETTINGS, ACK, 0))

    def _headers_frame(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & PADDED:
            payload = _unpad(payload)
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        if flags & END_HEADERS:
            self._header_block(stream_id, flags, payload)
        else:
            self.continuing = (stream_id, flags, [payload])

    def _continuation(self, stream_id: int, flags: int, payload: bytes) -> None:
        if self.continuing is None or self.continuing[0] != stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        self.continuing[2].append(payload)
        if flags & END_HEADERS:
            _, first_flags, parts = self.continuing
            self.continuing = None
            self._header_block(stream_id, first_flags, b"".join(parts))

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        try:
            headers = self.decoder.decode(block, raw=True)
        except hpack.HPACKError as error:
            raise ConnectionError_(COMPRESSION_ERROR, f"header block: {error}") from None
        if stream_id in self.calls:  # trailers from the client
            if flags & END_STREAM:
                self._remote_end(stream_id)
            return
        if stream_id <= self.last_stream_id:
            return  # trailers of a stream igw already ended
        if not stream_id & 1:
            raise ConnectionError_(PROTOCOL_ERROR, f"even stream id {stream_id} from a client")
        self.last_stream_id = stream_id
        path = next((value for name, value in headers if name == b":path"), b"")
        call = Call(path)
        self.calls[stream_id] = call
        if path == PROCESS_PATH:
            call.observer = self.server.director.observer()
            self._send_headers(stream_id, RESPONSE_HEADERS)
        elif path == HEALTH_CHECK_PATH:
            call.unary = []
        else:
            self._finish(stream_id, GRPC_UNIMPLEMENTED, f"method {path.decode(errors='replace')} "
                         "is not served on the observer port", trailers_only=True)  # fmt: skip
            call.ignored = True
        if flags & END_STREAM:
            self._remote_end(stream_id)

    # ---------------------------------------------------------------- ending streams
    def _remote_end(self, stream_id: int) -> None:
        """Envoy half-closed the stream: answer a unary call, end an observer cleanly."""
        call = self.calls.pop(stream_id, None)
        if call is None:
            return
        if call.unary is not None:
            self._answer_health(stream_id, call.unary)
        elif call.observer is not None:
            self._close_observer(call, broken=False)
            self._finish(stream_id, GRPC_OK)

    def _end_early(self, stream_id: int, call: Call) -> None:
        """igw needs no more of this response: end the call and tell Envoy to stop sending."""
        self.calls.pop(stream_id, None)
        self._close_observer(call, broken=False)
        self._finish(stream_id, GRPC_OK)
        self.out.append(frame(RST_STREAM, 0, stream_id, NO_ERROR.to_bytes(4, "big")))

    def _answer_health(self, stream_id: int, messages: list[bytes]) -> None:
        try:
            request = health_pb2.HealthCheckRequest.FromString(messages[0] if messages else b"")
        except DecodeError:
            self._finish(stream_id, GRPC_INVALID_ARGUMENT, "undecodable HealthCheckRequest",
                         trailers_only=True)  # fmt: skip
            return
        answer = health_pb2.HealthCheckResponse(
            status=self.server.health.status(request.service)
        ).SerializeToString()
        self._send_headers(stream_id, RESPONSE_HEADERS)
        self.out.append(frame(DATA, 0, stream_id, b"\0" + len(answer).to_bytes(4, "big") + answer))
        self._finish(stream_id, GRPC_OK)

    def _finish(self, stream_id: int, status: int, message: str = "", *,
                trailers_only: bool = False) -> None:  # fmt: skip
        headers: list[tuple[str, str]] = []
        if trailers_only:
            headers += RESPONSE_HEADERS
        headers.append(("grpc-status", str(status)))
        if message:
            headers.append(("grpc-message", message))
        self._send_headers(stream_id, headers, end_stream=True)

    def _send_headers(self, stream_id: int, headers, *, end_stream: bool = False) -> None:
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        self.out.append(frame(HEADERS, flags, stream_id, self.encoder.encode(headers)))

    def _close_observer(self, call: Call, *, broken: bool) -> None:
        observer, call.observer = call.observer, None
        if observer is not None:
            try:
                observer.close(broken=broken)
            except Exception:
                log.exception("observer stream: closing it failed")
            self.server.observer_closed()

    # ---------------------------------------------------------------- writing
    def _goaway(self, code: int) -> None:
        payload = self.last_stream_id.to_bytes(4, "big") + code.to_bytes(4, "big")
        self.out.append(frame(GOAWAY, 0, 0, payload))
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def _flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def close(self) -> None:
        if self.transport is not None:
            self.out.append(frame(GOAWAY, 0, 0, self.last_stream_id.to_bytes(4, "big") + bytes(4)))
            self._flush()
            self.transport.close()


def _unpad(payload: bytes) -> bytes:
    if not payload or payload[0] >= len(payload):
        raise ConnectionError_(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]


class ObserverServer:
    """The listener of ``--observer-port``: observer streams and health checks, nothing else."""

    def __init__(
        self,
        director: Director,
        health: HealthServicer,
        *,
        host: str = "0.0.0.0",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        read_batch: float = DEFAULT_READ_BATCH,
        max_message: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        self.director = director
        self.health = health
        self.host = host
        self.requested_port = port
        self.ssl_context = ssl_context
        self.read_batch = read_batch
        self.max_message = max_message
        self.connections: set[ObserverConnection] = set()
        self.port: int | None = None
        self._server: asyncio.Server | None = None
        self._drained: asyncio.Event | None = None  # set while stopping, once no stream is open

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ObserverConnection(self), self.host, self.requested_port,
            ssl=self.ssl_context,
        )  # fmt: skip
        self.port = int(self._server.sockets[0].getsockname()[1])

    def open_streams(self) -> int:
        return sum(len(connection.calls) for connection in self.connections)

    def observer_closed(self) -> None:
        if self._drained is not None and not self.open_streams():
            self._drained.set()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let open streams end for ``grace`` s, then close every connection."""
        if self._server is None:
            return
        self._server.close()
        self._drained = asyncio.Event()
        self.observer_closed()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), timeout=grace)
        for connection in list(self.connections):
            connection.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
        self._server = None
