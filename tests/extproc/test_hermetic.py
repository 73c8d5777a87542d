"""The reference picker's hermetic ext_proc cases (REFERENCE 2.1), over real gRPC."""

from __future__ import annotations

import json

import pytest
from epp_harness import (
    PASSTHROUGH_CONFIG,
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


def assert_routed(replies, endpoint: str, body: bytes) -> None:
    """The reference's ExpectRouteTo: exactly 2 replies, headers then the whole body."""
    assert len(replies) == 2
    headers_reply, body_reply = replies
    common = headers_reply.request_headers.response
    assert common.clear_route_cache
    assert set_headers(common.header_mutation) == {
        "x-gateway-destination-endpoint": endpoint,
        "Content-Length": str(len(body)),
        "hi": "mom",
        "x-request-id": "test-request-id",
    }
    assert lb_metadata(headers_reply) == {"x-gateway-destination-endpoint": endpoint}
    streamed = body_reply.request_body.response.body_mutation.streamed_response
    assert (streamed.body, streamed.end_of_stream) == (body, True)


async def test_select_lower_queue_and_kv_cache():
    pool = make_pool([(3, 0.2), (0, 0.1), (10, 0.2)])
    async with running_epp(pool) as epp:
        replies = await epp.exchange(req_llm("test1", "my-model", "my-model-12345"))
        assert_routed(replies, "192.168.1.2:8000", llm_body("my-model-12345", "test1"))
        labels = {"model_name": "my-model", "target_model_name": "my-model-12345", "priority": "2"}
        assert epp.metric("inference_objective_request_total", labels) == 1
        assert epp.metric("inference_pool_ready_pods", {"name": pool.name}) == 3


async def test_select_active_lora_with_low_queue():
    pool = make_pool(
        [(0, 0.2, "foo", "bar"), (0, 0.1, "foo", "sql-lora-1fdg2"), (10, 0.2, "foo", "bar")]
    )
    async with running_epp(pool) as epp:
        replies = await epp.exchange(req_llm("test2", "sql-lora", "sql-lora-1fdg2"))
        assert_routed(replies, "192.168.1.2:8000", llm_body("sql-lora-1fdg2", "test2"))


async def test_no_backend_pods_headers_only_is_500():
    pool = make_pool([])
    async with running_epp(pool) as epp:
        replies = await epp.exchange([req_headers({"content-type": "application/json"}, eos=True)])
        assert len(replies) == 1
        immediate = replies[0].immediate_response
        assert immediate.status.code == 500
        assert immediate.body == b"inference error: Internal - no pods available in datastore"


async def test_request_missing_model_field_is_400():
    pool = make_pool([(0, 0.1)])
    async with running_epp(pool) as epp:
        replies = await epp.exchange(
            [
                req_headers({"content-type": "application/json"}),
                req_body(b'{"prompt":"hello world"}'),
            ]
        )
        assert len(replies) == 1
        assert replies[0].immediate_response.status.code == 400
        assert replies[0].immediate_response.body == (
            b"inference error: BadRequest - model not found in request body"
        )
        assert (
            epp.metric(
                "inference_objective_request_error_total",
                {"model_name": "", "target_model_name": "", "error_code": "BadRequest"},
            )
            == 1
        )


async def test_select_lora_despite_higher_kv_cache():
    pool = make_pool(
        [(10, 0.2, "foo", "bar"), (10, 0.4, "foo", "sql-lora-1fdg2"), (10, 0.3, "foo")]
    )
    async with running_epp(pool) as epp:
        replies = await epp.exchange(req_llm("test3", "sql-lora", "sql-lora-1fdg2"))
        assert_routed(replies, "192.168.1.2:8000", llm_body("sql-lora-1fdg2", "test3"))


async def test_passthrough_parser_forwards_body_unchanged():
    pool = make_pool([(3, 0.2), (0, 0.1), (10, 0.2)])
    async with running_epp(pool, config_text=PASSTHROUGH_CONFIG) as epp:
        headers = {
            "hi": "mom",
            "x-request-id": "test-request-id",
            "x-llm-d-inference-objective": "my-model",
        }
        replies = await epp.exchange([req_headers(headers), req_body(b"passthrough-parser")])
        assert_routed(replies, "192.168.1.2:8000", b"passthrough-parser")
        labels = {"model_name": "", "target_model_name": "", "priority": "2"}
        assert epp.metric("inference_objective_request_total", labels) == 1


async def test_do_not_shed_requests_by_default():
    pool = make_pool([(6, 0.2, "foo", "bar", "sql-lora-1fdg2"), (0, 0.85, "foo"), (10, 0.9, "foo")])
    async with running_epp(pool) as epp:
        replies = await epp.exchange(req_llm("test4", "sql-lora", "sql-lora-1fdg2"))
        assert_routed(replies, "192.168.1.1:8000", llm_body("sql-lora-1fdg2", "test4"))


async def test_invalid_json_body_is_400_with_go_message():
    pool = make_pool([(0, 0.2, "foo", "bar")])
    async with running_epp(pool) as epp:
        replies = await epp.exchange([req_headers({"hi": "mom"}), req_body(b"no healthy upstream")])
        assert replies[0].immediate_response.status.code == 400
        assert replies[0].immediate_response.body == (
            b"inference error: BadRequest - error unmarshaling request bodyMap: "
            b"invalid character 'o' in literal null (expecting 'u')"
        )


async def test_split_body_across_chunks():
    pool = make_pool([(4, 0.2, "foo", "bar", "sql-lora-1fdg3"), (4, 0.85, "foo", "sql-lora-1fdg3")])
    async with running_epp(pool) as epp:
        headers = {
            "hi": "mom",
            "x-llm-d-inference-objective": "sql-lora-sheddable",
            "x-llm-d-model-name-rewrite": "sql-lora-1fdg3",
            "x-request-id": "test-request-id",
        }
        replies = await epp.exchange(
            [
                req_headers(headers),
                req_body(b'{"max_tokens":100,"model":"sql-lo', eos=False),
                req_body(b'ra-sheddable","prompt":"test6","temperature":0}'),
            ]
        )
        assert_routed(replies, "192.168.1.1:8000", llm_body("sql-lora-1fdg3", "test6"))
        labels = {
            "model_name": "sql-lora-sheddable",
            "target_model_name": "sql-lora-1fdg3",
            "priority": "0",
        }
        assert epp.metric("inference_objective_request_total", labels) == 1


SUBSET_PODS = [(0, 0.2, "foo"), (0, 0.1, "foo", "sql-lora-1fdg2"), (10, 0.2, "foo")]


async def test_subsetting_selects_best_from_subset():
    pool = make_pool(SUBSET_PODS)
    meta = subset_metadata(["192.168.1.1:8000", "192.168.1.2:8000", "192.168.1.3:8000"])
    async with running_epp(pool) as epp:
        replies = await epp.exchange(req_llm("test2", "sql-lora", "sql-lora-1fdg2", meta=meta))
        assert_routed(replies, "192.168.1.2:8000", llm_body("sql-lora-1fdg2", "test2"))


async def test_subsetting_partial_match_is_honoured_despite_load():
    pool = make_pool(SUBSET_PODS)
    meta = subset_metadata(["192.168.1.3:8000"])
    async with running_epp(pool) as epp:
        replies = await epp.exchange(req_llm("test2", "sql-lora", "sql-lora-1fdg2", meta=meta))
        assert_routed(replies, "192.168.1.3:8000", llm_body("sql-lora-1fdg2", "test2"))


async def test_subsetting_no_pods_match_is_503_with_drop_reason():
    pool = make_pool(SUBSET_PODS[:2])
    meta = subset_metadata(["192.168.1.99:8000"])
    async with running_epp(pool) as epp:
        replies = await epp.exchange(req_llm("test2", "sql-lora", "sql-lora-1fdg2", meta=meta))
        assert len(replies) == 1
        immediate = replies[0].immediate_response
        assert immediate.status.code == 503
        assert immediate.body == (
            b"inference error: ServiceUnavailable - failed to find endpoint candidates for "
            b"serving the request"
        )
        assert set_headers(immediate.headers) == {
            "x-llm-d-request-dropped-reason": "rejected-no-endpoints"
        }


async def test_passthrough_model_not_in_objectives():
    pool = make_pool([(4, 0.2, "foo", "bar", "sql-lora-1fdg3")])
    async with running_epp(pool) as epp:
        headers = {
            "hi": "mom",
            "x-llm-d-inference-objective": "direct-model",
            "x-llm-d-model-name-rewrite": "direct-model",
            "x-request-id": "test-request-id",
        }
        body = llm_body("direct-model", "test6")
        replies = await epp.exchange(
            [req_headers(headers), req_body(body[:20], eos=False), req_body(body[20:])]
        )
        assert_routed(replies, "192.168.1.1:8000", body)


async def test_rewrite_rule_overrides_header_and_is_counted():
    pool = make_pool([(0, 0.1, "foo", "rewritten-model")])
    async with running_epp(pool) as epp:
        replies = await epp.exchange(
            req_llm("test-rewrite", "model-to-be-rewritten", "model-to-be-rewritten")
        )
        assert_routed(replies, "192.168.1.1:8000", llm_body("rewritten-model", "test-rewrite"))
        labels = {
            "model_name": "model-to-be-rewritten",
            "target_model_name": "rewritten-model",
            "priority": "0",
        }
        assert epp.metric("inference_objective_request_total", labels) == 1
        assert (
            epp.metric(
                "inference_extension_model_rewrite_decisions_total",
                {
                    "model_rewrite_name": "rewrite-test",
                    "model_name": "model-to-be-rewritten",
                    "target_model": "rewritten-model",
                },
            )
            == 1
        )


async def test_simple_get_headers_only_routes_to_the_single_pod():
    pool = make_pool([(0, 0.0, "foo")])
    async with running_epp(pool) as epp:
        replies = await epp.exchange(
            [req_headers({"content-type": "text/event-stream", "status": "200"}, eos=True)]
        )
        assert len(replies) == 1
        assert destination(replies[0]) == "192.168.1.1:8000"
        assert lb_metadata(replies[0]) == {"x-gateway-destination-endpoint": "192.168.1.1:8000"}


async def test_response_buffering_multi_chunk_json_is_returned_whole():
    pool = make_pool([(4, 0.2)])
    async with running_epp(pool) as epp:
        replies = await epp.exchange(
            [
                resp_headers({"content-type": "application/json"}),
                resp_body(b'{"max_tokens":100,"model":"sql-lo'),
                resp_body(b'ra-sheddable","prompt":"test6","temperature":0}', eos=True),
            ]
        )
        assert len(replies) == 2
        assert set_headers(replies[0].response_headers.response.header_mutation) == {
            "x-went-into-resp-headers": "true",
            "content-type": "application/json",
        }
        body, eos = streamed_body(replies, "response_body")
        assert body == llm_body("sql-lora-sheddable", "test6") and eos


async def test_response_buffering_invalid_json_is_passed_through():
    pool = make_pool([(4, 0.2)])
    async with running_epp(pool) as epp:
        replies = await epp.exchange(
            [
                resp_headers({"content-type": "application/json"}),
                resp_body(b"no healthy upstream", eos=True),
            ]
        )
        assert len(replies) == 2
        assert streamed_body(replies, "response_body") == (b"no healthy upstream", True)


async def test_response_buffering_empty_eos_chunk_gives_one_body_reply():
    pool = make_pool([(4, 0.2)])
    async with running_epp(pool) as epp:
        whole = json.dumps({"model": "m", "usage": {"prompt_tokens": 3}}).encode()
        replies = await epp.exchange(
            [
                resp_headers({"content-type": "application/json"}),
                resp_body(whole),
                resp_body(b"", eos=True),
            ]
        )
        assert len(replies) == 2
        assert streamed_body(replies, "response_body") == (whole, True)


async def test_response_streaming_sse_chunks_echoed_and_tokens_counted():
    pool = make_pool([(4, 0.2)])
    chunks = [
        b"data: {}",
        b'data: {"usage":{"prompt_tokens":7,"total_tokens":17,"completion_tokens":10}}\n'
        b"data: [DONE]",
        b"",
    ]
    async with running_epp(pool) as epp:
        replies = await epp.exchange(
            [
                resp_headers({"content-type": "text/event-stream", "status": "200"}),
                resp_body(chunks[0]),
                resp_body(chunks[1]),
                resp_body(chunks[2], eos=True),
            ]
        )
        assert len(replies) == 4
        assert set_headers(replies[0].response_headers.response.header_mutation) == {
            "x-went-into-resp-headers": "true",
            "content-type": "text/event-stream",
            "status": "200",
        }
        echoed = [r.response_body.response.body_mutation.streamed_response for r in replies[1:]]
        assert [(s.body, s.end_of_stream) for s in echoed] == [
            (chunks[0], False),
            (chunks[1], False),
            (chunks[2], True),
        ]
        labels = {"model_name": "", "target_model_name": ""}
        assert epp.metric("inference_objective_input_tokens_sum", labels) == 7
        assert epp.metric("inference_objective_input_tokens_count", labels) == 1
