"""igw's own gRPC transport for ``ExternalProcessor/Process``: HTTP/2 framed here, in asyncio.

Why this exists: grpc-python spends 70-100 µs of CPU on every message it receives and about
twice that on every message it answers, whatever the servicer does. A long streamed answer is
1,000 ext_proc messages, so the transport alone costs 80-250 ms per request before igw has looked
at one chunk (``bench/test_extproc_bench.py``). ext_proc needs little of gRPC: one
bidirectional method, no deadlines, no compression, Envoy as the only client. This module
serves that subset with one asyncio protocol per connection and hands every
``ProcessingRequest`` to the same ``Stream`` / ``Observer`` code as the grpc.aio servicer
(``service.py``), so both transports behave the same; the ext_proc tests run on both.

Where it serves: ``--observer-port`` (an extra port, meant for the observability-mode filter of
``deploy/envoy/envoy-observe.yaml``) and, with ``--grpc-transport=igw``, the ext_proc port
itself. Either serves routing and observer streams alike: a stream's first message decides,
as in ``service.py``.

Why not the ``h2`` library: measured on the same 1,000-chunk stream, its per-frame state
machine alone costs ~11 µs a frame, more than the whole per-message budget. A gRPC server meets
few frame types (DATA, HEADERS and CONTINUATION, SETTINGS, PING, WINDOW_UPDATE, RST_STREAM,
GOAWAY, PRIORITY; RFC 9113), so the framing is done here. Header blocks go through ``hpack``
(python-hyper's HPACK codec, the one h2 uses), which keeps the dynamic tables right.

Costs it avoids:

* A coroutine per message: ``Stream.handle_now`` answers everything but the request body and
  trailers at once. Only those, which may wait for flow control or the prefill gate, run in a
  task per stream, and the messages behind them queue so that the order is kept.
* Flow control per frame: large windows are granted at the start, and a WINDOW_UPDATE goes out
  only once a stream has consumed 32 KiB or the connection a quarter of its window. Replies
  respect the peer's windows and frame size (a stream's replies wait in its outbox).
* A read per chunk on busy observer connections: after a read that came less than
  ``read_batch`` seconds after the previous one, on a connection with an observer stream open
  that has never carried a routing stream (a request's routing must not wait for a batch),
  reading pauses for ``read_batch``. The frames queue in the
  socket, and the next read takes them all at once. A connection that was quiet for longer than
  ``read_batch`` is read at once, so the first chunk after a long prefill is not delayed. On a
  busy one a chunk's time stamp (time to first token, the prefill gate's release) is late by at
  most ``read_batch``.

Also served: ``grpc.health.v1.Health/Check`` (Envoy health-checks the cluster); ``Watch`` and
every other method get UNIMPLEMENTED.

Behaviour on an observer stream: nothing is written but its end. When igw ends it early
(``--observe-until first-token``), an RST_STREAM(NO_ERROR) follows, so Envoy stops sending. A
message igw cannot decode is logged, and the rest of its stream is read without being
interpreted. A routing stream's errors end it with their gRPC status, as ``context.abort``
would.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

import hpack
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from igw.extproc.director import StreamError

if TYPE_CHECKING:
    from igw.extproc.health import HealthServicer

log = logging.getLogger("igw.extproc")

PROCESS_PATH = b"/envoy.service.ext_proc.v3.ExternalProcessor/Process"
HEALTH_CHECK_PATH = b"/grpc.health.v1.Health/Check"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types, flags, error codes and settings of RFC 9113.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
FRAME_SIZE_ERROR, REFUSED_STREAM, COMPRESSION_ERROR = 6, 7, 9
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS = 1, 3
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = 4, 5, 6

DEFAULT_WINDOW = 65_535  # every window before the peer has acknowledged our SETTINGS
DEFAULT_FRAME = 16_384  # the largest frame a peer accepts until it says otherwise
MAX_WINDOW = (1 << 31) - 1
STREAM_WINDOW = 1 << 22
CONNECTION_WINDOW = 1 << 26
STREAM_UPDATE_AT = 1 << 15  # below DEFAULT_WINDOW: no stall before our SETTINGS are acked
MAX_FRAME_SIZE = 1 << 20
MAX_STREAMS = 1 << 16
MAX_HEADER_LIST = 1 << 16
DEFAULT_MAX_MESSAGE = 4 << 20  # grpc's default receive limit
DEFAULT_READ_BATCH = 0.001

RESPONSE_HEADERS = ((":status", "200"), ("content-type", "application/grpc"))
# gRPC status codes used here (grpc.StatusCode values)
GRPC_OK, GRPC_UNKNOWN, GRPC_INVALID_ARGUMENT, GRPC_RESOURCE_EXHAUSTED = 0, 2, 3, 8
GRPC_UNIMPLEMENTED = 12


class Processor(Protocol):
    """What serves the calls: the picker's ``Director``, or ``igw bbr``'s ``BbrProcessor``.

    ``stream()`` returns an object with ``handle_now(message)`` (replies, or None when the
    message may wait), ``async handle(message)``, ``close(broken=...)`` and ``done``;
    ``observer()`` one with ``handle``, ``close``, ``give_up`` and ``finished_early``."""

    def stream(self) -> Any: ...

    def observer(self) -> Any: ...


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


def grpc_message(text: str) -> str:
    """``grpc-message`` is percent-encoded: printable ASCII but ``%`` passes, the rest is
    escaped byte by byte (gRPC over HTTP/2)."""
    return "".join(
        char if " " <= char <= "~" and char != "%" else
        "".join(f"%{byte:02X}" for byte in char.encode())
        for char in text
    )  # fmt: skip


class ConnectionError_(Exception):
    """The peer broke HTTP/2: GOAWAY with ``code`` and close the connection."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Call:
    """One HTTP/2 stream (one gRPC call)."""

    __slots__ = ("consumed", "ending", "ignored", "observer", "outbox", "pending",
                 "queue", "remote_closed", "send_window", "stream", "task",
                 "unary")  # fmt: skip

    def __init__(self, send_window: int) -> None:
        self.pending = b""  # the start of a gRPC message cut by a frame boundary
        self.consumed = 0  # flow-controlled bytes not yet given back by WINDOW_UPDATE
        self.ignored = False  # read and dropped (undecodable input, call already answered)
        self.remote_closed = False  # Envoy half-closed (END_STREAM)
        self.unary: list[bytes] | None = None  # messages of a unary call, answered at its end
        self.observer: Any = None  # an observer stream's interpreter
        self.stream: Any = None  # a routing stream's
        self.queue: collections.deque[pb.ProcessingRequest] = collections.deque()
        self.task: asyncio.Task | None = None  # handles ``queue`` while a message waits
        self.send_window = send_window
        self.outbox = bytearray()  # replies waiting for flow-control window
        self.ending: bytes | None = None  # frames that end the call, sent after the outbox


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection from Envoy, carrying any number of ext_proc streams."""

    def __init__(self, server: H2GrpcServer) -> None:
        self.server = server
        self.director = server.director
        self.on_read = server.on_read
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.preface_seen = False
        self.calls: dict[int, Call] = {}
        self.sending: dict[int, Call] = {}  # ended calls whose replies wait for window
        # Reads are never batched on a connection that has carried a routing stream: the next
        # request's routing would wait for the batch.
        self.carries_routing = False
        self.observing = 0  # open observer streams: only they are worth batching reads for
        self.last_stream_id = 0
        self.continuing: tuple[int, int, list[bytes]] | None = None  # (stream, flags, parts)
        self.decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
        self.encoder = hpack.Encoder()
        self.out: list[bytes] = []
        self.connection_consumed = 0
        self.send_window = DEFAULT_WINDOW
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_FRAME
        self.last_read = -1.0
        self.paused = False

    # ---------------------------------------------------------------- asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        self.transport.write(SERVER_PREFACE)

    def data_received(self, data: bytes) -> None:
        if self.on_read is not None:
            self.on_read()
        try:
            self._receive(data)
        except ConnectionError_ as error:
            log.warning("ext_proc connection: %s; closing it", error)
            self._goaway(error.code)
        except Exception:
            log.exception("ext_proc connection failed; closing it")
            self._goaway(INTERNAL_ERROR)
        self._flush()
        self._batch_reads()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        calls, self.calls = self.calls, {}
        self.sending.clear()
        for call in calls.values():
            self._abandon(call)

    # ---------------------------------------------------------------- reading
    def _batch_reads(self) -> None:
        window = self.server.read_batch
        transport = self.transport
        if (not window or not self.observing or self.carries_routing or transport is None
                or transport.is_closing()):  # fmt: skip
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
            consumed = self.connection_consumed.to_bytes(4, "big")
            self.out.append(frame(WINDOW_UPDATE, 0, 0, consumed))
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
            if length > limit:
                self._refuse(stream_id, call, GRPC_RESOURCE_EXHAUSTED,
                             f"message of {length} bytes, limit {limit}")  # fmt: skip
                return
            if buf[pos]:
                self._refuse(stream_id, call, GRPC_UNIMPLEMENTED,
                             "compressed messages are not supported")  # fmt: skip
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
        if call.unary is not None:
            if not call.unary:  # a unary request has one message; more are not kept
                call.unary.append(raw)
            return
        try:
            message = pb.ProcessingRequest.FromString(raw)
        except DecodeError as error:
            self._refuse(stream_id, call, GRPC_INVALID_ARGUMENT,
                         f"undecodable ProcessingRequest ({error})")  # fmt: skip
            return
        if call.stream is not None:
            self._route(stream_id, call, message)
        elif call.observer is not None:
            self._observe(stream_id, call, message)
        elif message.observability_mode:  # the first message decides, as in service.py
            call.observer = self.director.observer()
            self.observing += 1
            self._observe(stream_id, call, message)
        else:
            call.stream = self.director.stream()
            self.carries_routing = True
            self._route(stream_id, call, message)

    def _refuse(self, stream_id: int, call: Call, status: int, why: str) -> None:
        """Input igw cannot take: an observer reads the rest silently, a routing stream ends."""
        call.pending = b""
        if call.stream is not None:
            self._fail(stream_id, call, status, why)
            return
        log.warning("ext_proc stream: %s; the rest of it is read and ignored", why)
        call.ignored = True
        if call.observer is not None:
            call.observer.give_up()

    # ---------------------------------------------------------------- observer streams
    def _observe(self, stream_id: int, call: Call, message: pb.ProcessingRequest) -> None:
        observer = call.observer
        assert observer is not None
        try:
            observer.handle(message)
        except Exception:
            log.exception("observer stream: message dropped, the rest of it ignored")
            call.ignored = True
            observer.give_up()
            return
        if observer.finished_early:
            self._end_early(stream_id, call)

    # ---------------------------------------------------------------- routing streams
    def _route(self, stream_id: int, call: Call, message: pb.ProcessingRequest) -> None:
        if call.task is not None or call.queue:
            call.queue.append(message)  # behind a message that waits: keep the order
            return
        stream = call.stream
        assert stream is not None
        if message.observability_mode:  # Envoy never mixes modes on one stream
            log.warning("observability_mode message on a routing stream: dropped")
            return
        try:
            replies = stream.handle_now(message)
        except StreamError as error:
            self._fail(stream_id, call, error.code.value[0], error.message)
            return
        except Exception as exc:
            log.exception("ext_proc stream failed")
            self._fail(stream_id, call, GRPC_UNKNOWN, f"internal error: {exc}")
            return
        if replies is None:
            call.queue.append(message)
            call.task = asyncio.get_running_loop().create_task(self._drain(stream_id, call))
            return
        self._reply(stream_id, call, replies)
        if stream.done:
            self._end_routing(stream_id, call)

    async def _drain(self, stream_id: int, call: Call) -> None:
        """Handle the queued messages in order, awaiting those that wait (request body)."""
        stream = call.stream
        assert stream is not None
        try:
            while call.queue:
                message = call.queue.popleft()
                if message.observability_mode:
                    log.warning("observability_mode message on a routing stream: dropped")
                    continue
                self._reply(stream_id, call, await stream.handle(message))
                if stream.done:
                    call.task = None
                    self._end_routing(stream_id, call)
                    return
            call.task = None
            if call.remote_closed:
                self._end_routing(stream_id, call)
        except StreamError as error:
            call.task = None
            self._fail(stream_id, call, error.code.value[0], error.message)
        except asyncio.CancelledError:  # Envoy reset the stream, or the connection is gone
            call.task = None
            self._close_routing(call, broken=True)
            raise
        except Exception as exc:
            call.task = None
            log.exception("ext_proc stream failed")
            self._fail(stream_id, call, GRPC_UNKNOWN, f"internal error: {exc}")
        finally:
            self._flush()

    def _reply(self, stream_id: int, call: Call, replies: list[pb.ProcessingResponse]) -> None:
        if not replies:
            return
        for reply in replies:
            data = reply.SerializeToString()
            call.outbox += b"\0" + len(data).to_bytes(4, "big") + data
        self._pump(stream_id, call)

    def _end_routing(self, stream_id: int, call: Call) -> None:
        """The stream is over (Envoy half-closed, or igw has nothing more to do): status OK."""
        self._close_routing(call, broken=False)
        self._end_call(stream_id, call, GRPC_OK)

    def _fail(self, stream_id: int, call: Call, status: int, message: str) -> None:
        """End a routing stream with an error status (``context.abort``)."""
        if call.task is not None and call.task is not asyncio.current_task():
            self._cancel(call)
        else:
            self._close_routing(call, broken=True)
        self._end_call(stream_id, call, status, message)

    def _cancel(self, call: Call) -> None:
        """Cancel the call's task; the routing stream is closed once it has unwound (or at
        once if it never started), as the grpc.aio servicer's ``finally`` does."""
        task, call.task = call.task, None
        if task is not None:
            task.cancel()
            task.add_done_callback(lambda _task: self._close_routing(call, broken=True))

    def _close_routing(self, call: Call, *, broken: bool) -> None:
        stream, call.stream = call.stream, None
        if stream is None:
            return
        call.ignored = True
        call.queue.clear()
        try:
            stream.close(broken=broken)
        except Exception:
            log.exception("ext_proc stream: closing it failed")

    # ---------------------------------------------------------------- control frames
    def _control(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == HEADERS:
            self._headers_frame(stream_id, flags, payload)
        elif kind == CONTINUATION:
            self._continuation(stream_id, flags, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == SETTINGS:
            self._settings(flags, payload)
        elif kind == PING:
            if len(payload) != 8:
                raise ConnectionError_(FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
            if not flags & ACK:
                self.out.append(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            self.sending.pop(stream_id, None)
            call = self.calls.pop(stream_id, None)
            if call is not None:
                self._abandon(call)
        elif kind == PUSH_PROMISE:
            raise ConnectionError_(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # PRIORITY, GOAWAY (Envoy closes the connection once its streams end) and unknown
        # frame types need nothing.

    def _settings(self, flags: int, payload: bytes) -> None:
        if flags & ACK:
            return
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
        for pos in range(0, len(payload), 6):
            key = int.from_bytes(payload[pos : pos + 2], "big")
            value = int.from_bytes(payload[pos + 2 : pos + 6], "big")
            if key == SETTINGS_HEADER_TABLE_SIZE:
                self.encoder.header_table_size = value
            elif key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "initial window above 2^31-1")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for call in (*self.calls.values(), *self.sending.values()):
                    call.send_window += delta
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_FRAME <= value <= (1 << 24) - 1:
                    raise ConnectionError_(PROTOCOL_ERROR, f"max frame size {value}")
                self.peer_max_frame = value
        self.out.append(frame(SETTINGS, ACK, 0))
        self._pump_all()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload is not 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "connection WINDOW_UPDATE of 0")
            self.send_window += increment
            self._pump_all()
            return
        call = self.calls.get(stream_id) or self.sending.get(stream_id)
        if call is not None:
            call.send_window += increment
            self._pump(stream_id, call)

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
        if len(self.calls) >= MAX_STREAMS:
            self.out.append(frame(RST_STREAM, 0, stream_id, REFUSED_STREAM.to_bytes(4, "big")))
            return
        path = next((value for name, value in headers if name == b":path"), b"")
        call = Call(self.peer_initial_window)
        self.calls[stream_id] = call
        if path == PROCESS_PATH:
            self._send_headers(stream_id, RESPONSE_HEADERS)
        elif path == HEALTH_CHECK_PATH:
            call.unary = []
        else:
            call.ignored = True
            self._end_call(stream_id, call, GRPC_UNIMPLEMENTED,
                           f"method {path.decode(errors='replace')} is not served by igw's "
                           "transport", trailers_only=True)  # fmt: skip
            return
        if flags & END_STREAM:
            self._remote_end(stream_id)

    # ---------------------------------------------------------------- ending calls
    def _remote_end(self, stream_id: int) -> None:
        """Envoy half-closed the stream: answer a unary call, end a stream cleanly."""
        call = self.calls.get(stream_id)
        if call is None:
            return
        call.remote_closed = True
        if call.unary is not None:
            self._answer_health(stream_id, call, call.unary)
        elif call.stream is not None:
            if call.task is None and not call.queue:
                self._end_routing(stream_id, call)
            # else: the stream's task ends it once its queue is handled
        else:
            self._close_observer(call, broken=False)
            self._end_call(stream_id, call, GRPC_OK)

    def _end_early(self, stream_id: int, call: Call) -> None:
        """igw needs no more of this response: end the call and tell Envoy to stop sending."""
        self._close_observer(call, broken=False)
        self._end_call(stream_id, call, GRPC_OK)

    def _answer_health(self, stream_id: int, call: Call, messages: list[bytes]) -> None:
        try:
            request = health_pb2.HealthCheckRequest.FromString(messages[0] if messages else b"")
        except DecodeError:
            self._end_call(stream_id, call, GRPC_INVALID_ARGUMENT,
                           "undecodable HealthCheckRequest", trailers_only=True)  # fmt: skip
            return
        answer = health_pb2.HealthCheckResponse(
            status=self.server.health.status(request.service)
        ).SerializeToString()
        self._send_headers(stream_id, RESPONSE_HEADERS)
        call.outbox += b"\0" + len(answer).to_bytes(4, "big") + answer
        self._end_call(stream_id, call, GRPC_OK)

    def _end_call(self, stream_id: int, call: Call, status: int, message: str = "", *,
                  trailers_only: bool = False) -> None:  # fmt: skip
        """Send the call's trailers after its pending replies; RST_STREAM(NO_ERROR) too when
        Envoy is still sending, so it stops. The call is forgotten for reading at once."""
        self.calls.pop(stream_id, None)
        call.ignored = True
        headers: list[tuple[str, str]] = list(RESPONSE_HEADERS) if trailers_only else []
        headers.append(("grpc-status", str(status)))
        if message:
            headers.append(("grpc-message", grpc_message(message)))
        block = self.encoder.encode(headers)
        ending = frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block)
        if not call.remote_closed:
            ending += frame(RST_STREAM, 0, stream_id, NO_ERROR.to_bytes(4, "big"))
        call.ending = ending
        self._pump(stream_id, call)

    def _abandon(self, call: Call) -> None:
        """Envoy reset the stream or the connection is gone: no reply can be sent."""
        call.ignored = True
        call.outbox.clear()
        call.ending = None
        self._close_observer(call, broken=True)
        if call.task is not None:
            self._cancel(call)
        else:
            self._close_routing(call, broken=True)
        self.server.stream_closed()  # a stop waiting for the last stream ends now

    def _close_observer(self, call: Call, *, broken: bool) -> None:
        observer, call.observer = call.observer, None
        if observer is not None:
            self.observing -= 1
            try:
                observer.close(broken=broken)
            except Exception:
                log.exception("observer stream: closing it failed")
            self.server.stream_closed()

    # ---------------------------------------------------------------- writing
    def _send_headers(self, stream_id: int, headers) -> None:
        self.out.append(frame(HEADERS, END_HEADERS, stream_id, self.encoder.encode(headers)))

    def _pump(self, stream_id: int, call: Call) -> None:
        """Send what the windows allow of the call's replies, then its ending."""
        outbox = call.outbox
        while outbox:
            size = min(len(outbox), call.send_window, self.send_window, self.peer_max_frame)
            if size <= 0:
                if call.ending is not None:
                    self.sending[stream_id] = call
                return
            self.out.append(frame(DATA, 0, stream_id, bytes(outbox[:size])))
            del outbox[:size]
            call.send_window -= size
            self.send_window -= size
        if call.ending is not None:
            self.out.append(call.ending)
            call.ending = None
            self.sending.pop(stream_id, None)
            self.server.stream_closed()

    def _pump_all(self) -> None:
        for stream_id, call in [*self.calls.items(), *self.sending.items()]:
            if call.outbox:
                self._pump(stream_id, call)

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
        self._goaway(NO_ERROR)


def _unpad(payload: bytes) -> bytes:
    if not payload or payload[0] >= len(payload):
        raise ConnectionError_(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]


class H2GrpcServer:
    """A listener served by igw's transport: ext_proc streams and health checks."""

    def __init__(
        self,
        director: Processor,
        health: HealthServicer,
        *,
        host: str = "0.0.0.0",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        read_batch: float = DEFAULT_READ_BATCH,
        max_message: int = DEFAULT_MAX_MESSAGE,
        on_read: Callable[[], None] | None = None,
    ) -> None:
        self.director = director
        self.on_read = on_read  # igw.busypoll's poke, called on every read (None: off)
        self.health = health
        self.host = host
        self.requested_port = port
        self.ssl_context = ssl_context
        self.read_batch = read_batch
        self.max_message = max_message
        self.connections: set[H2Connection] = set()
        self.port: int | None = None
        self._server: asyncio.Server | None = None
        self._drained: asyncio.Event | None = None  # set while stopping, once no stream is open

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: H2Connection(self), self.host, self.requested_port, ssl=self.ssl_context
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    def open_streams(self) -> int:
        return sum(len(c.calls) + len(c.sending) for c in self.connections)

    def stream_closed(self) -> None:
        if self._drained is not None and not self.open_streams():
            self._drained.set()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let open streams end for ``grace`` s, then close every connection."""
        if self._server is None:
            return
        self._server.close()
        self._drained = asyncio.Event()
        self.stream_closed()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), timeout=grace)
        for connection in list(self.connections):
            connection.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
        self._server = None
