"""End to end through ``igw serve``'s start-up path with simulated replicas."""

from __future__ import annotations

import pytest

from igw.config import ConfigError
from igw.gateway.app import Limits
from igw.gateway.config import parse_config
from igw.gateway.serve import ServeOptions, start_stack
from igw.gateway.upstream import httptools

FRONTENDS = ["aiohttp", pytest.param("httptools", marks=pytest.mark.skipif(
    httptools is None, reason="httptools is not installed"))]  # fmt: skip

CONFIG = """
pools:
  chat: {sim: {replicas: 1, speed: 100, models: [llama-8b, other]}}
access:
  tenants:
    team-a: {keys: [sk-a-1], requestsPerMinute: 2, models: ["llama-*"]}
    team-b: {keysFrom: {env: IGW_TEST_TEAM_B_KEYS}, tokensPerMinute: 5}
"""


async def start(frontend: str = "aiohttp"):
    options = ServeOptions(port=0, seed=3, limits=Limits(frontend=frontend))
    return await start_stack(parse_config(CONFIG, "gw.yaml"), options)


async def post(client, stack, key: str | None, model: str = "llama-8b"):
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    body = {"model": model, "prompt": "hello there", "max_tokens": 4}
    async with client.post(stack.url + "/v1/completions", json=body, headers=headers) as r:
        return r.status, dict(r.headers), await r.json(content_type=None)


@pytest.fixture(autouse=True)
def team_b_keys(monkeypatch):
    monkeypatch.setenv("IGW_TEST_TEAM_B_KEYS", "sk-b-1")


@pytest.mark.parametrize("frontend", FRONTENDS)
async def test_keys_and_request_limit_through_the_gateway(client, frontend):
    stack = await start(frontend)
    try:
        status, _, body = await post(client, stack, "sk-a-1")
        assert status == 200 and body["choices"]
        status, _, body = await post(client, stack, "sk-wrong")
        assert status == 401
        assert body["error"]["type"] == "authentication_error"
        assert "sk-wrong" not in str(body)
        status, _, _ = await post(client, stack, "sk-a-1")
        assert status == 200
        status, headers, body = await post(client, stack, "sk-a-1")  # the 3rd at 2/min
        assert status == 429
        assert int(headers["Retry-After"]) >= 1
        assert body["error"]["type"] == "rate_limit_error"
        assert "requests per minute" in body["error"]["message"]
    finally:
        await stack.stop()


async def test_missing_key_and_forbidden_model_are_json_errors(client):
    stack = await start()
    try:
        status, _, body = await post(client, stack, None)
        assert status == 401 and "missing API key" in body["error"]["message"]
        status, _, body = await post(client, stack, "sk-a-1", model="other")
        assert status == 403 and body["error"]["type"] == "permission_error"
    finally:
        await stack.stop()


async def test_reported_usage_is_debited_from_the_token_bucket(client):
    stack = await start()
    try:
        status, _, body = await post(client, stack, "sk-b-1")  # key from the environment
        assert status == 200
        used = body["usage"]["total_tokens"]
        assert used > 5  # more than a minute's worth of tokens: the bucket is in debt
        status, headers, body = await post(client, stack, "sk-b-1")
        assert status == 429
        assert "tokens per minute" in body["error"]["message"]
        full_wait = (used - 5 + 1) * 12  # back to one token at 5 tokens/min (12 s each)
        assert full_wait - 2 <= int(headers["Retry-After"]) <= full_wait
    finally:
        await stack.stop()


async def test_tenant_is_the_fairness_label_in_metrics(client):
    stack = await start()
    try:
        assert (await post(client, stack, "sk-a-1"))[0] == 200
        assert (await post(client, stack, "sk-wrong"))[0] == 401
        async with client.get(stack.url + "/metrics") as response:
            text = await response.text()
        served = [line for line in text.splitlines()
                  if line.startswith("llm_d_epp_request_total{")]  # fmt: skip
        assert served and all('fairness_id="team-a"' in line for line in served)
        errors = [line for line in text.splitlines()
                  if line.startswith("llm_d_epp_request_error_total{")]  # fmt: skip
        assert any('fairness_id="unauthenticated"' in line and "Unauthorized" in line
                   for line in errors)  # fmt: skip
    finally:
        await stack.stop()


async def test_missing_key_variable_fails_at_start(monkeypatch):
    monkeypatch.delenv("IGW_TEST_TEAM_B_KEYS")
    with pytest.raises(ConfigError) as info:
        await start()
    assert info.value.field == "access.tenants.team-b.keysFrom.env"


@pytest.mark.parametrize("frontend", FRONTENDS)
async def test_the_model_list_needs_a_key_too(client, frontend):
    stack = await start(frontend)
    try:
        async with client.get(stack.url + "/v1/models") as response:
            assert response.status == 401
            assert (await response.json())["error"]["type"] == "authentication_error"
        headers = {"authorization": "Bearer sk-a-1"}
        async with client.get(stack.url + "/v1/models", headers=headers) as response:
            assert response.status == 200
            names = {m["id"] for m in (await response.json())["data"]}
        assert {"llama-8b", "other"} <= names
        # listing the models is not an inference request: no limit is charged
        status, _, _ = await post(client, stack, "sk-a-1")
        assert status == 200
        status, _, _ = await post(client, stack, "sk-a-1")
        assert status == 200
    finally:
        await stack.stop()
