"""igw's HTTP/2 transport against arbitrary frames (hypothesis): whatever a peer sends, in
whatever pieces, the connection either keeps going or ends with a GOAWAY, no error escapes
igw's own code, and once the connection is gone every stream it opened is closed and no
endpoint reservation is left behind."""

from __future__ import annotations

import asyncio
import logging
import random

import hpack
import pytest
from epp_harness import (
    HERMETIC_CONFIG,
    Objectives,
    Rewrites,
    make_pool,
    req_llm,
    resp_body,
    resp_headers,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from igw.config import load_config
from igw.extproc import h2_transport as h2
from igw.extproc.director import Director
from igw.extproc.health import HealthServicer
from igw.metrics import Metrics
from igw.scheduling import SchedulingEngine
from igw.stages import build_pipeline

IDLE3 = [(0, 0.1), (0, 0.1), (0, 0.1)]
STREAM_IDS = [0, 1, 3, 5, 2, (1 << 31) - 1]


class FakeTransport:
    """What the protocol writes, and whether it closed the connection."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> h2.H2GrpcServer:
    pool = make_pool(IDLE3)
    metrics = Metrics()
    metrics.add_pool(pool)
    engine = SchedulingEngine(load_config(text=HERMETIC_CONFIG), recorder=metrics.engine_recorder)
    pipeline = build_pipeline(engine, pool, metrics=metrics, objectives=Objectives(),
                              rewrites=Rewrites(), rng=random.Random(7))  # fmt: skip
    director = Director(pipeline, pool, metrics=metrics, objectives=Objectives(),
                        rng=random.Random(7), observer_grace=0.0)  # fmt: skip
    return h2.H2GrpcServer(director, HealthServicer(lambda: True), read_batch=0.0)


def _grpc(message: bytes) -> bytes:
    return b"\0" + len(message).to_bytes(4, "big") + message


def _observed(message):
    message.observability_mode = True
    return message


_SSE = {":status": "200", "content-type": "text/event-stream"}
MESSAGES = [
    *(m.SerializeToString() for m in req_llm("hello", "my-model", "my-model")),
    resp_headers(_SSE).SerializeToString(),
    resp_body(b"data: {}\n\n").SerializeToString(),
    resp_body(b"data: [DONE]\n\n", eos=True).SerializeToString(),
    _observed(req_llm("hello", "my-model", "my-model")[0]).SerializeToString(),
    _observed(resp_body(b"data: x\n\n")).SerializeToString(),
    b"",  # an empty ProcessingRequest
    b"\xff\xfe\xfd",  # not a protobuf
]
PATHS = [h2.PROCESS_PATH, h2.HEALTH_CHECK_PATH, b"/other/Method"]


def _headers_block(path: bytes) -> bytes:
    return hpack.Encoder().encode(
        [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
         (b"content-type", b"application/grpc")]
    )  # fmt: skip


stream_ids = st.sampled_from(STREAM_IDS)
frames = st.one_of(
    st.builds(
        lambda sid, path, eos: h2.frame(h2.HEADERS, h2.END_HEADERS | eos, sid,
                                        _headers_block(path)),
        stream_ids, st.sampled_from(PATHS), st.sampled_from([0, h2.END_STREAM]),
    ),
    st.builds(
        lambda sid, messages, eos: h2.frame(h2.DATA, eos, sid, b"".join(map(_grpc, messages))),
        stream_ids, st.lists(st.sampled_from(MESSAGES), max_size=3),
        st.sampled_from([0, h2.END_STREAM]),
    ),
    st.builds(
        lambda sid, code: h2.frame(h2.RST_STREAM, 0, sid, code.to_bytes(4, "big")),
        stream_ids, st.integers(0, 13),
    ),
    st.builds(
        lambda sid, inc: h2.frame(h2.WINDOW_UPDATE, 0, sid, inc.to_bytes(4, "big")),
        stream_ids, st.integers(0, (1 << 31) - 1),
    ),
    st.builds(
        lambda pairs: h2.frame(h2.SETTINGS, 0, 0, b"".join(
            k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in pairs)),
        st.lists(st.tuples(st.integers(0, 8), st.integers(0, (1 << 32) - 1)), max_size=3),
    ),
    st.builds(
        lambda kind, flags, sid, payload: h2.frame(kind, flags, sid, payload),
        st.integers(0, 12), st.integers(0, 255), stream_ids, st.binary(max_size=24),
    ),
)  # fmt: skip


# A well-formed call (HEADERS, then DATA on the same stream), so that hypothesis reaches
# routing and observer streams in every state, not only frame-level errors.
calls = st.builds(
    lambda sid, path, chunks: h2.frame(h2.HEADERS, h2.END_HEADERS, sid, _headers_block(path))
    + b"".join(h2.frame(h2.DATA, eos, sid, b"".join(map(_grpc, ms))) for ms, eos in chunks),
    st.sampled_from([1, 3, 5, 7, 9]),
    st.sampled_from([h2.PROCESS_PATH, h2.PROCESS_PATH, h2.HEALTH_CHECK_PATH]),
    st.lists(st.tuples(st.lists(st.sampled_from(MESSAGES), min_size=1, max_size=3),
                       st.sampled_from([0, 0, h2.END_STREAM])), max_size=4),
)  # fmt: skip


async def _play(server: h2.H2GrpcServer, data: bytes, cuts: list[int]) -> FakeTransport:
    connection = h2.H2Connection(server)
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    pos = 0
    for cut in [*cuts, len(data)]:
        if transport.closed or pos >= len(data):
            break
        connection.data_received(data[pos : pos + cut])
        pos += cut
        await asyncio.sleep(0)  # let routing tasks run between reads
    connection.connection_lost(None)
    for _ in range(20):  # cancelled tasks unwind
        await asyncio.sleep(0)
    return transport


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    body=st.lists(st.one_of(calls, frames), max_size=12),
    cuts=st.lists(st.integers(1, 96), max_size=20),
    preface=st.sampled_from([True, True, True, False]),
)
def test_any_frames_leave_no_stream_or_reservation_behind(server, caplog, body, cuts, preface):
    caplog.clear()
    data = (h2.PREFACE if preface else b"") + b"".join(body)
    with caplog.at_level(logging.WARNING, logger="igw"):
        transport = asyncio.run(_play(server, data, cuts))
    if transport.closed:  # an HTTP/2 error: said with a GOAWAY first
        assert h2.frame(h2.GOAWAY, 0, 0, b"")[3:9] in _frame_heads(bytes(transport.written))
    assert server.director.open_streams == 0
    snapshot = server.director.pool.table.snapshot()
    assert sum(int(snapshot.inflight_requests[e.id]) for e in server.director.pool.endpoints()) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def _grpc_statuses(written: bytes) -> list[str]:
    """The grpc-status values in the header blocks the server wrote, in order."""
    decoder, statuses, pos = hpack.Decoder(), [], 0
    while pos + 9 <= len(written):
        length = int.from_bytes(written[pos : pos + 3], "big")
        if written[pos + 3] == h2.HEADERS:
            for name, value in decoder.decode(written[pos + 9 : pos + 9 + length]):
                if name == "grpc-status":
                    statuses.append(value)
        pos += 9 + length
    return statuses


def _frame_heads(written: bytes) -> list[bytes]:
    """Type, flags and stream id of each frame the server wrote."""
    heads, pos = [], 0
    while pos + 9 <= len(written):
        length = int.from_bytes(written[pos : pos + 3], "big")
        heads.append(written[pos + 3 : pos + 9])
        pos += 9 + length
    return heads


def test_a_response_ending_the_request_before_its_body_leaves_no_reservation(server):
    """Found by the test above: request headers, then a response body with end_of_stream,
    then the request body. The early response ends the request; the body must not then
    schedule it (nothing would release that reservation): the stream is refused instead."""
    headers, body = (m.SerializeToString() for m in req_llm("hello", "my-model", "my-model"))
    early_end = resp_body(b"data: [DONE]\n\n", eos=True).SerializeToString()
    data = h2.PREFACE + h2.frame(h2.HEADERS, h2.END_HEADERS, 1, _headers_block(h2.PROCESS_PATH))
    data += h2.frame(h2.DATA, 0, 1, b"".join(map(_grpc, (headers, early_end, body))))
    transport = asyncio.run(_play(server, data, []))
    assert _grpc_statuses(bytes(transport.written)) == ["3"]  # INVALID_ARGUMENT
    snapshot = server.director.pool.table.snapshot()
    assert sum(int(snapshot.inflight_requests[e.id]) for e in server.director.pool.endpoints()) == 0
