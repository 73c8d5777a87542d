"""Cost of the content-safety guard per streamed chunk and per prompt, against plain regex.

Why: guard.out runs on every chunk of every streamed answer, so its per-chunk cost must stay
close to the cost of the regex work itself. The reference, measured in the same run on the
same data, is the least a scanner can do: ``pattern.search`` of each precompiled rule over
the raw chunk (no SSE parsing, no window, no redaction). The ratio is what igw's framing
(line splitting, JSON decode of each event, the window across chunks) adds. Likewise the
prompt check is compared with ``search`` of each rule over the raw request body.

Rules: one deny pattern, e-mails and API keys blocked, credit cards redacted (four
patterns). Chunks: OpenAI chat-completion SSE events with a few words each, as vLLM sends.
Timings are printed and stored in ``extra_info``, never asserted.
"""

from __future__ import annotations

import json
import os
import time

from igw.guard import build_guard
from igw.guard.rules import API_KEY, CARD, EMAIL
from igw.pipeline import Request
from igw.stages import ParseStage

QUICK = os.environ.get("IGW_BENCH_QUICK") == "1"
CHUNKS = 2_000 if QUICK else 20_000
PROMPTS = 50 if QUICK else 500
SPEC = {
    "prompt": {"deny": [{"name": "dan", "pattern": r"(?i)\bDAN mode\b"}],
               "pii": {"emails": "block", "apiKeys": "block", "creditCards": "redact"}},
    "response": {"deny": [{"name": "leak", "pattern": "BEGIN PRIVATE KEY"}],
                 "pii": {"emails": "block", "apiKeys": "block", "creditCards": "redact"}},
}  # fmt: skip
WORDS = "the quick brown fox jumps over a lazy dog while streaming tokens to a client".split()


def _chunks(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        text = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(3)) + " "
        event = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                 "model": "m", "choices": [{"index": 0, "delta": {"content": text},
                                            "logprobs": None, "finish_reason": None}]}  # fmt: skip
        out.append(b"data: " + json.dumps(event).encode() + b"\n\n")
    return out


def _plain_search(items: list[bytes], patterns: list) -> float:
    """Seconds per item to decode it and ``re.search`` every pattern: the baseline."""
    started = time.perf_counter()
    for item in items:
        text = item.decode()
        for pattern in patterns:
            pattern.search(text)
    return (time.perf_counter() - started) / len(items)


def _baseline_chunks(chunks: list[bytes]) -> float:
    import re

    return _plain_search(chunks, [re.compile(r"BEGIN PRIVATE KEY"), EMAIL, API_KEY, CARD])


def _guard_chunks(chunks: list[bytes]) -> float:
    (stage,) = build_guard(SPEC).response_checks
    request = Request("r", stream=True)
    stage.on_headers(request, 200, {"content-type": "text/event-stream"})
    started = time.perf_counter()
    for chunk in chunks:
        stage.on_chunk(request, chunk, False)
    elapsed = time.perf_counter() - started
    stage.on_chunk(request, b"", True)
    stage.on_finish(request)
    return elapsed / len(chunks)


def test_guard_out_per_chunk_vs_plain_search(benchmark):
    chunks = _chunks(CHUNKS)
    _baseline_chunks(chunks[:200]), _guard_chunks(chunks[:200])  # warm up
    baseline = min(_baseline_chunks(chunks) for _ in range(3))
    guarded = benchmark.pedantic(lambda: _guard_chunks(chunks), rounds=3, iterations=1)
    guarded = min(guarded, _guard_chunks(chunks))
    info = benchmark.extra_info
    info["baseline_us_per_chunk"] = round(baseline * 1e6, 2)
    info["guard_us_per_chunk"] = round(guarded * 1e6, 2)
    info["ratio"] = round(guarded / baseline, 2)
    print(f"\nguard.out per SSE chunk: {guarded * 1e6:.2f} us, plain search {baseline * 1e6:.2f}"
          f" us, ratio {guarded / baseline:.2f}")  # fmt: skip


def _prompt_bodies(n: int) -> list[bytes]:
    text = " ".join(WORDS) + " "
    return [json.dumps({"model": "m", "messages": [
        {"role": "system", "content": "You are a helpful assistant. " * 20},
        {"role": "user", "content": f"request {i}: " + text * 200},
    ]}).encode() for i in range(n)]  # fmt: skip


def test_guard_in_per_prompt_vs_plain_search(benchmark):
    import re

    bodies = _prompt_bodies(PROMPTS)
    patterns = [re.compile(r"(?i)\bDAN mode\b"), EMAIL, API_KEY, CARD]
    (check,) = build_guard(SPEC).checks
    requests = []
    for body in bodies:
        request = Request("r", path="/v1/chat/completions", body=body)
        ParseStage().apply(request)
        requests.append(request)

    def guarded() -> float:
        started = time.perf_counter()
        for request in requests:
            check.apply(request)
        return (time.perf_counter() - started) / len(requests)

    baseline = min(_plain_search(bodies, patterns) for _ in range(3))
    cost = min(benchmark.pedantic(guarded, rounds=3, iterations=1), guarded())
    info = benchmark.extra_info
    info["prompt_bytes"] = len(bodies[0])
    info["baseline_us_per_prompt"] = round(baseline * 1e6, 1)
    info["guard_us_per_prompt"] = round(cost * 1e6, 1)
    info["ratio"] = round(cost / baseline, 2)
    print(f"\nguard.in per {len(bodies[0]) // 1024} KB prompt: {cost * 1e6:.1f} us, plain search"
          f" {baseline * 1e6:.1f} us, ratio {cost / baseline:.2f}")  # fmt: skip
