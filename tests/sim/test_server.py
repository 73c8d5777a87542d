"""The simulator over HTTP: OpenAI routes, streaming, caching, queueing, metrics, LoRA."""

from __future__ import annotations

import asyncio
import random
import socket
import time

import pytest

from igw.sim import SimFleet
from igw.sim.replica import MAX_LAG_S

from .helpers import metric, post, scrape, sse_events, sse_json

LONG = "The quick brown fox jumps over the lazy dog. " * 356  # ~16 KB, ~4,000 tokens


async def test_repeated_long_prompt_hits_the_cache_and_cuts_model_ttft(http):
    async with SimFleet(1, speed=50) as fleet:
        url = fleet.urls[0] + "/v1/completions"
        body = {"model": "sim-model", "prompt": LONG, "max_tokens": 2}
        _, first, h1 = await post(http, url, body)
        _, second, h2 = await post(http, url, body)
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= first["usage"]["prompt_tokens"] - 16
    # ~4,000 tokens x 0.1 ms prefilled the first time, ~1 token the second.
    assert float(h1["x-sim-ttft-ms"]) > 300
    assert float(h2["x-sim-ttft-ms"]) < 0.1 * float(h1["x-sim-ttft-ms"])


async def test_cache_hit_lowers_wall_clock_time_to_first_token(http):
    async def ttft(url: str) -> float:
        body = {"prompt": LONG + "wall", "max_tokens": 2, "stream": True}
        start = time.perf_counter()
        async with http.post(url, json=body) as resp:
            await resp.content.readuntil(b"\n\n")
            elapsed = time.perf_counter() - start
            await resp.read()
        return elapsed

    async with SimFleet(1, speed=2) as fleet:
        url = fleet.urls[0] + "/v1/completions"
        cold = await ttft(url)  # ~410 model ms -> ~205 ms wall
        warm = await ttft(url)  # ~10 model ms -> ~5 ms wall
    assert cold > 0.2
    assert warm < cold / 3


async def test_requests_beyond_max_num_seqs_wait_and_take_longer(http):
    # each batch ~200 ms wall, so four requests wait for ~200-400 ms: scrapes every 5 ms see
    # it even on a loaded CI machine (at ~100 ms per batch one run missed it)
    async with SimFleet(1, speed=1, max_num_seqs=2) as fleet:
        base = fleet.urls[0]
        body = {"prompt": "hello there", "max_tokens": 20, "ignore_eos": True}
        tasks = [asyncio.create_task(post(http, base + "/v1/completions", body)) for _ in range(6)]
        peak_waiting = peak_running = 0.0
        deadline = time.monotonic() + 10
        while not all(t.done() for t in tasks) and time.monotonic() < deadline:
            values = await scrape(http, base)
            peak_waiting = max(peak_waiting, metric(values, "vllm:num_requests_waiting"))
            peak_running = max(peak_running, metric(values, "vllm:num_requests_running"))
            await asyncio.sleep(0.005)
        results = await asyncio.gather(*tasks)
    assert peak_running == 2
    assert peak_waiting >= 2
    e2e = sorted(float(h["x-sim-e2e-ms"]) for _, _, h in results)
    queue = sorted(float(h["x-sim-queue-ms"]) for _, _, h in results)
    assert queue[0] < 50 and queue[-1] > 300  # the last pair waited for two batches
    assert e2e[-1] > 2.5 * e2e[0]
    # The second pair starts in the step right after the first pair finishes (model time).
    assert queue[2] == pytest.approx(e2e[0], abs=1.0)
    assert metric(values, "igw_sim_engine_lag_seconds_total") == 0


