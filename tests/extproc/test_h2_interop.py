"""igw's HTTP/2 transport against a second client implementation (python-hyper's ``h2``), with
the framing choices grpc's C-core client never makes: header blocks split into CONTINUATION
frames, padded DATA, one gRPC message cut across many DATA frames, several messages in one
frame, a header list beyond igw's limit. Envoy may do any of these."""

from __future__ import annotations

import asyncio

import pytest
from epp_harness import make_pool, running_epp
from test_observer_streams import IDLE3, MODEL, end_route, observer_messages, route, sse_events

from igw.extproc.h2_transport import PROCESS_PATH

h2_config = pytest.importorskip("h2.config")
h2_connection = pytest.importorskip("h2.connection")
h2_events = pytest.importorskip("h2.events")


def grpc_frame(message) -> bytes:
    data = message.SerializeToString()
    return b"\0" + len(data).to_bytes(4, "big") + data


class Client:
    """A bare HTTP/2 client: send what a test says, collect what comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2_connection.H2Connection(h2_config.H2Configuration(client_side=True))
        self.events: list = []

    @classmethod
    async def connect(cls, port: int) -> Client:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        client.conn.initiate_connection()
        await client.flush()
        return client

    async def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    def headers(self, extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
        return [(":method", "POST"), (":scheme", "http"), (":authority", "igw"),
                (":path", PROCESS_PATH.decode()), ("content-type", "application/grpc"),
                ("te", "trailers"), *(extra or [])]  # fmt: skip

    async def until_stream_ends(self, stream_id: int, timeout: float = 5.0) -> dict:
        """Read until ``stream_id`` ends; its trailers (or a GOAWAY) as a dict."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            data = await asyncio.wait_for(self.reader.read(65536), deadline - loop.time())
            if not data:
                return {"closed": "true"}
            for event in self.conn.receive_data(data):
                self.events.append(event)
                if isinstance(event, h2_events.TrailersReceived) and event.stream_id == stream_id:
                    return {k.decode(): v.decode() for k, v in event.headers}
                if isinstance(event, h2_events.ConnectionTerminated):
                    return {"goaway": str(event.error_code)}
            await self.flush()
        raise TimeoutError(f"stream {stream_id} did not end")

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def observe_with_h2(epp, request_id: str, send) -> dict:
    """A routed request whose observer stream ``send(client, stream_id, messages)`` writes
    with h2 (headers included); the observer stream's trailers, once routing has ended."""
    call = await route(epp, request_id)
    client = await Client.connect(epp.server.observer_port)
    stream_id = client.conn.get_next_available_stream_id()
    send(client, stream_id, [grpc_frame(m) for m in observer_messages(request_id, sse_events())])
    client.conn.end_stream(stream_id)
    await client.flush()
    trailers = await client.until_stream_ends(stream_id)
    await client.close()
    await end_route(call)
    return trailers


async def test_headers_in_continuation_frames_and_padded_frames_are_understood():
    def send(client, stream_id, messages):
        # ~40 KB of headers: more than one 16 KB frame (the largest until igw's SETTINGS
        # arrive), so h2 sends HEADERS + CONTINUATION
        client.conn.send_headers(stream_id, client.headers([("x-big", "v" * 40_000)]))
        for message in messages:
            client.conn.send_data(stream_id, message, pad_length=7)

    async with running_epp(make_pool(IDLE3), observers_on_own_port=True) as epp:
        trailers = await observe_with_h2(epp, "r-cont", send)
        assert trailers.get("grpc-status") == "0", trailers
        assert epp.metric("inference_objective_input_tokens_sum", MODEL) == 120


async def test_messages_cut_across_frames_and_packed_into_one_frame_are_all_read():
    def send(client, stream_id, messages):
        client.conn.send_headers(stream_id, client.headers())
        client.conn.send_data(stream_id, b"".join(messages[:3]))  # three in one frame
        rest = b"".join(messages[3:])
        for start in range(0, len(rest), 7):  # 7-byte DATA frames: every message cut
            client.conn.send_data(stream_id, rest[start : start + 7])

    async with running_epp(make_pool(IDLE3), observers_on_own_port=True) as epp:
        trailers = await observe_with_h2(epp, "r-cut", send)
        assert trailers.get("grpc-status") == "0", trailers
        assert epp.metric("inference_objective_output_tokens_sum", MODEL) == 7


async def test_a_header_list_beyond_the_limit_ends_only_that_connection():
    async with running_epp(make_pool(IDLE3), observers_on_own_port=True) as epp:
        client = await Client.connect(epp.server.observer_port)
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream_id, client.headers([("x-huge", "v" * 100_000)]))
        await client.flush()
        ended = await client.until_stream_ends(stream_id)
        await client.close()
        assert "goaway" in ended or "closed" in ended, ended
        # the server goes on serving other connections
        other = await Client.connect(epp.server.observer_port)
        stream_id = other.conn.get_next_available_stream_id()
        other.conn.send_headers(stream_id, other.headers())
        for message in observer_messages("alone", sse_events("m-after")):
            other.conn.send_data(stream_id, grpc_frame(message))
        other.conn.end_stream(stream_id)
        await other.flush()
        assert (await other.until_stream_ends(stream_id)).get("grpc-status") == "0"
        await other.close()
        labels = {"model_name": "m-after", "target_model_name": "m-after"}
        assert epp.metric("inference_objective_input_tokens_sum", labels) == 120
