"""Observer streams (Envoy ``observability_mode``), over real gRPC: never answered, joined to
the routing stream by ``x-request-id``, usage recorded once whichever stream ends first."""

from __future__ import annotations

import json

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from epp_harness import (
    Reporter,
    make_pool,
    req_headers,
    req_llm,
    resp_body,
    resp_headers,
    running_epp,
    wait_for,
)

from igw.extproc.observer import LiveRequests
from igw.pipeline import Request

pytestmark = pytest.mark.usefixtures("observer_transport", "epp_transport")

IDLE3 = [(0, 0.1), (0, 0.1), (0, 0.1)]
SSE = {":status": "200", "content-type": "text/event-stream"}
MODEL = {"model_name": "my-model", "target_model_name": "my-model"}


def observed(message: pb.ProcessingRequest) -> pb.ProcessingRequest:
    message.observability_mode = True
    return message


def sse_events(model: str = "my-model", *, prompt: int = 120, completion: int = 7,
               done: bool = True) -> list[bytes]:  # fmt: skip
    delta = {"id": "c", "object": "chat.completion.chunk", "model": model,
             "choices": [{"index": 0, "delta": {"content": "tok"}}]}  # fmt: skip
    usage = {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}
    events = [b"data: " + json.dumps(delta).encode() + b"\n\n" for _ in range(3)]
    events.append(b"data: " + json.dumps(usage).encode() + b"\n\n")
    if done:
        events.append(b"data: [DONE]\n\n")
    return events


def observer_messages(request_id: str | None, events: list[bytes], *, headers=SSE,
                      eos: bool = True, extra: dict | None = None) -> list:  # fmt: skip
    request = {":path": "/v1/completions", **(extra or {})}
    if request_id is not None:
        request["x-request-id"] = request_id
    out = [req_headers(request), resp_headers(headers)]
    out += [resp_body(e) for e in events[:-1]]
    if events:
        out.append(resp_body(events[-1], eos=eos))
    return [observed(m) for m in out]


async def observe(epp, messages, *, close: bool = True):
    """Sends an observer stream; returns (call, replies) once the server ended it (if close)."""
    call = epp.observer_stub.Process()
    for message in messages:
        await call.write(message)
    if not close:
        return call, []
    await call.done_writing()
    replies = []
    while (reply := await call.read()) is not grpc.aio.EOF:
        replies.append(reply)
    assert await call.code() == grpc.StatusCode.OK
    return call, replies


async def route(epp, request_id: str = "test-request-id"):
    """A routing stream through the request phase (headers + body answered)."""
    call = epp.stub.Process()
    messages = req_llm("p", "my-model", "my-model")
    for header in messages[0].request_headers.headers.headers:
        if header.key == "x-request-id":
            header.raw_value = request_id.encode()
    for message in messages:
        await call.write(message)
    assert (await call.read()).WhichOneof("response") == "request_headers"
    await call.read()
    return call


async def end_route(call, headers=SSE, meta=None) -> None:
    """Response headers (answered) then Envoy's clean close, as with response_body_mode NONE."""
    await call.write(resp_headers(headers, meta=meta))
    assert (await call.read()).WhichOneof("response") == "response_headers"
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


# ----------------------------------------------------------------------------- no replies


async def test_observer_stream_is_never_answered_whatever_it_carries():
    async with running_epp(make_pool(IDLE3)) as epp:
        messages = observer_messages("nobody", sse_events())
        messages += [observed(pb.ProcessingRequest()), observed(req_headers({"a": "b"}, eos=True))]
        messages.append(observed(pb.ProcessingRequest(response_trailers=pb.HttpTrailers())))
        _, replies = await observe(epp, messages)
        assert replies == []


async def test_observer_request_headers_alone_get_no_routing_reply():
    # a routing stream would answer end_of_stream headers at once with a destination
    async with running_epp(make_pool(IDLE3)) as epp:
        _, replies = await observe(epp, [observed(req_headers({"x-request-id": "r"}, eos=True))])
        assert replies == []
        assert epp.inflight() == 0


async def test_observability_message_on_a_routing_stream_is_dropped_unanswered():
    async with running_epp(make_pool(IDLE3)) as epp:
        call = await route(epp)
        await call.write(observed(resp_body(b"data: x\n\n")))
        await end_route(call)  # the next reply is the response headers', not the body's
        assert await wait_for(lambda: epp.inflight() == 0)


