"""Bad requests get vLLM/OpenAI-style JSON errors naming the field; the server survives."""

from __future__ import annotations

import pytest

from igw.sim import SimFleet

from .helpers import post

CASES = [
    # (path, raw body, status, words the message must contain)
    ("/v1/completions", b"{not json", 400, "Invalid JSON"),
    ("/v1/completions", b"[1, 2]", 400, "JSON object"),
    ("/v1/completions", b'{"model": "sim-model"}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": 12}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": ""}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": ["a", "b"]}', 400, "one prompt"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 0}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": "ten"}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "stream": "yes"}', 400, "stream"),
    ("/v1/completions", b'{"prompt": "x", "n": 2}', 400, "n"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 40000}', 400, "maximum context length"),
    ("/v1/chat/completions", b'{"messages": []}', 400, "messages"),
    ("/v1/chat/completions", b'{"messages": [{"content": "hi"}]}', 400, "messages.0.role"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": 5}]}', 400, "content"),
    ("/v1/chat/completions", b'{"messages": "hi"}', 400, "messages"),
    ("/v1/completions", b'{"model": "nope", "prompt": "x"}', 404, "nope"),
    ("/v1/chat/completions", b'{"model": "nope", "messages": [{"role": "user"}]}', 404, "nope"),
]


@pytest.mark.parametrize(("path", "raw", "status", "words"), CASES)
async def test_bad_request_gets_json_error_naming_the_problem(http, path, raw, status, words):
    async with SimFleet(1, speed=100) as fleet:
        async with http.post(fleet.urls[0] + path, data=raw) as resp:
            got_status = resp.status
            body = await resp.json(content_type=None)
        ok, _, _ = await post(http, fleet.urls[0] + "/v1/completions", {"prompt": "still up"})
    assert got_status == status
    error = body["error"]
    assert words in error["message"]
    assert error["code"] == status
    assert error["type"] == {400: "BadRequestError", 404: "NotFoundError"}[status]
    assert ok == 200


async def test_unknown_path_gets_a_json_404(http):
    async with SimFleet(1) as fleet:
        async with http.get(fleet.urls[0] + "/v2/nothing") as resp:
            status, body = resp.status, await resp.json(content_type=None)
    assert status == 404 and body["error"]["code"] == 404


async def test_prompt_larger_than_the_kv_cache_is_rejected_up_front(http):
    async with SimFleet(1, num_gpu_blocks=8) as fleet:  # 128 tokens of KV
        status, body, _ = await post(
            http, fleet.urls[0] + "/v1/completions", {"prompt": "x" * 1000, "max_tokens": 4}
        )
    assert status == 400 and "KV-cache blocks" in body["error"]["message"]


async def test_lora_request_on_a_server_without_lora_slots_is_rejected(http):
    async with SimFleet(1, loras=["fr"], max_lora=0) as fleet:
        status, body, _ = await post(
            http, fleet.urls[0] + "/v1/completions", {"model": "fr", "prompt": "salut"}
        )
    assert status == 400 and "max_lora=0" in body["error"]["message"]


def test_fleet_rejects_bad_settings_naming_them():
    with pytest.raises(ValueError, match="replicas"):
        SimFleet(0)
    with pytest.raises(ValueError, match="unknown engine parameter"):
        SimFleet(1, num_gpu_blokcs=10)
    with pytest.raises(ValueError, match="profile"):
        SimFleet(1, profile="tpu")
    with pytest.raises(ValueError, match="faults"):
        SimFleet(2, faults={5: None})


@pytest.mark.parametrize("speed", [0, -1.0, float("inf"), float("nan")])
def test_fleet_rejects_a_speed_that_is_not_a_finite_positive_number(speed):
    with pytest.raises(ValueError, match="speed"):
        SimFleet(1, speed=speed)