async def test_metrics_track_running_requests_kv_usage_and_prefix_hits(http):
    async with SimFleet(1, speed=5) as fleet:  # the stream lasts ~0.4 s wall
        base = fleet.urls[0]
        before = await scrape(http, base)
        body = {"prompt": LONG, "max_tokens": 200, "ignore_eos": True, "stream": True}
        async with http.post(base + "/v1/completions", json=body) as resp:
            await resp.content.readuntil(b"\n\n")
            during = await scrape(http, base)
            await resp.read()
        await post(http, base + "/v1/completions", {"prompt": LONG, "max_tokens": 1})
        after = await scrape(http, base)
    assert metric(before, "vllm:num_requests_running") == 0
    assert metric(during, "vllm:num_requests_running") == 1
    usage = metric(during, "vllm:kv_cache_usage_perc")
    assert usage == pytest.approx(4000 / 16 / 2048, rel=0.05)
    assert metric(during, "vllm:gpu_cache_usage_perc") == usage
    assert metric(after, "vllm:num_requests_running") == 0
    assert metric(after, "vllm:kv_cache_usage_perc") == 0
    queries = metric(after, "vllm:prefix_cache_queries_total")
    hits = metric(after, "vllm:prefix_cache_hits_total")
    assert queries == pytest.approx(2 * 4005, abs=20)
    assert hits == pytest.approx(4005, abs=20)
    assert metric(after, "vllm:time_to_first_token_seconds_count") == 2
    # 4,005 tokens prefilled cold at 0.1 ms, at speed 5: ~0.08 s of the first request's time.
    prefill = metric(after, "vllm:request_prefill_time_seconds_sum")
    assert 0.08 < prefill < 0.1
    assert metric(after, "vllm:request_prompt_tokens_sum") == pytest.approx(2 * 4005, abs=20)
    assert metric(after, "vllm:request_generation_tokens_sum") == 201
    (success,) = [v for k, v in after.items() if 'finished_reason="length"' in k]
    assert success == 2


async def test_metrics_export_cache_config_and_lora_info_for_the_picker(http):
    async with SimFleet(1, loras=["fr"], block_size=32, num_gpu_blocks=777, max_lora=3) as fleet:
        values = await scrape(http, fleet.urls[0])
    (config,) = [k for k in values if k.startswith("vllm:cache_config_info{")]
    assert 'block_size="32"' in config and 'num_gpu_blocks="777"' in config
    (lora,) = [k for k in values if k.startswith("vllm:lora_requests_info{")]
    assert 'max_lora="3"' in lora and 'running_lora_adapters=""' in lora


