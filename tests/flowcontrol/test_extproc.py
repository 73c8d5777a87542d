"""Flow control behind the ext_proc front end: Envoy sees the reference's statuses and
drop-reason headers, and a stream Envoy cancels while queued leaves nothing behind."""

from __future__ import annotations

import asyncio

from epp_harness import Objectives, make_pool, req_llm, running_epp, set_headers

from flowcontrol.helpers import until
from igw.errors import DROP_REASON_HEADER
from igw.flowcontrol import FlowControl, FlowControlSettings, UtilizationDetector

SATURATED = [(10, 0.95), (10, 0.95)]


def immediate(replies):
    assert len(replies) == 1, replies
    return replies[0].immediate_response


async def test_queued_request_past_its_ttl_gets_429_rejected_ttl_expired():
    flow = FlowControl(FlowControlSettings(default_ttl=0.05), detector=UtilizationDetector())
    async with running_epp(make_pool(SATURATED), flow_controller=flow) as epp:
        reply = immediate(await epp.exchange(req_llm("p", "my-model", "my-model")))
    assert reply.status.code == 429
    assert set_headers(reply.headers)[DROP_REASON_HEADER] == "rejected-ttl-expired"
    assert reply.body == (
        b"inference error: ResourceExhausted - request timed out in queue: "
        b"request rejected by flow control"
    )
    await flow.close()


async def test_sheddable_request_gets_429_with_the_drop_reason_header():
    flow = FlowControl(detector=UtilizationDetector())
    objectives = Objectives({"batch": -1})
    async with running_epp(
        make_pool(SATURATED), objectives=objectives, flow_controller=flow
    ) as epp:
        reply = immediate(await epp.exchange(req_llm("p", "batch", "batch")))
    assert reply.status.code == 429
    assert set_headers(reply.headers)[DROP_REASON_HEADER] == "rejected-saturated"


async def test_stream_cancelled_while_queued_removes_the_request():
    flow = FlowControl(detector=UtilizationDetector())
    pool = make_pool(SATURATED)
    hold = asyncio.Event()

    async with running_epp(pool, flow_controller=flow) as epp:

        async def messages():
            for message in req_llm("p", "my-model", "my-model"):
                yield message
            await hold.wait()  # never half-close: Envoy still waiting for the answer

        call = epp.stub.Process(messages())
        reader = asyncio.create_task(call.read())
        controller = flow.controller_for(pool)
        await until(lambda: controller.queued == 1, timeout=5.0)
        call.cancel()  # the client went away; Envoy cancels the stream
        await until(lambda: controller.queued == 0, timeout=5.0)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        hold.set()
    assert controller.queued_bytes == 0 and controller.bands == {}
    assert epp.inflight() == 0
