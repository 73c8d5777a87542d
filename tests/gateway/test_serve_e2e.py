"""End to end on the simulator: real stages, scheduling engine, data layer and sim replicas."""

from __future__ import annotations

import asyncio
import collections
import json

import pytest

from igw.datalayer import OutlierPolicy
from igw.gateway.app import Limits
from igw.gateway.config import parse_config
from igw.gateway.serve import ServeOptions, start_stack

FAST_OUTLIER = OutlierPolicy(
    min_failures=3, error_rate=0.5, window=30, probe_backoff=1.0, max_probe_backoff=2.0
)


async def start(text: str, **options):
    return await start_stack(parse_config(text), ServeOptions(port=0, seed=7, **options))


async def completion(client, url: str, model: str, prompt: str, **extra):
    body = {"model": model, "prompt": prompt, "max_tokens": 2, **extra}
    async with client.post(url + "/v1/completions", json=body) as response:
        data = await response.read()
        return response.status, response.headers.get("x-igw-endpoint"), data


TWO_MODELS = """
pools:
  chat: {sim: {replicas: 2, speed: 100, models: [chatbot, chatbot-canary]}}
  canary: {sim: {replicas: 1, speed: 100, models: [chatbot, chatbot-canary]}}
  rec: {sim: {replicas: 1, speed: 100, models: [recommender]}, policy: least-loaded}
models:
  chatbot: {pool: chat, priority: 10}
  chatbot-canary: {pool: canary, priority: 10}
  recommender: {pool: rec}
rewrites:
  - model: chatbot
    targets: [{model: chatbot, weight: 90}, {model: chatbot-canary, weight: 10}]
"""


async def test_models_route_to_their_pools_with_a_weighted_canary_split(client):
    stack = await start(TWO_MODELS)
    try:
        addresses = {
            name: {e.address for e in rt.pool.endpoints()}
            for name, rt in stack.router.pools.items()
        }
        served = collections.Counter()
        for i in range(60):
            status, endpoint, _ = await completion(client, stack.url, "chatbot", f"q{i}")
            assert status == 200
            served[next(p for p, a in addresses.items() if endpoint in a)] += 1
        assert served["rec"] == 0
        assert 1 <= served["canary"] <= 15  # ~10% of 60
        assert served["chat"] == 60 - served["canary"]
        status, endpoint, _ = await completion(client, stack.url, "recommender", "item 1")
        assert status == 200 and endpoint in addresses["rec"]
        async with client.get(stack.url + "/v1/models") as response:
            names = [m["id"] for m in (await response.json())["data"]]
        assert names == ["chatbot", "chatbot-canary", "recommender"]
    finally:
        await stack.stop()


async def test_rewritten_model_name_is_restored_in_the_response(client):
    stack = await start(TWO_MODELS)
    try:
        seen = set()
        for i in range(40):
            _, _, data = await completion(client, stack.url, "chatbot", f"p{i}")
            seen.add(data.count(b'"model": "chatbot"') + data.count(b'"model":"chatbot"'))
        assert seen == {1}  # even the canary's answers name the model the client asked for
    finally:
        await stack.stop()


