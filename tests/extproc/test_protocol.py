"""ext_proc protocol details beyond the hermetic suite: conformance hooks, chunking, rewrite,
request ids, fallbacks, scores, trailers."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from epp_harness import (
    destination,
    lb_metadata,
    llm_body,
    make_pool,
    req_body,
    req_headers,
    req_llm,
    resp_body,
    resp_headers,
    running_epp,
    set_headers,
    streamed_body,
    subset_metadata,
)

pytestmark = pytest.mark.usefixtures("epp_transport")

IDLE3 = [(0, 0.1), (0, 0.1), (0, 0.1)]


async def test_steering_header_wins_over_subset_metadata():
    pool = make_pool(IDLE3)
    meta = subset_metadata(["192.168.1.1:8000"])
    async with running_epp(pool) as epp:
        messages = req_llm("p", "my-model", "my-model", meta=meta)
        messages[0].request_headers.headers.headers.add(
            key="test-epp-endpoint-selection", raw_value=b"192.168.1.3"
        )
        replies = await epp.exchange(messages)
        assert destination(replies[0]) == "192.168.1.3:8000"
        # the steering header is a client header like any other: re-emitted upstream
        assert "test-epp-endpoint-selection" in set_headers(
            replies[0].request_headers.response.header_mutation
        )


async def test_steering_header_matching_nothing_is_503():
    pool = make_pool(IDLE3)
    async with running_epp(pool) as epp:
        messages = req_llm("p", "my-model", "my-model")
        messages[0].request_headers.headers.headers.add(
            key="test-epp-endpoint-selection", raw_value=b"10.9.9.9:1"
        )
        replies = await epp.exchange(messages)
        assert replies[0].immediate_response.status.code == 503


async def test_subset_hint_as_comma_string_is_accepted():
    pool = make_pool(IDLE3)
    meta = subset_metadata("192.168.1.2:8000, 192.168.1.3:8000")
    async with running_epp(pool) as epp:
        replies = await epp.exchange(req_llm("p", "my-model", "my-model", meta=meta))
        assert destination(replies[0]) in {"192.168.1.2:8000", "192.168.1.3:8000"}


async def test_empty_subset_list_is_503():
    pool = make_pool(IDLE3)
    async with running_epp(pool) as epp:
        replies = await epp.exchange(req_llm("p", "my-model", "my-model", meta=subset_metadata([])))
        assert replies[0].immediate_response.status.code == 503


async def test_subset_metadata_ignored_when_filter_disabled():
    pool = make_pool([(0, 0.1), (9, 0.9)])
    meta = subset_metadata(["192.168.1.2:8000"])
    async with running_epp(pool, use_subset_metadata=False) as epp:
        replies = await epp.exchange(req_llm("p", "my-model", "my-model", meta=meta))
        assert destination(replies[0]) == "192.168.1.1:8000"


async def test_headers_only_request_honours_steering_header():
    pool = make_pool(IDLE3)
    async with running_epp(pool) as epp:
        headers = {"test-epp-endpoint-selection": "192.168.1.2"}
        replies = await epp.exchange([req_headers(headers, eos=True)])
        assert destination(replies[0]) == "192.168.1.2:8000"


async def test_served_endpoint_metadata_is_echoed_on_response_headers():
    pool = make_pool(IDLE3)
    served = {"envoy.lb": {"x-gateway-destination-endpoint-served": "192.168.1.2:8000"}}
    async with running_epp(pool) as epp:
        replies = await epp.exchange(
            [
                *req_llm("p", "my-model", "my-model"),
                resp_headers({":status": "200", "content-type": "application/json"}, meta=served),
                resp_body(b"{}", eos=True),
            ]
        )
        headers = set_headers(replies[2].response_headers.response.header_mutation)
        assert headers["x-conformance-test-served-endpoint"] == "192.168.1.2:8000"
        assert headers["x-went-into-resp-headers"] == "true"
        assert not replies[2].response_headers.response.clear_route_cache


async def test_request_id_is_generated_when_absent_and_re_emitted():
    pool = make_pool(IDLE3)
    async with running_epp(pool) as epp:
        replies = await epp.exchange(
            [req_headers({"hi": "mom"}), req_body(llm_body("my-model", "p"))]
        )
        request_id = set_headers(replies[0].request_headers.response.header_mutation)[
            "x-request-id"
        ]
        assert uuid.UUID(request_id).version == 4


async def test_large_body_is_returned_in_62000_byte_chunks_with_content_length():
    pool = make_pool(IDLE3)
    body = llm_body("my-model", "x" * 150_000)
    async with running_epp(pool) as epp:
        replies = await epp.exchange(
            [
                req_headers({"hi": "mom"}),
                req_body(body[:70_000], eos=False),
                req_body(body[70_000:]),
            ]
        )
        chunks = [r.request_body.response.body_mutation.streamed_response for r in replies[1:]]
        assert [len(c.body) for c in chunks] == [62_000, 62_000, len(body) - 124_000]
        assert [c.end_of_stream for c in chunks] == [False, False, True]
        assert b"".join(c.body for c in chunks) == body
        headers = set_headers(replies[0].request_headers.response.header_mutation)
        assert headers["Content-Length"] == str(len(body))


async def test_unchanged_body_is_forwarded_as_the_original_bytes():
    pool = make_pool(IDLE3)
    body = b'{ "prompt": "p",  "model": "my-model" }'
    async with running_epp(pool) as epp:
        replies = await epp.exchange([req_headers({}), req_body(body)])
        assert streamed_body(replies, "request_body") == (body, True)


async def test_rewrite_header_changes_body_and_reverse_rewrites_sse_response():
    pool = make_pool(IDLE3)
    async with running_epp(pool) as epp:
        replies = await epp.exchange(
            [
                *req_llm("p", "my-model", "tuned-model"),
                resp_headers({":status": "200", "content-type": "text/event-stream"}),
                resp_body(b'data: {"model":"tuned-model","choices":[]}\n\n'),
                resp_body(b"data: [DONE]\n\n", eos=True),
            ]
        )
        assert json.loads(streamed_body(replies[:2], "request_body")[0])["model"] == "tuned-model"
        body, eos = streamed_body(replies, "response_body")
        assert body == b'data: {"model":"my-model","choices":[]}\n\ndata: [DONE]\n\n' and eos


async def test_reverse_rewrite_in_buffered_json_response():
    pool = make_pool(IDLE3)
    async with running_epp(pool) as epp:
        replies = await epp.exchange(
            [
                *req_llm("p", "my-model", "tuned-model"),
                resp_headers({":status": "200", "content-type": "application/json"}),
                resp_body(b'{"model": "tuned-model", "usage": {"prompt_tokens": 2}}', eos=True),
            ]
        )
        body, _ = streamed_body(replies, "response_body")
        assert body == b'{"model": "my-model", "usage": {"prompt_tokens": 2}}'


async def test_large_buffered_response_is_returned_in_chunks():
    pool = make_pool(IDLE3)
    payload = json.dumps({"data": "y" * 130_000}).encode()
    async with running_epp(pool) as epp:
        replies = await epp.exchange(
            [
                *req_llm("p", "my-model", "my-model"),
                resp_headers({":status": "200", "content-type": "application/json"}),
                resp_body(payload[:100_000]),
                resp_body(payload[100_000:], eos=True),
            ]
        )
        bodies = [r for r in replies if r.WhichOneof("response") == "response_body"]
        assert len(bodies) == 3
        assert streamed_body(replies, "response_body") == (payload, True)


async def test_ranked_fallback_list_in_header_and_metadata():
    pool = make_pool([(0, 0.1), (5, 0.5), (9, 0.9)])
    async with running_epp(pool, k=3) as epp:
        replies = await epp.exchange(req_llm("p", "my-model", "my-model"))
        expected = "192.168.1.1:8000,192.168.1.2:8000,192.168.1.3:8000"
        assert destination(replies[0]) == expected
        assert lb_metadata(replies[0]) == {"x-gateway-destination-endpoint": expected}


async def test_endpoint_scores_are_emitted_when_asked():
    pool = make_pool([(0, 0.1), (9, 0.9)])
    async with running_epp(
        pool, with_scores=True, director_options={"emit_endpoint_scores": True}
    ) as epp:
        replies = await epp.exchange(req_llm("p", "my-model", "my-model"))
        scores = lb_metadata(replies[0])["x-gateway-destination-endpoint-scores"]
        assert set(scores) == {"192.168.1.1:8000", "192.168.1.2:8000"}
        assert scores["192.168.1.1:8000"] > scores["192.168.1.2:8000"]


async def test_request_trailers_after_body_get_no_reply():
    pool = make_pool(IDLE3)
    async with running_epp(pool) as epp:
        trailers = pb.ProcessingRequest(request_trailers=pb.HttpTrailers())
        replies = await epp.exchange([*req_llm("p", "my-model", "my-model"), trailers])
        assert [r.WhichOneof("response") for r in replies] == ["request_headers", "request_body"]


async def test_request_trailers_before_body_end_complete_the_request():
    pool = make_pool(IDLE3)
    body = llm_body("my-model", "p")
    async with running_epp(pool) as epp:
        trailers = pb.ProcessingRequest(request_trailers=pb.HttpTrailers())
        replies = await epp.exchange([req_headers({}), req_body(body, eos=False), trailers])
        assert [r.WhichOneof("response") for r in replies] == [
            "request_headers",
            "request_body",
            "request_trailers",
        ]


async def test_response_trailers_are_answered_and_finish_the_request():
    pool = make_pool(IDLE3)
    async with running_epp(pool) as epp:
        trailers = pb.ProcessingRequest(response_trailers=pb.HttpTrailers())
        replies = await epp.exchange(
            [
                *req_llm("p", "my-model", "my-model"),
                resp_headers({":status": "200", "content-type": "text/event-stream"}),
                resp_body(b"data: {}\n\n"),
                trailers,
            ]
        )
        assert replies[-1].WhichOneof("response") == "response_trailers"
        assert epp.inflight() == 0


async def test_plain_value_headers_are_read_as_well_as_raw_value():
    pool = make_pool(IDLE3)
    async with running_epp(pool) as epp:
        message = req_headers({})
        message.request_headers.headers.headers.add(key="X-Request-Id", value="plain-id")
        replies = await epp.exchange([message, req_body(llm_body("my-model", "p"))])
        headers = set_headers(replies[0].request_headers.response.header_mutation)
        assert headers["x-request-id"] == "plain-id"


async def test_count_tokens_request_ends_the_stream_after_the_request_phase():
    pool = make_pool(IDLE3)
    async with running_epp(pool, config_text=_DEFAULT_PARSERS) as epp:
        held_open = asyncio.Event()

        async def request_phase_then_silence():
            yield req_headers({":path": "/v1/messages/count_tokens"})
            yield req_body(b'{"model":"m","messages":[]}')
            # never half-close (nor send the response phase, which would race the server's
            # end of the stream): only the server can end it, else the timeout fails the test
            await held_open.wait()

        async def replies_until_the_end():
            return [r async for r in epp.stub.Process(request_phase_then_silence())]

        try:
            replies = await asyncio.wait_for(replies_until_the_end(), timeout=10)
        finally:
            held_open.set()
        assert [r.WhichOneof("response") for r in replies] == ["request_headers", "request_body"]
        assert epp.inflight() == 0


_DEFAULT_PARSERS = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins: [{type: queue-scorer}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer}]}]
"""
