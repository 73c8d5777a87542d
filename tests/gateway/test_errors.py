"""Every error the gateway itself returns is OpenAI-style JSON with the right status."""

from __future__ import annotations

import pytest

from igw.gateway.app import Limits


async def error_of(response) -> dict:
    data = await response.json()
    assert set(data) == {"error"}
    assert set(data["error"]) == {"message", "type", "param", "code"}
    return data["error"]


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/v1/completions", b'{"model": "sim-model", "prompt": ', "unmarshal"),
        ("/v1/completions", b"[1, 2]", "cannot unmarshal array"),
        ("/v1/completions", b'{"model": "sim-model"}', "must have prompt"),
        ("/v1/chat/completions", b'{"model": "sim-model"}', "messages"),
        ("/v1/completions", b'{"prompt": "hi"}', "model"),
    ],
)
async def test_bad_request_bodies_are_400(replicas, make_gateway, client, path, body, needle):
    gw = await make_gateway(replicas[:1])
    async with client.post(gw.url + path, data=body) as response:
        assert response.status == 400
        error = await error_of(response)
    assert error["type"] == "invalid_request_error"
    assert needle in error["message"]
    assert replicas[0].hits == 0


async def test_unknown_model_is_404_listing_known_models(replicas, make_gateway, client):
    gw = await make_gateway(replicas[:1])
    body = {"model": "no-such-model", "prompt": "hi"}
    async with client.post(gw.url + "/v1/completions", json=body) as response:
        assert response.status == 404
        error = await error_of(response)
    assert "no-such-model" in error["message"] and "sim-model" in error["message"]
    assert error["type"] == "not_found_error"


async def test_oversized_body_is_413(replicas, make_gateway, client):
    gw = await make_gateway(replicas[:1], limits=Limits(client_max_size=1024))
    body = {"model": "sim-model", "prompt": "x" * 4096}
    async with client.post(gw.url + "/v1/completions", json=body) as response:
        assert response.status == 413
        error = await error_of(response)
    assert "1024" in error["message"]
    assert replicas[0].hits == 0


async def test_oversized_chunked_body_is_413(replicas, make_gateway, client):
    gw = await make_gateway(replicas[:1], limits=Limits(client_max_size=1024))

    async def chunks():
        for _ in range(8):
            yield b"x" * 512

    async with client.post(gw.url + "/v1/completions", data=chunks()) as response:
        assert response.status == 413
        await error_of(response)


async def test_unknown_path_is_404_json(replicas, make_gateway, client):
    gw = await make_gateway(replicas[:1])
    async with client.get(gw.url + "/v2/whatever") as response:
        assert response.status == 404
        assert "unknown path" in (await error_of(response))["message"]


async def test_wrong_method_is_405_json(replicas, make_gateway, client):
    gw = await make_gateway(replicas[:1])
    async with client.get(gw.url + "/v1/completions") as response:
        assert response.status == 405
        await error_of(response)


async def test_no_ready_endpoint_is_503(replicas, make_gateway, client):
    gw = await make_gateway([])
    body = {"model": "sim-model", "prompt": "hi"}
    async with client.post(gw.url + "/v1/completions", json=body) as response:
        assert response.status == 503
        error = await error_of(response)
    assert error["type"] == "server_error"
    async with client.get(gw.url + "/health") as response:
        assert response.status == 503


async def test_sheddable_request_under_saturation_is_429(replicas, make_gateway, client):
    gw = await make_gateway(replicas[:1])
    # Never-scraped metrics count as saturated; priority < 0 is sheddable.
    headers = {"x-llm-d-inference-objective": "batch"}
    gw.gateway.pipeline.stages[0].objectives = type(
        "Objectives", (), {"priority": staticmethod(lambda name: -1)}
    )()
    body = {"model": "sim-model", "prompt": "hi"}
    async with client.post(gw.url + "/v1/completions", json=body, headers=headers) as response:
        assert response.status == 429
        error = await error_of(response)
    assert error["type"] == "rate_limit_error"
    assert replicas[0].hits == 0