@pytest.mark.parametrize("frontend", ["aiohttp", "httptools"])
async def test_streaming_through_the_simulator_ends_with_done_and_usage(client, frontend):
    stack = await start(
        "pools: {p: {sim: {replicas: 2, speed: 100}}}", limits=Limits(frontend=frontend)
    )
    try:
        body = {
            "model": "sim-model",
            "prompt": "hello",
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with client.post(stack.url + "/v1/completions", json=body) as response:
            assert response.status == 200
            text = (await response.read()).decode()
        assert text.endswith("data: [DONE]\n\n")
        assert '"usage"' in text
    finally:
        await stack.stop()


async def test_mid_stream_fault_of_the_simulator_ends_with_an_error_event(client):
    stack = await start("pools: {p: {sim: {replicas: 1, speed: 100}}}")
    try:
        faults = stack.fleets["p"].replicas[0].faults
        faults.error_rate = 1.0
        body = {"model": "sim-model", "prompt": "hello", "max_tokens": 8, "stream": True}
        async with client.post(stack.url + "/v1/completions", json=body) as response:
            assert response.status == 200
            text = (await response.read()).decode()
        last = text.strip().split("\n\n")[-1]
        assert last.startswith('data: {"error"')
        assert "[DONE]" not in text
    finally:
        await stack.stop()


async def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


@pytest.mark.parametrize("policy", ["default", "least-loaded"])
async def test_failing_replica_is_ejected_then_returns(client, policy):
    stack = await start(
        f"pools: {{p: {{sim: {{replicas: 3, speed: 100}}, policy: {policy}}}}}",
        outlier=FAST_OUTLIER,
    )
    try:
        runtime = stack.router.pools["p"]
        bad_replica = stack.fleets["p"].replicas[0]
        bad = runtime.pool.by_address(bad_replica.url.removeprefix("http://"))
        outcomes: collections.Counter = collections.Counter()
        report = runtime.datalayer.report_response

        def counting(endpoint, ok):
            outcomes[(endpoint.address, ok)] += 1
            report(endpoint, ok)

        runtime.datalayer.report_response = counting

        def ready(endpoint) -> bool:
            return bool(runtime.pool.table.snapshot().ready[endpoint.id])

        bad_replica.faults.fail = True  # 500 on inference while /health stays 200
        ejected = False
        for i in range(40):
            status, endpoint, _ = await completion(client, stack.url, "sim-model", f"x{i}")
            assert status == 200  # the failing replica's 500s were retried elsewhere
            assert endpoint != bad.address
            ejected = ejected or not ready(bad)
        assert ejected
        # Without ejection a third of 40 requests would try it first; it saw only the
        # failures that trip the detector (plus one more per /health-probe return).
        assert outcomes[(bad.address, False)] < 10
        bad_replica.faults.fail = False
        assert await wait_until(lambda: ready(bad), timeout=10)
        served = collections.Counter()
        for i in range(40):
            status, endpoint, _ = await completion(client, stack.url, "sim-model", f"y{i}")
            assert status == 200
            served[endpoint] += 1
        assert served[bad.address] > 0  # back in rotation
    finally:
        await stack.stop()


async def test_lora_adapters_on_a_shared_base_model_are_served(client):
    stack = await start(
        "pools: {base: {sim: {replicas: 2, speed: 100, models: [llm-base],"
        " loras: [english-bot, spanish-bot]}}}"
    )
    try:
        assert stack.router.is_adapter("english-bot")
        assert not stack.router.is_adapter("llm-base")
        for model in ("english-bot", "spanish-bot", "llm-base"):
            status, _, data = await completion(client, stack.url, model, "Hello")
            assert status == 200
            assert f'"model": "{model}"'.encode() in data
        async with client.get(stack.url + "/v1/models") as response:
            names = {m["id"] for m in (await response.json())["data"]}
        assert names == {"llm-base", "english-bot", "spanish-bot"}
    finally:
        await stack.stop()


async def test_replica_down_is_routed_around_without_client_errors(client):
    stack = await start("pools: {p: {sim: {replicas: 3, speed: 100}}}")
    try:
        down = stack.fleets["p"].replicas[1]
        await down.close_port()  # connection refused from now on
        served = collections.Counter()
        for i in range(30):
            status, endpoint, _ = await completion(client, stack.url, "sim-model", f"z{i}")
            assert status == 200
            served[endpoint] += 1
        assert served[down.url.removeprefix("http://")] == 0
        assert len(served) == 2
    finally:
        await stack.stop()


async def test_metrics_page_has_the_reference_families_after_requests(client):
    stack = await start("pools: {p: {sim: {replicas: 2, speed: 100}}}")
    try:
        status, _, _ = await completion(client, stack.url, "sim-model", "count me")
        assert status == 200
        status, _, _ = await completion(client, stack.url, "nope", "and me")
        assert status == 404
        await asyncio.sleep(0.05)  # the account stage runs just after the answer
        async with client.get(stack.url + "/metrics") as response:
            assert response.status == 200
            text = await response.text()
        for family in (
            'inference_objective_request_total{model_name="sim-model"',
            "llm_d_epp_request_total",
            "inference_objective_request_duration_seconds_bucket",
            'inference_objective_request_error_total{error_code="NotFound"',
            'inference_pool_ready_pods{name="p"} 2.0',
        ):
            assert family in text, family
    finally:
        await stack.stop()


async def test_objectives_file_rewrites_and_priorities_apply(client, tmp_path):
    (tmp_path / "objectives.yaml").write_text(
        """
apiVersion: llm-d.ai/v1alpha2
kind: InferenceModelRewrite
metadata: {name: all-to-b}
spec:
  poolRef: {name: any}
  rules:
    - matches: [{model: {type: Exact, value: model-a}}]
      targets: [{modelRewrite: model-b}]
---
apiVersion: llm-d.ai/v1alpha2
kind: InferenceObjective
metadata: {name: critical}
spec: {priority: 5, poolRef: {name: any}}
"""
    )
    config = parse_config(
        "pools: {a: {sim: {replicas: 1, speed: 100, models: [model-a]}},"
        " b: {sim: {replicas: 1, speed: 100, models: [model-b]}}}\n"
        "objectivesFile: objectives.yaml\n"
    )
    stack = await start_stack(config, ServeOptions(port=0, config_path=tmp_path / "gw.yaml"))
    try:
        b_address = stack.fleets["b"].replicas[0].url.removeprefix("http://")
        headers = {"x-llm-d-inference-objective": "critical"}
        body = {"model": "model-a", "prompt": "hi", "max_tokens": 2}
        async with client.post(stack.url + "/v1/completions", json=body, headers=headers) as r:
            assert r.status == 200
            assert r.headers["x-igw-endpoint"] == b_address
            assert (await r.json())["model"] == "model-a"  # the client's name comes back
        await asyncio.sleep(0.05)
        async with client.get(stack.url + "/metrics") as response:
            text = await response.text()
        assert 'model_name="model-a",priority="5",target_model_name="model-b"' in text
    finally:
        await stack.stop()


@pytest.mark.parametrize("frontend", ["aiohttp", "httptools"])
async def test_bad_clients_never_disturb_other_streams_and_nothing_stays_in_flight(
    client, frontend
):
    stack = await start(
        "pools: {p: {sim: {replicas: 2, speed: 50}}}", limits=Limits(frontend=frontend)
    )
    try:
        host, port = "127.0.0.1", stack.gateway.port

        async def good(i: int) -> str:
            body = {"model": "sim-model", "prompt": f"story {i}", "max_tokens": 12,
                    "stream": True}  # fmt: skip
            async with client.post(stack.url + "/v1/completions", json=body) as response:
                return (await response.read()).decode()

        async def garbage() -> bytes:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            data = await reader.read()
            writer.close()
            return data

        async def leaver() -> None:
            reader, writer = await asyncio.open_connection(host, port)
            payload = json.dumps({"model": "sim-model", "prompt": "bye", "max_tokens": 50,
                                  "stream": True}).encode()  # fmt: skip
            writer.write(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            await reader.readuntil(b"data: ")  # the stream has started
            writer.transport.abort()  # gone without a goodbye

        results = await asyncio.gather(*(good(i) for i in range(10)), garbage(), leaver())
        for text in results[:10]:
            assert text.endswith("data: [DONE]\n\n")
        assert results[10].split(b"\r\n")[0].endswith(b" 400 Bad Request")  # aiohttp's own
        pool = stack.router.pools["p"].pool

        def idle() -> bool:
            snapshot = pool.table.snapshot()
            return all(snapshot.inflight_requests[e.id] == 0 for e in pool.endpoints())

        assert await wait_until(idle)  # every reservation released, the leaver's too
    finally:
        await stack.stop()


@pytest.mark.parametrize("busy_poll_us", [0.0, 2000.0], ids=["off", "on"])
async def test_metrics_page_shows_busy_polling_only_when_it_is_on(client, busy_poll_us):
    stack = await start(
        "pools: {p: {sim: {replicas: 1, speed: 100}}}", limits=Limits(busy_poll_us=busy_poll_us)
    )
    try:
        status, _, _ = await completion(client, stack.url, "sim-model", "spin")
        assert status == 200
        async with client.get(stack.url + "/metrics") as response:
            text = await response.text()
        if busy_poll_us:
            assert "igw_busy_poll_window_seconds 0.002" in text
            spun = next(line for line in text.splitlines()
                        if line.startswith("igw_busy_poll_seconds_total"))  # fmt: skip
            assert float(spun.split()[1]) > 0
        else:
            assert "igw_busy_poll" not in text
    finally:
        await stack.stop()