# ----------------------------------------------------------------------------- joined to routing


async def test_usage_recorded_once_when_the_observer_ends_first():
    async with running_epp(make_pool(IDLE3)) as epp:
        call = await route(epp, "r-1")
        _, replies = await observe(epp, observer_messages("r-1", sse_events()))
        assert replies == []
        assert epp.inflight() == 1  # the routing stream still holds the request
        await end_route(call)
        assert await wait_for(lambda: epp.inflight() == 0)
        assert epp.metric("inference_objective_input_tokens_count", MODEL) == 1
        assert epp.metric("inference_objective_input_tokens_sum", MODEL) == 120
        assert epp.metric("inference_objective_output_tokens_sum", MODEL) == 7
        assert epp.metric("inference_objective_request_duration_seconds_count", MODEL) == 1


async def test_usage_recorded_once_when_routing_closes_first():
    async with running_epp(make_pool(IDLE3)) as epp:
        call = await route(epp, "r-2")
        events = sse_events()
        messages = observer_messages("r-2", events)
        obs, _ = await observe(epp, messages[:3], close=False)
        assert await wait_for(lambda: len(epp.director.live) == 0)  # the observer joined
        await end_route(call)
        assert epp.metric("inference_objective_request_duration_seconds_count", MODEL) is None
        for message in messages[3:]:
            await obs.write(message)
        await obs.done_writing()
        assert await obs.code() == grpc.StatusCode.OK
        assert await wait_for(lambda: epp.inflight() == 0)
        assert epp.metric("inference_objective_input_tokens_count", MODEL) == 1
        assert epp.metric("inference_objective_input_tokens_sum", MODEL) == 120
        assert epp.metric("inference_objective_request_duration_seconds_count", MODEL) == 1


async def test_observer_gives_the_time_to_first_byte():
    async with running_epp(make_pool(IDLE3)) as epp:
        call = await route(epp, "r-3")
        await observe(epp, observer_messages("r-3", sse_events()))
        await end_route(call)
        labels = {**MODEL, "fairness_id": "default-flow", "priority": "2"}
        assert await wait_for(lambda: epp.metric("llm_d_epp_request_ttft_seconds_count", labels))


async def test_silent_observer_holds_the_request_only_for_the_grace():
    async with running_epp(make_pool(IDLE3), director_options={"observer_grace": 0.05}) as epp:
        call = await route(epp, "r-4")
        obs, _ = await observe(epp, observer_messages("r-4", sse_events())[:2], close=False)
        assert await wait_for(lambda: len(epp.director.live) == 0)
        await end_route(call)
        assert await wait_for(lambda: epp.inflight() == 0)
        assert epp.metric("inference_objective_request_duration_seconds_count", MODEL) == 1
        await obs.write(observed(resp_body(sse_events()[-2], eos=True)))
        await obs.done_writing()
        assert await obs.code() == grpc.StatusCode.OK
        assert epp.metric("inference_objective_request_duration_seconds_count", MODEL) == 1
        assert epp.metric("inference_objective_input_tokens_count", MODEL) is None


async def test_observer_joining_after_routing_ended_records_nothing_twice():
    async with running_epp(make_pool(IDLE3)) as epp:
        call = await route(epp, "r-5")
        await end_route(call)
        await observe(epp, observer_messages("r-5", sse_events()))
        # unknown by then: recorded on its own, under the response's model, tokens once
        assert epp.metric("inference_objective_input_tokens_count", MODEL) == 1


async def test_sse_stream_ending_without_done_reports_the_endpoint_as_failing():
    reporter = Reporter()
    served = {"envoy.lb": {"x-gateway-destination-endpoint-served": "192.168.1.2:8000"}}
    async with running_epp(make_pool(IDLE3), reporter=reporter) as epp:
        call = await route(epp, "r-6")
        await observe(epp, observer_messages("r-6", sse_events(done=False)))
        await end_route(call, meta=served)
        assert await wait_for(lambda: reporter.reports == [("192.168.1.2:8000", False)])


