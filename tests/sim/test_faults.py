"""Fault injection: failing, down, closed, slow and mid-stream-breaking replicas."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from igw.sim import Faults, SimFleet

from .helpers import post, sse_events, sse_json

BODY = {"model": "sim-model", "prompt": "ping", "max_tokens": 4}


async def test_failing_replica_returns_500_json_while_health_passes(http):
    async with SimFleet(2, speed=100, faults={1: Faults(fail=True)}) as fleet:
        ok, _, _ = await post(http, fleet.urls[0] + "/v1/completions", BODY)
        status, body, _ = await post(http, fleet.urls[1] + "/v1/completions", BODY)
        async with http.get(fleet.urls[1] + "/health") as resp:
            health = resp.status
    assert ok == 200
    assert status == 500 and body["error"]["code"] == 500
    assert health == 200


async def test_down_replica_answers_503_everywhere_until_brought_back(http):
    async with SimFleet(1, speed=100) as fleet:
        base = fleet.urls[0]
        fleet.replicas[0].faults.down = True
        statuses = []
        for path in ("/health", "/v1/models", "/metrics"):
            async with http.get(base + path) as resp:
                statuses.append(resp.status)
        down, body, _ = await post(http, base + "/v1/completions", BODY)
        fleet.replicas[0].faults.down = False
        up, _, _ = await post(http, base + "/v1/completions", BODY)
    assert statuses == [503, 503, 503]
    assert down == 503 and body["error"]["type"] == "ServiceUnavailableError"
    assert up == 200


async def test_closed_port_refuses_connections_and_reopens_on_the_same_port(http):
    async with SimFleet(1, speed=100) as fleet:
        replica = fleet.replicas[0]
        url = replica.url
        await replica.close_port()
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(http, url + "/v1/completions", BODY)
        await replica.open_port()
        status, _, _ = await post(http, url + "/v1/completions", BODY)
    assert replica.url == url
    assert status == 200


async def test_slow_replica_multiplies_model_latency(http):
    async with SimFleet(2, speed=50, faults={1: Faults(slow_factor=3.0)}) as fleet:
        _, _, fast = await post(http, fleet.urls[0] + "/v1/completions", BODY)
        _, _, slow = await post(http, fleet.urls[1] + "/v1/completions", BODY)
    assert float(slow["x-sim-e2e-ms"]) == pytest.approx(3 * float(fast["x-sim-e2e-ms"]), rel=0.02)


async def test_mid_stream_error_cuts_the_stream_without_done(http):
    faults = {0: Faults(error_rate=1.0)}
    body = {"prompt": "story", "max_tokens": 20, "stream": True}
    async with SimFleet(1, speed=100, faults=faults) as fleet:
        async with http.post(fleet.urls[0] + "/v1/completions", json=body) as resp:
            assert resp.status == 200
            received = b""
            with pytest.raises(aiohttp.ClientPayloadError):
                async for chunk in resp.content.iter_any():
                    received += chunk
    events = sse_events(received.rpartition(b"\n\n")[0] + b"\n\n")
    assert 1 <= len(events) < 20
    assert "[DONE]" not in events


async def test_mid_stream_error_in_event_mode_sends_an_error_object_then_done(http):
    faults = {0: Faults(error_rate=1.0, error_mode="event")}
    body = {"prompt": "story", "max_tokens": 20, "stream": True}
    async with SimFleet(1, speed=100, faults=faults) as fleet:
        async with http.post(fleet.urls[0] + "/v1/completions", json=body) as resp:
            raw = await resp.read()
    chunks = sse_json(raw)
    assert sse_events(raw)[-1] == "[DONE]"
    assert chunks[-1]["error"]["code"] == 500
    assert 1 <= len(chunks) - 1 < 20


async def test_non_streamed_request_with_mid_stream_error_gets_500(http):
    async with SimFleet(1, speed=100, faults={0: Faults(error_rate=1.0)}) as fleet:
        status, body, _ = await post(http, fleet.urls[0] + "/v1/completions", BODY)
    assert status == 500 and "simulated error" in body["error"]["message"]


async def test_fault_injection_is_deterministic_for_a_seed(http):
    async def outcomes(seed: int) -> list[int]:
        faults = {0: Faults(error_rate=0.5)}
        async with SimFleet(1, speed=100, seed=seed, faults=faults) as fleet:
            return [
                (await post(http, fleet.urls[0] + "/v1/completions", BODY))[0] for _ in range(16)
            ]

    first = await outcomes(7)
    assert first == await outcomes(7)
    assert set(first) == {200, 500}
    assert first != await outcomes(8)


def test_faults_reject_invalid_settings_naming_the_field():
    faults = Faults()
    with pytest.raises(ValueError, match="error_rate"):
        faults.error_rate = 1.5
    with pytest.raises(ValueError, match="slow_factor"):
        faults.slow_factor = 0
    with pytest.raises(ValueError, match="error_mode"):
        Faults(error_mode="explode")


async def test_faults_can_be_switched_over_http_even_while_down(http):
    async with SimFleet(1, speed=100) as fleet:
        base = fleet.urls[0]
        set_url = base + "/sim/faults"
        down, _, _ = await post(http, set_url, {"down": True, "slow_factor": 2})
        async with http.get(base + "/health") as resp:
            health_down = resp.status
        async with http.get(set_url) as resp:
            shown = await resp.json()
        up, _, _ = await post(http, set_url, {"down": False})
        async with http.get(base + "/health") as resp:
            health_up = resp.status
        unknown, err1, _ = await post(http, set_url, {"dwn": True})
        invalid, err2, _ = await post(http, set_url, {"error_rate": 3, "fail": True})
        faults = fleet.replicas[0].faults
    assert (down, health_down, up, health_up) == (200, 503, 200, 200)
    assert shown["down"] is True and shown["slow_factor"] == 2
    assert unknown == 400 and "dwn" in err1["error"]["message"]
    assert invalid == 400 and "error_rate" in err2["error"]["message"]
    assert faults.fail is False  # a rejected update changes nothing


async def test_an_engine_bug_fails_requests_in_flight_and_the_replica_recovers(http, caplog):
    async with SimFleet(1, speed=100) as fleet:
        replica = fleet.replicas[0]

        def broken_schedule(now: float = 0.0):
            raise RuntimeError("injected engine bug")

        replica.engine.schedule = broken_schedule
        failed, body, _ = await post(http, replica.url + "/v1/completions", BODY)
        recovered, _, _ = await post(http, replica.url + "/v1/completions", BODY)
    assert failed == 500 and "engine error" in body["error"]["message"]
    assert recovered == 200
    assert "injected engine bug" in caplog.text


async def test_closing_the_port_cuts_streams_in_flight_and_frees_their_requests(http):
    body = {"prompt": "long", "max_tokens": 5000, "ignore_eos": True, "stream": True}
    async with SimFleet(1, speed=10) as fleet:
        replica = fleet.replicas[0]
        async with http.post(replica.url + "/v1/completions", json=body) as resp:
            await resp.content.readuntil(b"\n\n")
            await replica.close_port()
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        for _ in range(100):
            if not replica.engine.running:
                break
            await asyncio.sleep(0.01)
        assert not replica.engine.running
