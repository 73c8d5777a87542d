"""Every error status the picker answers, and the gRPC errors for what has no HTTP status."""

from __future__ import annotations

import time

import grpc
import pytest
from epp_harness import (
    llm_body,
    make_pool,
    req_body,
    req_headers,
    req_llm,
    resp_body,
    running_epp,
    set_headers,
)

from igw.errors import ErrorCode, InferenceError
from igw.parsing import ParserRegistry

pytestmark = pytest.mark.usefixtures("epp_transport")

IDLE = [(0, 0.1), (0, 0.1)]


class Deny:
    def __init__(self, code: ErrorCode, message: str) -> None:
        self.error = InferenceError(code, message)

    async def check(self, request) -> None:
        raise self.error


class BrokenEngine:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def schedule(self, request, pool, *, k=None):
        raise self.exc

    def release(self, decision) -> None:
        return None


def immediate(replies):
    assert len(replies) == 1, replies
    return replies[0].immediate_response


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (ErrorCode.UNAUTHORIZED, 401),
        (ErrorCode.FORBIDDEN, 403),
        (ErrorCode.NOT_FOUND, 404),
        (ErrorCode.PRECONDITION_FAILED, 412),
        (ErrorCode.RESOURCE_EXHAUSTED, 429),
        (ErrorCode.INTERNAL, 500),
        (ErrorCode.SERVICE_UNAVAILABLE, 503),
    ],
)
async def test_inference_error_codes_map_to_the_reference_statuses(code, status):
    async with running_epp(make_pool(IDLE), admit_checks=[Deny(code, "nope")]) as epp:
        reply = immediate(await epp.exchange(req_llm("p", "my-model", "my-model")))
        assert reply.status.code == status
        assert reply.body == f"inference error: {code.label} - nope".encode()


async def test_codes_without_http_status_end_the_stream_with_a_grpc_error():
    deny = Deny(ErrorCode.MODEL_SERVER_ERROR, "upstream broke")
    async with running_epp(make_pool(IDLE), admit_checks=[deny]) as epp:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await epp.exchange(req_llm("p", "my-model", "my-model"))
        assert info.value.code() == grpc.StatusCode.UNKNOWN
        assert "ModelServerError - upstream broke" in info.value.details()


async def test_untyped_scheduler_failure_is_429_failed_to_find_target():
    engine = BrokenEngine(RuntimeError("all filtered out"))
    async with running_epp(make_pool(IDLE), engine=engine) as epp:
        reply = immediate(await epp.exchange(req_llm("p", "my-model", "my-model")))
        assert reply.status.code == 429
        assert reply.body == (
            b"inference error: ResourceExhausted - failed to find target endpoint: all filtered out"
        )


async def test_body_over_the_limit_is_413_and_not_buffered():
    async with running_epp(make_pool(IDLE), director_options={"max_body_bytes": 1000}) as epp:
        reply = immediate(
            await epp.exchange(
                [req_headers({}), req_body(b"x" * 800, eos=False), req_body(b"y" * 800)]
            )
        )
        assert reply.status.code == 413
        assert b"exceeds the limit of 1000 bytes" in reply.body


async def test_sheddable_request_is_429_when_saturated():
    pool = make_pool([(10, 0.95), (10, 0.95)])
    objectives = {"batch": -1}
    from epp_harness import Objectives

    async with running_epp(pool, objectives=Objectives(objectives)) as epp:
        reply = immediate(await epp.exchange(req_llm("p", "batch", "batch")))
        assert reply.status.code == 429
        assert reply.body == (
            b"inference error: ResourceExhausted - system saturated, sheddable request dropped"
        )
        assert not reply.headers.set_headers  # no drop-reason header on the legacy path


async def test_non_sheddable_request_is_not_shed_when_saturated():
    pool = make_pool([(10, 0.95), (10, 0.95)])
    async with running_epp(pool) as epp:
        replies = await epp.exchange(req_llm("p", "my-model", "my-model"))
        assert replies[0].WhichOneof("response") == "request_headers"


