"""``--observe-until first-token``: an observer stream is closed by igw after the first
response chunk; the request still finishes once, with its time to first token and without
token or size metrics."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from epp_harness import make_pool, running_epp
from test_observer_streams import (
    IDLE3,
    MODEL,
    end_route,
    observer_messages,
    route,
    sse_events,
    wait_for,
)

from igw.extproc.director import Director

pytestmark = pytest.mark.usefixtures("observer_transport", "epp_transport")

FIRST_TOKEN = {"observe_until": "first-token"}


async def _observe_first_chunk(epp, request_id: str):
    """Headers and the first chunk; then igw ends the stream without Envoy half-closing it."""
    call = epp.observer_stub.Process()
    messages = observer_messages(request_id, sse_events())
    for message in messages[:3]:  # request headers, response headers, first chunk
        await call.write(message)
    # nothing was ever answered, and the server ended the stream without Envoy's half-close
    assert await asyncio.wait_for(call.read(), 5) is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
    return call


async def _request_observed_to_first_token(epp, request_id: str = "r1") -> None:
    """One HTTP request of the two-filter deployment: routed, observed, routing stream ended."""
    routing = await route(epp, request_id)
    await _observe_first_chunk(epp, request_id)
    await end_route(routing)


async def test_igw_closes_the_observer_stream_after_the_first_chunk():
    async with running_epp(make_pool(IDLE3), director_options=FIRST_TOKEN) as epp:
        await _request_observed_to_first_token(epp)
        assert await wait_for(lambda: epp.inflight() == 0)


async def test_the_request_records_its_first_token_but_no_tokens_or_sizes():
    async with running_epp(make_pool(IDLE3), director_options=FIRST_TOKEN) as epp:
        await _request_observed_to_first_token(epp)
        assert await wait_for(
            lambda: epp.metric("inference_objective_request_duration_seconds_count", MODEL) == 1
        )
        assert epp.metric("llm_d_epp_request_ttft_seconds_count", {
            **MODEL, "fairness_id": "default-flow", "priority": "2"}) == 1  # fmt: skip
        assert epp.metric("inference_objective_output_tokens_count", MODEL) is None
        assert epp.metric("inference_objective_response_sizes_count", MODEL) is None


async def test_a_request_observed_to_its_first_token_is_not_a_failure():
    async with running_epp(make_pool(IDLE3), director_options=FIRST_TOKEN) as epp:
        await _request_observed_to_first_token(epp)
        assert await wait_for(lambda: epp.inflight() == 0)
        assert epp.metric("inference_objective_request_error_total", {
            **MODEL, "error_code": "ModelServerError"}) is None  # fmt: skip


def test_an_unknown_observe_until_is_refused_with_the_choices():
    pool = make_pool(IDLE3)
    with pytest.raises(ValueError, match="observe_until: expected one of end, first-token"):
        Director(type("P", (), {"response_stages": []})(), pool, observe_until="half")