@pytest.mark.parametrize(
    "last",
    [
        [b"data: [DONE]\n\n"],
        [b"data: [DO", b"NE]\n\n"],  # cut by the chunk boundary
        [b'event: response.completed\ndata: {"type": "response.completed"}\n\n'],
        [b'event: message_stop\ndata: {"type": "message_stop"}\n\n'],
    ],
    ids=["done", "done-split", "responses-api", "anthropic"],
)
async def test_complete_sse_stream_reports_the_endpoint_as_serving(last):
    reporter = Reporter()
    served = {"envoy.lb": {"x-gateway-destination-endpoint-served": "192.168.1.2:8000"}}
    async with running_epp(make_pool(IDLE3), reporter=reporter) as epp:
        call = await route(epp, "r-7")
        await observe(epp, observer_messages("r-7", sse_events(done=False) + last))
        await end_route(call, meta=served)
        assert await wait_for(lambda: reporter.reports == [("192.168.1.2:8000", True)])


async def test_5xx_seen_only_by_the_observer_is_reported_against_the_served_endpoint():
    reporter = Reporter()
    served = {"envoy.lb": {"x-gateway-destination-endpoint-served": "192.168.1.3:8000"}}
    async with running_epp(make_pool(IDLE3), reporter=reporter) as epp:
        call = await route(epp, "r-5xx")
        messages = observer_messages("r-5xx", [b"overloaded"], headers={":status": "503"})
        messages[1] = observed(resp_headers({":status": "503"}, meta=served))
        await observe(epp, messages)
        await call.done_writing()  # this routing stream is not sent the response headers
        assert await call.code() == grpc.StatusCode.OK
        assert await wait_for(lambda: reporter.reports == [("192.168.1.3:8000", False)])


async def test_observer_broken_mid_response_leaves_the_outcome_unknown():
    reporter = Reporter()
    async with running_epp(make_pool(IDLE3), reporter=reporter) as epp:
        call = await route(epp, "r-8")
        obs, _ = await observe(epp, observer_messages("r-8", sse_events())[:3], close=False)
        assert await wait_for(lambda: len(epp.director.live) == 0)
        obs.cancel()
        assert await wait_for(lambda: epp.director.open_streams == 1)
        await end_route(call)
        assert await wait_for(lambda: epp.inflight() == 0)
        assert reporter.reports == []  # the client may have left: nobody is blamed
        assert epp.metric("inference_objective_request_duration_seconds_count", MODEL) is None


# ----------------------------------------------------------------------------- observers alone


async def test_unknown_request_id_records_tokens_under_the_response_model():
    async with running_epp(make_pool(IDLE3)) as epp:
        _, replies = await observe(epp, observer_messages("nobody", sse_events("m-obs")))
        assert replies == []
        labels = {"model_name": "m-obs", "target_model_name": "m-obs"}
        assert epp.metric("inference_objective_input_tokens_sum", labels) == 120
        assert epp.metric("inference_objective_output_tokens_count", labels) == 1


async def test_observer_only_deployment_reads_non_streamed_json_usage():
    usage = {"prompt_tokens": 11, "completion_tokens": 3}
    body = json.dumps({"id": "x", "model": "m-json", "choices": [], "usage": usage}).encode()
    headers = {":status": "200", "content-type": "application/json"}
    async with running_epp(make_pool(IDLE3)) as epp:
        messages = observer_messages(None, [body[:20], body[20:]], headers=headers)
        _, replies = await observe(epp, messages)
        assert replies == []
        labels = {"model_name": "m-json", "target_model_name": "m-json"}
        assert epp.metric("inference_objective_input_tokens_sum", labels) == 11
        assert epp.director.open_streams == 0


async def test_observer_only_5xx_is_reported_against_the_routed_endpoint():
    reporter = Reporter()
    extra = {"x-gateway-destination-endpoint": "192.168.1.3:8000"}
    async with running_epp(make_pool(IDLE3), reporter=reporter) as epp:
        messages = observer_messages("nobody", [b"overloaded"], headers={":status": "503"},
                                     extra=extra)  # fmt: skip
        await observe(epp, messages)
        assert reporter.reports == [("192.168.1.3:8000", False)]


