"""In-flight accounting and isolation: streams that break, cancel or lose their endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import random

import grpc
import pytest
from epp_harness import (
    Reporter,
    make_pool,
    req_body,
    req_headers,
    req_llm,
    resp_body,
    resp_headers,
    running_epp,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("epp_transport")

IDLE3 = [(0, 0.1), (0, 0.1), (0, 0.1)]


async def test_inflight_is_held_during_the_response_and_released_at_its_end():
    async with running_epp(make_pool(IDLE3)) as epp:
        call = epp.stub.Process()
        for message in req_llm("p", "my-model", "my-model"):
            await call.write(message)
        await call.read()
        await call.read()
        assert epp.inflight() == 1
        await call.write(resp_headers({":status": "200", "content-type": "text/event-stream"}))
        await call.read()
        await call.write(resp_body(b"data: [DONE]\n\n", eos=True))
        await call.read()
        assert await wait_for(lambda: epp.inflight() == 0)
        await call.done_writing()


async def test_client_cancel_mid_stream_releases_inflight():
    async with running_epp(make_pool(IDLE3)) as epp:
        call = epp.stub.Process()
        for message in req_llm("p", "my-model", "my-model"):
            await call.write(message)
        await call.read()
        await call.read()
        await call.write(resp_headers({":status": "200", "content-type": "text/event-stream"}))
        await call.read()
        assert epp.inflight() == 1
        call.cancel()
        assert await wait_for(lambda: epp.inflight() == 0)
        assert await wait_for(lambda: epp.director.open_streams == 0)


async def test_half_close_without_response_phase_releases_inflight():
    async with running_epp(make_pool(IDLE3)) as epp:
        await epp.exchange(req_llm("p", "my-model", "my-model"))
        assert await wait_for(lambda: epp.inflight() == 0)


async def test_endpoint_removed_mid_request_does_not_break_the_stream():
    pool = make_pool(IDLE3)
    async with running_epp(pool) as epp:
        call = epp.stub.Process()
        for message in req_llm("p", "my-model", "my-model"):
            await call.write(message)
        first = await call.read()
        await call.read()
        address = first.request_headers.response.header_mutation.set_headers[0].header.raw_value
        pool.remove(address.decode())
        await call.write(resp_headers({":status": "200", "content-type": "text/event-stream"}))
        await call.read()
        await call.write(resp_body(b"data: [DONE]\n\n", eos=True))
        reply = await call.read()
        assert reply.response_body.response.body_mutation.streamed_response.end_of_stream
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
        # the survivors are routable and carry no leaked reservation
        replies = await epp.exchange(req_llm("q", "my-model", "my-model"))
        assert replies[0].WhichOneof("response") == "request_headers"
        assert await wait_for(lambda: epp.inflight() == 0)


async def test_a_bad_stream_never_disturbs_concurrent_good_streams():
    async with running_epp(make_pool(IDLE3)) as epp:

        async def good(i: int) -> str:
            replies = await epp.exchange(
                [
                    *req_llm(f"prompt {i}", "my-model", "my-model"),
                    resp_headers({":status": "200", "content-type": "text/event-stream"}),
                    resp_body(b"data: [DONE]\n\n", eos=True),
                ]
            )
            return replies[-1].WhichOneof("response")

        async def bad(kind: int) -> None:
            try:
                if kind == 0:
                    await epp.exchange([req_body(b"{}")])  # out of order
                elif kind == 1:
                    await epp.exchange([req_headers({}), req_body(b"\xff\xfe")])  # broken body
                else:
                    call = epp.stub.Process()
                    await call.write(req_headers({}))
                    await call.write(req_body(b'{"model":"m","prompt":"x"}'))
                    call.cancel()
            except grpc.aio.AioRpcError:
                pass

        tasks = [good(i) for i in range(24)] + [bad(i % 3) for i in range(24)]
        results = await asyncio.gather(*tasks)
        assert results[:24] == ["response_body"] * 24
        assert await wait_for(lambda: epp.inflight() == 0)
        assert await wait_for(lambda: epp.director.open_streams == 0)


async def test_unexpected_exception_in_a_stage_becomes_grpc_unknown_not_a_crash():
    class Exploding:
        async def check(self, request) -> None:
            if request.incoming_model == "m":
                raise ZeroDivisionError("boom")

    async with running_epp(make_pool(IDLE3), admit_checks=[Exploding()]) as epp:
        try:
            await epp.exchange([req_headers({}), req_body(b'{"model":"m","prompt":"x"}')])
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNKNOWN
        else:
            raise AssertionError("expected a gRPC error")
        replies = await epp.exchange(req_llm("p", "my-model", "my-model"))
        assert replies[0].WhichOneof("response") == "request_headers"


async def test_envoy_response_body_mode_none_counts_a_clean_close_as_success():
    async with running_epp(make_pool(IDLE3)) as epp:
        await epp.exchange(
            [
                *req_llm("p", "my-model", "my-model"),
                resp_headers({":status": "200", "content-type": "text/event-stream"}),
            ]
        )
        labels = {"model_name": "my-model", "target_model_name": "my-model"}
        assert await wait_for(
            lambda: epp.metric("inference_objective_request_duration_seconds_count", labels) == 1
        )
        assert epp.inflight() == 0


async def test_stream_closed_before_any_response_is_not_counted_as_served():
    async with running_epp(make_pool(IDLE3)) as epp:
        await epp.exchange(req_llm("p", "my-model", "my-model"))
        await asyncio.sleep(0.05)
        labels = {"model_name": "my-model", "target_model_name": "my-model"}
        assert epp.metric("inference_objective_request_duration_seconds_count", labels) is None
        assert epp.inflight() == 0


async def test_cancelled_stream_is_not_reported_against_the_endpoint():
    reporter = Reporter()
    async with running_epp(make_pool(IDLE3), reporter=reporter) as epp:
        call = epp.stub.Process()
        for message in req_llm("p", "my-model", "my-model"):
            await call.write(message)
        await call.read()
        await call.read()
        await call.write(resp_headers({":status": "200", "content-type": "text/event-stream"}))
        await call.read()
        await call.write(resp_body(b'data: {"choices":[]}\n\n'))
        await call.read()
        call.cancel()
        assert await wait_for(lambda: epp.inflight() == 0)
        assert await wait_for(lambda: epp.director.open_streams == 0)
        assert reporter.reports == []


async def test_5xx_response_is_reported_against_the_served_endpoint():
    reporter = Reporter()
    served = {"envoy.lb": {"x-gateway-destination-endpoint-served": "192.168.1.3:8000"}}
    async with running_epp(make_pool(IDLE3), reporter=reporter) as epp:
        await epp.exchange(
            [
                *req_llm("p", "my-model", "my-model"),
                resp_headers({":status": "503"}, meta=served),
                resp_body(b"overloaded", eos=True),
            ]
        )
        assert await wait_for(lambda: reporter.reports == [("192.168.1.3:8000", False)])


async def test_many_streams_ended_at_random_points_leave_nothing_behind():
    """200 requests, 20 at a time, each ended by Envoy at a random point (reset, half-close,
    or a full exchange): afterwards no stream, reservation or observer link is left."""
    rng = random.Random(11)
    sse = {":status": "200", "content-type": "text/event-stream"}
    script = [*req_llm("p", "my-model", "my-model"), resp_headers(sse),
              *(resp_body(b'data: {"x": 1}\n\n') for _ in range(3)),
              resp_body(b"data: [DONE]\n\n", eos=True)]  # fmt: skip
    async with running_epp(make_pool(IDLE3)) as epp:

        async def drain(call) -> None:  # Envoy reads every reply as it comes
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                while await call.read() is not grpc.aio.EOF:
                    pass

        async def one(i: int) -> None:
            call = epp.stub.Process()
            reader = asyncio.create_task(drain(call))
            stop_at = rng.randrange(len(script) + 1)
            ending = rng.choice(("cancel", "half-close"))
            try:
                for message in script[:stop_at]:
                    await call.write(message)
                    await asyncio.sleep(0)
                if ending == "cancel":
                    call.cancel()
                else:
                    await call.done_writing()
                    await asyncio.wait_for(call.code(), 30)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                pass  # a stream igw ended (e.g. the response phase before any request)
            finally:
                call.cancel()
                await reader

        pending = list(range(200))

        async def worker() -> None:
            while pending:
                await one(pending.pop())

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(20))), 60)
        assert await wait_for(lambda: epp.director.open_streams == 0, 5)
        assert await wait_for(lambda: epp.inflight() == 0, 5)
        assert len(epp.director.live) == 0
        assert epp.engine.outstanding == 0