async def test_sheddable_request_passes_when_not_saturated():
    from epp_harness import Objectives

    pool = make_pool([(0, 0.1), (0, 0.1)])
    async with running_epp(pool, objectives=Objectives({"batch": -1})) as epp:
        replies = await epp.exchange(req_llm("p", "batch", "batch"))
        assert replies[0].WhichOneof("response") == "request_headers"


async def test_stale_metrics_count_as_saturated_for_sheddable_requests():
    from epp_harness import Objectives

    pool = make_pool([(0, 0.1)])
    endpoint = pool.endpoints()[0]
    pool.table.update(endpoint.id, waiting=0, running=0, kv_util=0.1, now=time.monotonic() - 60)
    async with running_epp(pool, objectives=Objectives({"batch": -1})) as epp:
        reply = immediate(await epp.exchange(req_llm("p", "batch", "batch")))
        assert reply.status.code == 429


async def test_empty_pool_with_body_is_503_no_endpoints():
    async with running_epp(make_pool([])) as epp:
        reply = immediate(await epp.exchange(req_llm("p", "my-model", "my-model")))
        assert reply.status.code == 503
        assert set_headers(reply.headers)["x-llm-d-request-dropped-reason"] == (
            "rejected-no-endpoints"
        )


async def test_unknown_path_without_fallback_parser_is_400():
    registry = ParserRegistry.from_types(["openai-parser"])
    async with running_epp(make_pool(IDLE), parsers=registry) as epp:
        reply = immediate(
            await epp.exchange([req_headers({":path": "/v2/unknown"}), req_body(b"{}")])
        )
        assert reply.status.code == 400
        assert reply.body == (
            b"inference error: BadRequest - no parser registered matching path suffix for: "
            b"/v2/unknown"
        )


async def test_unknown_path_with_default_parsers_is_passed_through():
    async with running_epp(make_pool(IDLE), config_text=_DEFAULT_PARSERS_CONFIG) as epp:
        replies = await epp.exchange([req_headers({":path": "/v1/models/x"}), req_body(b"raw")])
        assert replies[1].request_body.response.body_mutation.streamed_response.body == b"raw"


_DEFAULT_PARSERS_CONFIG = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins: [{type: queue-scorer}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer}]}]
"""


async def test_chat_with_empty_messages_is_400_with_parser_message():
    async with running_epp(make_pool(IDLE)) as epp:
        reply = immediate(
            await epp.exchange(
                [
                    req_headers({":path": "/v1/chat/completions"}),
                    req_body(b'{"model":"m","messages":[]}'),
                ]
            )
        )
        assert reply.body == (
            b"inference error: BadRequest - invalid chat completions request: must have valid "
            b"messages field"
        )


async def test_body_before_headers_is_a_grpc_invalid_argument():
    async with running_epp(make_pool(IDLE)) as epp:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await epp.exchange([req_body(llm_body("my-model", "p"))])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "before request headers" in info.value.details()


async def test_response_body_before_response_headers_is_a_grpc_invalid_argument():
    async with running_epp(make_pool(IDLE)) as epp:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await epp.exchange([resp_body(b"data", eos=True)])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_request_headers_twice_is_a_grpc_invalid_argument():
    async with running_epp(make_pool(IDLE)) as epp:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await epp.exchange([req_headers({}), req_headers({})])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_errors_are_counted_by_code():
    async with running_epp(make_pool(IDLE)) as epp:
        await epp.exchange([req_headers({}), req_body(b"{broken")])
        assert (
            epp.metric(
                "llm_d_epp_request_error_total",
                {
                    "model_name": "",
                    "target_model_name": "",
                    "fairness_id": "default-flow",
                    "priority": "0",
                    "error_code": "BadRequest",
                },
            )
            == 1
        )
