"""``igw bbr``: body model -> X-Gateway-Model-Name, over real gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys

import epp_harness
import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from epp_harness import ENV, req_body, req_headers, set_headers, stop_process, streamed_body

from igw.extproc.bbr import BbrProcessor, BbrServicer
from igw.extproc.h2_transport import H2GrpcServer
from igw.extproc.health import HealthServicer

pytestmark = pytest.mark.usefixtures("epp_transport")  # grpc.aio and igw's transport


@contextlib.asynccontextmanager
async def bbr_stub():
    server: grpc.aio.Server | H2GrpcServer
    if epp_harness.EPP_TRANSPORT == "igw":
        server = H2GrpcServer(BbrProcessor(max_body_bytes=1 << 20), HealthServicer(lambda: True),
                              host="127.0.0.1", port=0, read_batch=0.0)  # fmt: skip
        await server.start()
        port = server.port
    else:
        server = grpc.aio.server()
        servicer = BbrServicer(max_body_bytes=1 << 20)
        pb_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield pb_grpc.ExternalProcessorStub(channel)
    finally:
        await channel.close()
        await server.stop(0)


async def exchange(stub, messages):
    async def gen():
        for message in messages:
            yield message

    return [reply async for reply in stub.Process(gen())]


async def test_model_is_copied_into_the_header_and_route_cache_cleared():
    body = b'{"model":"chatbot","messages":[{"role":"user","content":"hi"}]}'
    async with bbr_stub() as stub:
        replies = await exchange(
            stub, [req_headers({":path": "/v1/chat/completions"}), req_body(body[:10], eos=False),
                   req_body(body[10:])]
        )  # fmt: skip
    common = replies[0].request_headers.response
    assert common.clear_route_cache
    assert set_headers(common.header_mutation) == {"X-Gateway-Model-Name": "chatbot"}
    assert streamed_body(replies, "request_body") == (body, True)


@pytest.mark.parametrize(
    "body", [b'{"prompt":"no model"}', b"not json at all", b'{"model": 7}', b"[1,2]"]
)
async def test_bodies_without_a_string_model_pass_through_untouched(body):
    async with bbr_stub() as stub:
        replies = await exchange(stub, [req_headers({}), req_body(body)])
    common = replies[0].request_headers.response
    assert not common.clear_route_cache and not common.header_mutation.set_headers
    assert streamed_body(replies, "request_body") == (body, True)


async def test_headers_only_request_is_answered_at_once():
    async with bbr_stub() as stub:
        replies = await exchange(stub, [req_headers({":method": "GET"}, eos=True)])
    assert [r.WhichOneof("response") for r in replies] == ["request_headers"]


async def test_body_before_headers_is_invalid_argument():
    async with bbr_stub() as stub:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await exchange(stub, [req_body(b'{"model":"m"}')])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# the child imports the same igw as this process (source tree or installed package)


@pytest.mark.parametrize("busy_poll", ["0", "1000"], ids=["", "busy-poll"])
async def test_bbr_process_starts_and_routes(busy_poll):
    env = ENV
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "igw", "bbr", "--grpc-port=0", "--grpc-health-port=0",
        "--secure-serving=false", "--drain-timeout=0s",
        f"--grpc-transport={epp_harness.EPP_TRANSPORT}", f"--busy-poll-us={busy_poll}",
        env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        port = int(re.search(r":(\d+) \(plaintext, (grpcio|igw)\)", line).group(1))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            replies = await exchange(
                pb_grpc.ExternalProcessorStub(channel),
                [req_headers({}), req_body(b'{"model":"recommender","prompt":"x"}')],
            )
        headers = set_headers(replies[0].request_headers.response.header_mutation)
        assert headers == {"X-Gateway-Model-Name": "recommender"}
    finally:
        await stop_process(proc)
    assert proc.returncode == 0


def test_bbr_refuses_a_busy_poll_window_out_of_range():
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "igw", "bbr", "--busy-poll-us=-1"],
        env=ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--busy-poll-us: expected microseconds from 0 (off) to 1000000" in result.stderr
