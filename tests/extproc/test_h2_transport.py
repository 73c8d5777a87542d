"""igw's own gRPC transport (``h2_transport.py``: ``--observer-port``, ``--grpc-transport=igw``),
driven by grpc's own client (C-core), for what the ext_proc tests (run on both transports) do
not cover: health checks, other methods, broken input, flow control, read batching, draining
and TLS."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import grpc
import pytest
from epp_harness import (
    destination,
    make_pool,
    resp_body,
    route_once,
    running_epp,
    start_epp,
    stop_process,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest
from test_observer_streams import (
    IDLE3,
    MODEL,
    end_route,
    observe,
    observed,
    observer_messages,
    route,
    sse_events,
    wait_for,
)

from igw.datalayer.testing import FakeModelServer, vllm_page
from igw.extproc.h2_transport import PROCESS_PATH
from igw.extproc.tls import self_signed

SIZES = "inference_objective_response_sizes_sum"


def observer_epp(**options):
    return running_epp(make_pool(IDLE3), observers_on_own_port=True, **options)


def observer_target(epp) -> str:
    return f"127.0.0.1:{epp.server.observer_port}"


async def health_status(target: str, service: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return reply.status


async def test_health_checks_on_the_observer_port_follow_readiness():
    async with observer_epp() as epp:
        target = observer_target(epp)
        assert await health_status(target, "readiness") == health_pb2.HealthCheckResponse.SERVING
        epp.server.readiness.draining = True
        assert await health_status(target, "") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await health_status(target, "liveness") == health_pb2.HealthCheckResponse.SERVING


async def test_other_methods_are_unimplemented_and_the_connection_stays_usable():
    async with observer_epp() as epp, grpc.aio.insecure_channel(observer_target(epp)) as channel:
        other = channel.unary_unary("/envoy.service.ext_proc.v3.ExternalProcessor/Other")
        try:
            await other(b"", timeout=5)
            raise AssertionError("an unknown method was answered")
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "not served by igw's transport" in (error.details() or "")
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_an_undecodable_message_spoils_only_its_own_stream():
    async with observer_epp() as epp, grpc.aio.insecure_channel(observer_target(epp)) as channel:
        raw = channel.stream_stream(PROCESS_PATH)  # bytes in, bytes out
        spoiled = raw()
        await spoiled.write(observed(observer_messages("x", [])[0]).SerializeToString())
        await spoiled.write(b"\xff\xff\xff\xff")  # not a ProcessingRequest
        await spoiled.write(b"more after it")
        call = await route(epp, "r-ok")
        await observe(epp, observer_messages("r-ok", sse_events()))
        await end_route(call)
        await spoiled.done_writing()
        assert await spoiled.code() == grpc.StatusCode.OK
        assert await wait_for(lambda: epp.director.open_streams == 0)
        assert epp.metric("inference_objective_input_tokens_count", MODEL) == 1


async def test_an_oversized_message_is_dropped_with_the_rest_of_its_stream():
    async with observer_epp() as epp:
        epp.server.observer.max_message = 4096
        call = await route(epp, "r-big")
        messages = observer_messages("r-big", sse_events())
        messages.insert(2, observed(resp_body(b"data: " + b"x" * 10_000 + b"\n\n")))
        _, replies = await observe(epp, messages)
        assert replies == []
        await end_route(call)
        assert await wait_for(lambda: epp.inflight() == 0)
        # the request finished on the routing stream's word, without the observer's usage
        assert epp.metric("inference_objective_request_duration_seconds_count", MODEL) == 1
        assert epp.metric("inference_objective_input_tokens_count", MODEL) is None


async def test_a_response_larger_than_every_window_flows_through_without_stalling():
    chunk = b"data: " + b"y" * 65_000 + b"\n\n"
    chunks = 320  # ~21 MB: 5x the stream window, past the connection's update threshold
    async with observer_epp() as epp:
        call = await route(epp, "r-large")
        messages = observer_messages("r-large", [chunk] * chunks + [b"data: [DONE]\n\n"])
        await asyncio.wait_for(observe(epp, messages), 60)
        await end_route(call)
        assert await wait_for(lambda: epp.inflight() == 0)
        assert epp.metric(SIZES, MODEL) == chunks * len(chunk) + len(b"data: [DONE]\n\n")


async def test_many_concurrent_streams_share_one_connection():
    async with observer_epp() as epp:
        streams = [observe(epp, observer_messages(f"alone-{i}", sse_events("m-many")))
                   for i in range(40)]  # fmt: skip
        await asyncio.wait_for(asyncio.gather(*streams), 30)
        labels = {"model_name": "m-many", "target_model_name": "m-many"}
        assert epp.metric("inference_objective_input_tokens_count", labels) == 40
        assert epp.director.open_streams == 0


async def test_a_client_that_does_not_speak_http2_is_disconnected_and_others_are_served():
    async with observer_epp() as epp:
        reader, writer = await asyncio.open_connection("127.0.0.1", epp.server.observer_port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: igw\r\n\r\n")
        await writer.drain()
        while await asyncio.wait_for(reader.read(65536), 5):  # the server's preface, then EOF
            pass
        writer.close()
        target = observer_target(epp)
        assert await health_status(target, "readiness") == health_pb2.HealthCheckResponse.SERVING


async def test_a_burst_is_read_in_batches_and_still_fully_observed():
    async with observer_epp() as epp:
        epp.server.observer.read_batch = 0.05
        call = await route(epp, "r-burst")
        events = sse_events(completion=250)
        events[3:3] = [events[0]] * 250
        await asyncio.wait_for(observe(epp, observer_messages("r-burst", events)), 30)
        await end_route(call)
        assert await wait_for(lambda: epp.inflight() == 0)
        assert epp.metric("inference_objective_output_tokens_sum", MODEL) == 250
        assert epp.metric(SIZES, MODEL) == sum(map(len, events))


async def test_a_connection_quiet_for_longer_than_the_read_batch_is_read_at_once():
    async with observer_epp() as epp:
        epp.server.observer.read_batch = 1.0
        seen: list[float] = []
        hook = epp.director.observe_first_token
        epp.director.observe_first_token = lambda *args: (seen.append(time.monotonic()),
                                                         hook(*args))  # fmt: skip
        call = await route(epp, "r-quiet")
        messages = observer_messages("r-quiet", sse_events())
        obs, _ = await observe(epp, messages[:2], close=False)
        await asyncio.sleep(1.2)  # the prefill: nothing arrives, the connection goes quiet
        sent = time.monotonic()
        await obs.write(messages[2])  # the first token
        assert await wait_for(lambda: bool(seen), timeout=2.0)
        assert seen[0] - sent < 0.5  # read at once, not after another 1 s batch
        obs.cancel()
        await end_route(call)


async def test_reads_are_never_batched_on_a_connection_that_carried_a_routing_stream():
    async with running_epp(make_pool(IDLE3), transport="igw") as epp:
        assert epp.server.main is not None
        epp.server.main.read_batch = 2.0
        for request_id in ("first", "second", "third"):
            started = time.monotonic()
            call = await asyncio.wait_for(route(epp, request_id), 5)
            assert time.monotonic() - started < 1.0  # not held back by a 2 s read batch
            await end_route(call)


async def test_stopping_ends_open_observer_streams_after_the_grace():
    async with observer_epp() as epp:
        call = await route(epp, "r-stop")
        obs, _ = await observe(epp, observer_messages("r-stop", sse_events())[:3], close=False)
        assert await wait_for(lambda: len(epp.director.live) == 0)
        await asyncio.wait_for(epp.server.observer.stop(0.1), 5)
        assert await asyncio.wait_for(obs.code(), 5) != grpc.StatusCode.OK
        await end_route(call)
        assert await wait_for(lambda: epp.inflight() == 0)
        assert epp.director.open_streams == 0


async def test_igw_epp_serves_the_observer_port_over_tls_with_its_certificate(tmp_path):
    cert, key = self_signed()
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    proc, line = await start_epp("--endpoints=127.0.0.1:1", "--secure-serving",
                                 f"--cert-path={tmp_path}", "--observer-port=0")  # fmt: skip
    try:
        match = re.search(r"observer streams on :(\d+)", line)
        assert match, line
        credentials = grpc.ssl_channel_credentials(root_certificates=cert)
        options = [("grpc.ssl_target_name_override", "localhost")]
        target = f"127.0.0.1:{match.group(1)}"
        async with grpc.aio.secure_channel(target, credentials, options=options) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            stream = channel.stream_stream(PROCESS_PATH)()
            for message in observer_messages("tls", sse_events()):
                await stream.write(message.SerializeToString())
            await stream.done_writing()
            assert await asyncio.wait_for(stream.code(), 10) == grpc.StatusCode.OK
    finally:
        await stop_process(proc)
    assert proc.returncode == 0


def test_the_observer_port_serves_on_uvloop_too():
    uvloop = pytest.importorskip("uvloop")

    async def observed_once() -> float | None:
        async with observer_epp() as epp:
            await observe(epp, observer_messages("alone", sse_events("m-uv")))
            labels = {"model_name": "m-uv", "target_model_name": "m-uv"}
            return epp.metric("inference_objective_input_tokens_sum", labels)

    assert uvloop.run(observed_once()) == 120


async def test_stopping_returns_once_the_last_stream_is_reset_by_envoy():
    async with running_epp(make_pool(IDLE3), transport="igw") as epp:
        call = await route(epp, "r-reset")
        assert epp.server.main is not None
        stopping = asyncio.create_task(epp.server.main.stop(30.0))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        call.cancel()  # Envoy resets the stream: nothing is left to wait for
        await asyncio.wait_for(stopping, 5)
        assert time.monotonic() - started < 5
        assert await wait_for(lambda: epp.inflight() == 0)


async def test_igw_epp_routes_on_its_own_transport_when_asked():
    replica = await FakeModelServer(vllm_page(waiting=0, kv_util=0.1, bulk=False)).start()
    proc, line = await start_epp(f"--endpoints={replica.address}", "--secure-serving=false",
                                 "--grpc-transport=igw")  # fmt: skip
    try:
        match = re.search(r":(\d+) \(plaintext, igw transport\)", line)
        assert match, line
        port = int(match.group(1))
        serving = health_pb2.HealthCheckResponse.SERVING
        assert await health_status(f"127.0.0.1:{port}", "") == serving
        replies = await route_once(port)
        assert destination(replies[0]) == replica.address
    finally:
        await stop_process(proc)
        await replica.stop()
    assert proc.returncode == 0


async def test_busy_polling_keeps_polling_after_reads_on_igws_transport_then_sleeps():
    async with running_epp(make_pool(IDLE3), transport="igw", busy_poll_us=50_000) as epp:
        poller = epp.server.poller
        assert poller is not None and epp.server.main is not None
        assert epp.server.main.on_read == poller.poke
        call = await route(epp, "r-busy")
        assert poller.spinning  # Envoy's messages were read less than 50 ms ago
        await end_route(call)
        assert await wait_for(lambda: not poller.spinning, timeout=5)


async def test_busy_polling_without_igws_transport_warns_that_nothing_drives_it(caplog):
    with caplog.at_level(logging.WARNING, logger="igw.extproc"):
        async with running_epp(
            make_pool(IDLE3), transport="grpcio", observers_on_own_port=False, busy_poll_us=1000
        ):
            pass
    assert "busy polling is on but has nothing to keep it going" in caplog.text


async def test_busy_polling_shows_on_the_epp_metrics_page():
    async with running_epp(make_pool(IDLE3), transport="igw", busy_poll_us=1000) as epp:
        call = await route(epp, "r-busy-metrics")
        await end_route(call)
        text = generate_latest(epp.metrics.registry).decode()
    assert "igw_busy_poll_window_seconds 0.001" in text
    spun = next(line for line in text.splitlines() if line.startswith("igw_busy_poll_seconds"))
    assert float(spun.split()[1]) > 0
