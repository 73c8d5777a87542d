"""The proxy path: passthrough, streaming, fallback to the next ranked endpoint, no retry
mid-stream."""

from __future__ import annotations

import asyncio
import json

import pytest

COMPLETION = {"model": "sim-model", "prompt": "Once upon a time", "max_tokens": 4}


def stream_body(**extra) -> dict:
    return {**COMPLETION, "stream": True, **extra}


async def test_non_streaming_passthrough_names_the_serving_replica(replicas, make_gateway, client):
    gw = await make_gateway(replicas[:1])
    async with client.post(gw.url + "/v1/completions", json=COMPLETION) as response:
        assert response.status == 200
        assert response.headers["x-igw-endpoint"] == replicas[0].address
        data = await response.json()
    assert data["choices"][0]["text"] == "hello"
    assert json.loads(replicas[0].bodies[0]) == COMPLETION  # body forwarded unchanged
    assert gw.engine.released == gw.engine.reserved == 1


async def test_unchanged_body_is_forwarded_byte_for_byte(replicas, make_gateway, client):
    gw = await make_gateway(replicas[:1])
    raw = b'{"prompt":  "x" ,"model":"sim-model"}'
    async with client.post(gw.url + "/v1/completions", data=raw) as response:
        assert response.status == 200
    assert replicas[0].bodies[0] == raw


async def test_streaming_relays_each_chunk_before_the_next_exists(replicas, make_gateway, client):
    gate: asyncio.Queue = asyncio.Queue()
    replicas[0].behaviour.gate = gate
    replicas[0].behaviour.chunks = 3
    gw = await make_gateway(replicas[:1])
    received = []
    async with client.post(gw.url + "/v1/completions", json=stream_body()) as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for i in range(3):
            gate.put_nowait(None)  # let the replica produce exactly one more chunk
            line = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
            received.append(line)
            assert f'"t{i}"'.encode() in line
        rest = await response.content.read()
    assert rest == b"data: [DONE]\n\n"
    assert gw.engine.released == 1


async def test_mid_stream_break_ends_with_error_event_and_is_not_retried(
    replicas, make_gateway, client
):
    for replica in replicas:
        replica.behaviour.mode = "break_stream"
        replica.behaviour.break_after = 1
    gw = await make_gateway(replicas)
    async with client.post(gw.url + "/v1/completions", json=stream_body()) as response:
        assert response.status == 200
        text = (await response.read()).decode()
    events = [e for e in text.split("\n\n") if e]
    assert '"t0"' in events[0]
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["type"] == "server_error"
    assert "broke the stream" in last["error"]["message"]
    assert sum(r.hits for r in replicas) == 1  # never retried
    assert gw.engine.released == 1


async def test_replica_silent_mid_stream_is_cut_by_the_read_timeout(replicas, make_gateway, client):
    from igw.gateway.app import Limits

    replicas[0].behaviour.mode = "stall_stream"
    gw = await make_gateway(replicas[:1], limits=Limits(upstream_read_timeout=0.3))
    started = asyncio.get_running_loop().time()
    async with client.post(gw.url + "/v1/completions", json=stream_body()) as response:
        text = (await response.read()).decode()
    assert asyncio.get_running_loop().time() - started < 5
    events = [e for e in text.split("\n\n") if e]
    assert '"t0"' in events[0]
    assert "read timeout" in json.loads(events[-1].removeprefix("data: "))["error"]["message"]
    assert gw.engine.released == 1


async def test_stream_without_done_is_reported_as_broken(replicas, make_gateway, client):
    replicas[0].behaviour.mode = "no_done"
    gw = await make_gateway(replicas[:1])
    async with client.post(
        gw.url + "/v1/chat/completions",
        json={
            "model": "sim-model",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        },
    ) as response:
        text = (await response.read()).decode()
    assert text.rstrip().endswith("}")
    assert "without [DONE]" in text.rstrip().split("\n\n")[-1]


async def test_replica_down_falls_back_to_next_ranked_endpoint(replicas, make_gateway, client):
    gw = await make_gateway(replicas[:2])
    down = replicas[0]
    await down.stop()  # connection refused from now on
    for _ in range(2):  # the fake engine ranks the dead replica first on one of these
        async with client.post(gw.url + "/v1/completions", json=COMPLETION) as response:
            assert response.status == 200
            assert response.headers["x-igw-endpoint"] == replicas[1].address
    assert replicas[1].hits == 2
    assert gw.engine.released == gw.engine.reserved == 2


async def test_replica_answering_503_falls_back_before_any_byte(replicas, make_gateway, client):
    replicas[0].behaviour.mode = "fail503"
    gw = await make_gateway(replicas[:2])
    async with client.post(gw.url + "/v1/completions", json=COMPLETION) as response:
        assert response.status == 200
        assert response.headers["x-igw-endpoint"] == replicas[1].address
    assert replicas[0].hits == 1


async def test_every_endpoint_down_is_502_openai_error(replicas, make_gateway, client):
    gw = await make_gateway(replicas[:2])
    for replica in replicas[:2]:
        await replica.stop()
    async with client.post(gw.url + "/v1/completions", json=COMPLETION) as response:
        assert response.status == 502
        error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "upstream_unreachable"
    assert gw.engine.released == 1


async def test_request_id_is_forwarded_upstream(replicas, make_gateway, client):
    gw = await make_gateway(replicas[:1])
    headers = {"x-request-id": "abc-123", "authorization": "Bearer k"}
    async with client.post(gw.url + "/v1/completions", json=COMPLETION, headers=headers) as r:
        assert r.status == 200
    sent = {k.lower(): v for k, v in replicas[0].headers[0].items()}
    assert sent["x-request-id"] == "abc-123"
    assert sent["authorization"] == "Bearer k"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"model": "sim-model", "input": ["a", "b"]}),
        ("/v1/responses", {"model": "sim-model", "input": "hello"}),
        (
            "/v1/chat/completions",
            {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]},
        ),
    ],
)
async def test_every_openai_path_is_proxied_to_the_same_path(
    replicas, make_gateway, client, path, body
):
    gw = await make_gateway(replicas[:1])
    async with client.post(gw.url + path + "?x=1", json=body) as response:
        assert response.status == 200
    assert json.loads(replicas[0].bodies[0]) == body
    assert replicas[0].paths[0] == path + "?x=1"


async def test_a_stage_that_crashes_gives_500_json_and_releases(replicas, make_gateway, client):
    gw = await make_gateway(replicas[:1])

    class Boom:
        name = "boom"

        async def process(self, request):
            raise RuntimeError("bug")

    gw.gateway.pipeline.stages.append(Boom())  # after schedule: the reservation exists
    async with client.post(gw.url + "/v1/completions", json=COMPLETION) as response:
        assert response.status == 500
        assert (await response.json())["error"]["code"] == "internal_error"
    assert gw.engine.released == gw.engine.reserved == 1