async def test_completion_stream_has_one_chunk_per_token_a_usage_chunk_and_done(http):
    async with SimFleet(1, speed=50) as fleet:
        body = {
            "prompt": "Once upon a time",
            "max_tokens": 5,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with http.post(fleet.urls[0] + "/v1/completions", json=body) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            raw = await resp.read()
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = sse_json(raw)
    tokens, usage = chunks[:-1], chunks[-1]
    assert len(tokens) == 5
    assert all(c["object"] == "text_completion" for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in tokens] == [None] * 4 + ["length"]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 5
    assert usage["usage"]["prompt_tokens"] == 4
    assert usage["usage"]["total_tokens"] == 9


async def test_stream_without_include_usage_sends_no_usage_chunk(http):
    async with SimFleet(1, speed=50) as fleet:
        body = {"prompt": "hi", "max_tokens": 3, "stream": True}
        async with http.post(fleet.urls[0] + "/v1/completions", json=body) as resp:
            raw = await resp.read()
    chunks = sse_json(raw)
    assert len(chunks) == 3 and all(c["choices"] for c in chunks)
    assert sse_events(raw)[-1] == "[DONE]"


async def test_continuous_usage_stats_put_running_usage_on_every_chunk(http):
    async with SimFleet(1, speed=50) as fleet:
        options = {"include_usage": True, "continuous_usage_stats": True}
        body = {"prompt": "count", "max_tokens": 3, "stream": True, "stream_options": options}
        async with http.post(fleet.urls[0] + "/v1/completions", json=body) as resp:
            raw = await resp.read()
    chunks = sse_json(raw)
    assert [c["usage"]["completion_tokens"] for c in chunks[:-1]] == [1, 2, 3]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 5


async def test_chat_stream_starts_with_role_and_matches_the_non_streamed_answer(http):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    async with SimFleet(1, speed=50) as fleet:
        url = fleet.urls[0] + "/v1/chat/completions"
        body = {"model": "sim-model", "messages": messages, "max_completion_tokens": 6}
        _, whole, _ = await post(http, url, body)
        async with http.post(url, json={**body, "stream": True}) as resp:
            raw = await resp.read()
    chunks = sse_json(raw)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    streamed = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert whole["object"] == "chat.completion"
    assert whole["choices"][0]["message"]["content"] == streamed
    assert len(streamed) == 6 * 4
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_answer_stops_naturally_unless_ignore_eos(http):
    async with SimFleet(1, speed=100, output_len_min=5, output_len_max=9) as fleet:
        url = fleet.urls[0] + "/v1/chat/completions"
        body = {"messages": [{"role": "user", "content": "tell me"}], "max_tokens": 50}
        _, natural, _ = await post(http, url, body)
        _, forced, _ = await post(http, url, {**body, "ignore_eos": True})
    assert natural["choices"][0]["finish_reason"] == "stop"
    assert 5 <= natural["usage"]["completion_tokens"] <= 9
    assert forced["choices"][0]["finish_reason"] == "length"
    assert forced["usage"]["completion_tokens"] == 50


async def test_token_id_prompt_counts_one_token_per_id(http):
    async with SimFleet(1, speed=100) as fleet:
        _, body, _ = await post(
            http, fleet.urls[0] + "/v1/completions", {"prompt": list(range(37)), "max_tokens": 1}
        )
    assert body["usage"]["prompt_tokens"] == 37


async def test_tokenize_counts_what_the_engine_charges_and_is_stable(http):
    messages = [{"role": "user", "content": "How many tokens is this?"}]
    async with SimFleet(1, speed=100) as fleet:
        base = fleet.urls[0]
        _, tok, _ = await post(http, base + "/tokenize", {"prompt": "abcdefgh12"})
        _, again, _ = await post(http, base + "/tokenize", {"prompt": "abcdefgh12"})
        _, chat_tok, _ = await post(http, base + "/tokenize", {"messages": messages})
        _, chat, _ = await post(
            http, base + "/v1/chat/completions", {"messages": messages, "max_tokens": 1}
        )
        status, error, _ = await post(http, base + "/tokenize", {"model": "x", "prompt": "a"})
    assert tok["count"] == 3 and len(tok["tokens"]) == 3 and tok == again
    assert chat_tok["count"] == chat["usage"]["prompt_tokens"]
    assert status == 404 and error["error"]["param"] == "model"


async def test_models_route_lists_served_names_and_adapters(http):
    async with SimFleet(1, models=["sim-model", "alias"], loras=["fr"]) as fleet:
        async with http.get(fleet.urls[0] + "/v1/models") as resp:
            data = (await resp.json())["data"]
        async with http.get(fleet.urls[0] + "/health") as resp:
            health = resp.status
    by_id = {m["id"]: m for m in data}
    assert set(by_id) == {"sim-model", "alias", "fr"}
    assert by_id["fr"]["parent"] == "sim-model"
    assert by_id["alias"]["parent"] is None
    assert health == 200


async def test_lora_request_pays_a_load_cost_once_and_shows_in_lora_info(http):
    async with SimFleet(1, speed=20, loras=["fr", "es"], max_lora=1) as fleet:
        base = fleet.urls[0]
        body = {"model": "fr", "prompt": "bonjour", "max_tokens": 2}
        _, _, first = await post(http, base + "/v1/completions", body)
        _, _, second = await post(http, base + "/v1/completions", body)
        stream = {**body, "max_tokens": 5000, "ignore_eos": True, "stream": True}
        async with http.post(base + "/v1/completions", json=stream) as resp:
            await resp.content.readuntil(b"\n\n")
            values = await scrape(http, base)
            resp.close()
    load = float(first["x-sim-ttft-ms"]) - float(second["x-sim-ttft-ms"])
    assert load == pytest.approx(25.0, abs=1.0)
    (info,) = [k for k in values if k.startswith("vllm:lora_requests_info{")]
    assert 'running_lora_adapters="fr"' in info and 'max_lora="1"' in info


async def test_runtime_lora_loading_adds_a_servable_adapter(http):
    async with SimFleet(1, speed=100) as fleet:
        base = fleet.urls[0]
        missing, _, _ = await post(http, base + "/v1/completions", {"model": "de", "prompt": "x"})
        async with http.post(
            base + "/v1/load_lora_adapter", json={"lora_name": "de", "lora_path": "/tmp/de"}
        ) as resp:
            loaded = resp.status
        served, _, _ = await post(http, base + "/v1/completions", {"model": "de", "prompt": "x"})
    assert (missing, loaded, served) == (404, 200, 200)


async def test_client_disconnect_frees_the_request(http):
    async with SimFleet(1, speed=10) as fleet:
        base = fleet.urls[0]
        body = {"prompt": "long story", "max_tokens": 5000, "ignore_eos": True, "stream": True}
        async with http.post(base + "/v1/completions", json=body) as resp:
            await resp.content.readuntil(b"\n\n")
            resp.close()
        running = 1.0
        for _ in range(100):
            running = metric(await scrape(http, base), "vllm:num_requests_running")
            if running == 0:
                break
            await asyncio.sleep(0.01)
    assert running == 0


async def test_engine_lag_counter_shows_when_the_process_starves_the_simulator(http):
    async with SimFleet(1, speed=1) as fleet:
        base = fleet.urls[0]
        body = {"prompt": "x", "max_tokens": 100, "ignore_eos": True, "stream": True}
        async with http.post(base + "/v1/completions", json=body) as resp:
            await resp.content.readuntil(b"\n\n")
            # Block the loop past the catch-up window: the engine must drop the debt.
            time.sleep(MAX_LAG_S + 0.3)  # noqa: ASYNC251
            await resp.read()
        lag = metric(await scrape(http, base), "igw_sim_engine_lag_seconds_total")
    assert MAX_LAG_S < lag < MAX_LAG_S + 0.6


async def test_same_requests_in_the_same_order_get_identical_model_latencies(http):
    async def run() -> list[tuple]:
        out = []
        async with SimFleet(1, speed=50, num_gpu_blocks=300) as fleet:
            url = fleet.urls[0] + "/v1/completions"
            for i in range(8):
                body = {"prompt": LONG[: 1000 * (1 + i % 3)] + str(i), "max_tokens": 3 + i}
                _, data, headers = await post(http, url, body)
                out.append(
                    (
                        headers["x-sim-ttft-ms"],
                        headers["x-sim-e2e-ms"],
                        data["usage"],
                        data["choices"][0]["text"],
                    )
                )
        return out

    first = await run()
    assert first == await run()
    assert len({ttft for ttft, *_ in first}) > 1  # the requests did differ


async def test_fleet_on_a_base_port_uses_consecutive_ports(http):
    rng = random.Random()
    for _ in range(5):  # a random block; retry if another process holds one of its ports
        base = rng.randrange(20000, 60000)
        fleet = SimFleet(3, port=base)
        try:
            await fleet.start()
        except OSError:
            continue
        try:
            ports = [r.port for r in fleet.replicas]
            async with http.get(fleet.urls[2] + "/health") as resp:
                status = resp.status
        finally:
            await fleet.stop()
        assert ports == [base, base + 1, base + 2]
        assert status == 200
        return
    pytest.skip("no free block of 3 ports found")


async def test_busy_port_fails_the_fleet_start_naming_the_replica():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        fleet = SimFleet(1, port=port)
        with pytest.raises(OSError, match=f"replica 0: cannot listen on 127.0.0.1:{port}"):
            await fleet.start()


async def test_a_short_stall_is_caught_up_without_changing_model_latency(http):
    body = {"prompt": "catch up", "max_tokens": 30, "ignore_eos": True}
    async with SimFleet(1, speed=1) as fleet:
        url = fleet.urls[0] + "/v1/completions"
        _, _, calm = await post(http, url, body)
        task = asyncio.create_task(post(http, url, body))
        await asyncio.sleep(0.05)
        time.sleep(0.2)  # noqa: ASYNC251 - a 200 ms hiccup, inside the catch-up window
        _, _, stalled = await task
        lag = metric(await scrape(http, fleet.urls[0]), "igw_sim_engine_lag_seconds_total")
    assert stalled["x-sim-e2e-ms"] == calm["x-sim-e2e-ms"]
    assert lag == 0


async def test_ipv6_loopback_replica_has_a_bracketed_url(http):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    fleet = SimFleet(1, host="::1")
    try:
        await fleet.start()
    except OSError:
        pytest.skip("IPv6 loopback unavailable")
    try:
        async with http.get(fleet.urls[0] + "/health") as resp:
            status = resp.status
    finally:
        await fleet.stop()
    assert fleet.urls[0].startswith("http://[::1]:")
    assert status == 200


async def test_next_chat_turn_hits_the_cache_for_the_history_and_the_answer(http):
    history = [{"role": "system", "content": LONG[:2000]}, {"role": "user", "content": "Hi?"}]
    async with SimFleet(1, speed=100) as fleet:
        url = fleet.urls[0] + "/v1/chat/completions"
        _, first, _ = await post(http, url, {"messages": history, "max_tokens": 40})
        answer = first["choices"][0]["message"]["content"]
        follow = [*history, {"role": "assistant", "content": answer},
                  {"role": "user", "content": "And then?"}]  # fmt: skip
        _, second, _ = await post(http, url, {"messages": follow, "max_tokens": 4})
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    turn_one = first["usage"]["prompt_tokens"] + first["usage"]["completion_tokens"]
    assert cached >= turn_one - 2 * 16  # all but the partial blocks at the joins
    assert cached > first["usage"]["prompt_tokens"]  # the answer's blocks hit too


async def test_chat_stream_sends_its_role_delta_only_with_the_first_token(http):
    body = {"messages": [{"role": "user", "content": LONG}], "max_tokens": 2, "stream": True}
    async with SimFleet(1, speed=5) as fleet:  # ~410 model ms of prefill -> ~82 ms wall
        start = time.perf_counter()
        async with http.post(fleet.urls[0] + "/v1/chat/completions", json=body) as resp:
            first_event = await resp.content.readuntil(b"\n\n")
            waited = time.perf_counter() - start
            await resp.read()
    assert b'"role":"assistant"' in first_event
    assert waited > 0.06


def test_stream_interval_wakes_a_stream_for_its_first_token_then_every_n_and_at_the_end():
    from igw.sim.model import Seq
    from igw.sim.server import _Waiter

    seq = Seq(4, [], 10)
    waiter = _Waiter(stream=True, until=10, interval=4)
    wakes = []
    for n in range(1, 11):
        seq.output = n
        if n == 10:
            seq.finish_reason = "length"
        waiter.on_progress(seq)
        if waiter.event.is_set():
            wakes.append(n)
            waiter.event.clear()
    assert wakes == [1, 5, 9, 10]


async def test_stream_with_an_interval_still_sends_every_token_and_done(http):
    async with SimFleet(1, speed=100, stream_interval=4) as fleet:
        body = {"prompt": "hi", "max_tokens": 10, "stream": True}
        async with http.post(fleet.urls[0] + "/v1/completions", json=body) as resp:
            raw = await resp.read()
    assert len(sse_json(raw)) == 10 and sse_events(raw)[-1] == "[DONE]"


async def test_instant_profile_answers_with_zero_model_time(http):
    async with SimFleet(1, profile="instant") as fleet:
        _, body, headers = await post(
            http, fleet.urls[0] + "/v1/completions", {"prompt": LONG, "max_tokens": 8}
        )
    assert body["usage"]["completion_tokens"] == 8
    assert float(headers["x-sim-e2e-ms"]) == 0.0