@pytest.mark.parametrize(
    ("headers", "chunks"),
    [
        ({":status": "200", "content-type": "application/json"}, [b'{"model": "m", "usage": {']),
        (SSE, [b'data: {"model": "m", "usage": {"prompt_tokens": \n\n', b"data: [DONE\xff\n"]),
        (SSE, [b"\xff\xfe" * 5000, b"data: \x00\n\n"]),
        ({":status": "banana", "content-type": "text/event-stream"}, [b'data: {"usage": 5}\n\n']),
        (SSE, [b'data: {"model": "' + b"\\" * 3000 + b'"}\n\n']),
    ],
    ids=["broken-json", "broken-sse", "binary", "bad-status", "escaped-model"],
)
async def test_bad_bodies_on_observer_streams_are_harmless(headers, chunks):
    async with running_epp(make_pool(IDLE3)) as epp:
        call = await route(epp, "r-bad")
        messages = observer_messages("r-bad", chunks, headers=headers)
        messages.insert(1, observed(resp_body(b"body before headers")))
        _, replies = await observe(epp, messages)
        assert replies == []
        await end_route(call)
        assert await wait_for(lambda: epp.inflight() == 0)
        _, replies = await observe(epp, observer_messages("other", chunks, headers=headers))
        assert replies == []
        # the server still routes
        call = await route(epp, "r-after")
        await end_route(call)
        assert await wait_for(lambda: epp.director.open_streams == 0)


async def test_internal_error_on_an_observer_is_unanswered_and_frees_the_routing_stream(
    monkeypatch,
):
    from igw.extproc.observer import Observed

    def explode(self, chunk):
        raise RuntimeError("boom")

    monkeypatch.setattr(Observed, "chunk", explode)
    async with running_epp(make_pool(IDLE3), director_options={"observer_grace": 30.0}) as epp:
        call = await route(epp, "r-err")
        _, replies = await observe(epp, observer_messages("r-err", sse_events()))
        assert replies == []
        await end_route(call)
        assert await wait_for(lambda: epp.inflight() == 0, timeout=1.0)  # not the 30 s grace
        assert epp.metric("inference_objective_request_duration_seconds_count", MODEL) == 1


async def test_usage_is_not_parsed_when_usage_metrics_are_off():
    async with running_epp(make_pool(IDLE3)) as epp:
        stages = epp.director.pipeline.response_stages
        stages[:] = [s for s in stages if s.name != "usage"]
        epp.director.usage_enabled = False
        call = await route(epp, "r-off")
        await observe(epp, observer_messages("r-off", sse_events()))
        await end_route(call)
        assert await wait_for(lambda: epp.inflight() == 0)
        assert epp.metric("inference_objective_request_duration_seconds_count", MODEL) == 1
        assert epp.metric("inference_objective_input_tokens_count", MODEL) is None


# ----------------------------------------------------------------------------- bounded map


async def test_no_link_is_left_after_requests_seen_by_one_side_only():
    async with running_epp(make_pool(IDLE3)) as epp:
        for i in range(20):
            await end_route(await route(epp, f"only-route-{i}"))
            await observe(epp, observer_messages(f"only-observer-{i}", sse_events()))
        assert len(epp.director.live) == 0
        assert await wait_for(lambda: epp.director.open_streams == 0)
        assert epp.inflight() == 0


async def test_links_of_open_routing_streams_are_bounded_in_count():
    async with running_epp(make_pool(IDLE3), director_options={"max_live_requests": 4}) as epp:
        calls = [await route(epp, f"open-{i}") for i in range(10)]
        assert len(epp.director.live) == 4
        for call in calls:
            await end_route(call)
        assert len(epp.director.live) == 0
        assert await wait_for(lambda: epp.inflight() == 0)


def test_links_older_than_the_age_bound_are_forgotten():
    now = [0.0]
    live = LiveRequests(max_entries=100, max_age=5.0, clock=lambda: now[0])
    for i in range(10):
        live.add(None, Request(request_id=f"id-{i}"))  # type: ignore[arg-type]
        now[0] += 1.0
    assert live.take("id-2") is None  # 8 s old at 10 s
    assert live.take("id-7") is not None
    live.add(None, Request(request_id="late"))  # type: ignore[arg-type]
    assert len(live) == 5  # id-5, id-6, id-8, id-9 and late (older ones expired, id-7 taken)


def test_live_requests_reject_nonsense_bounds():
    with pytest.raises(ValueError, match="max_entries"):
        LiveRequests(max_entries=0)
