"""``igw bench core``: latency of one pick on the C++ core against the pure-Python reference.

The workload is what a busy gateway's index looks like: 64 system prompts of 2k-8k tokens,
each endpoint having served several of them plus a few conversations of its own (a system
prompt followed by a unique user part), recorded through the real ``PrefixIndex.record``.
Each timed pick hashes a fresh prompt (one of the system prompts, then unique text up to
``--prompt-tokens``) inside the call, matches it against the index, scores with the default
profile (queue 2, kv-cache 2, prefix 3, max-score picker) and picks, without reserving or
recording so every iteration sees the same state. Text is ~4 bytes per token and a block is
64 tokens (256 bytes), as in the reference picker.

The same workload is built in ``igw.core_reference`` and timed in the same run to report the
speed-up (skipped with ``--no-reference``, and capped in iterations because it is slow).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from types import ModuleType

import numpy as np

MODEL = "bench-model"
BYTES_PER_TOKEN = 4
BLOCK_TOKENS = 64
BLOCK_BYTES = BLOCK_TOKENS * BYTES_PER_TOKEN
SYSTEM_PROMPTS = 64
DEFAULT_PROFILE = [
    ("queue-scorer", 2.0, {}),
    ("kv-cache-utilization-scorer", 2.0, {}),
    ("prefix-cache-scorer", 3.0, {}),
]


@dataclass
class Fleet:
    """Endpoints, their metrics and what they have cached (shared by C++ and reference)."""

    endpoints: int
    seed: int
    system_prompts: list[bytes]
    recordings: list[tuple[int, np.ndarray]]  # (endpoint, block hashes) in recording order
    metrics: list[tuple[int, int, float]]  # waiting, running, kv_util per endpoint


def _text(rng: np.random.Generator, tokens: int) -> bytes:
    return rng.integers(0, 256, tokens * BYTES_PER_TOKEN, dtype=np.uint8).tobytes()


def build_fleet(
    endpoints: int,
    *,
    prompts_per_endpoint: int = 8,
    conversations_per_endpoint: int = 4,
    user_tokens: int = 512,
    seed: int = 1,
) -> Fleet:
    """Each endpoint served ``prompts_per_endpoint`` of the 64 system prompts and a few
    conversations (system prompt + unique user text) of its own.

    Recordings are hashed once with the C++ core (tests check both cores hash identically),
    so building the reference's index does not spend minutes in pure-Python XXH64.
    """
    from igw import _core

    rng = np.random.default_rng(seed)
    system = [_text(rng, int(rng.integers(2048, 8193))) for _ in range(SYSTEM_PROMPTS)]
    hseed = _core.model_seed(MODEL)
    system_hashes = [_core.hash_blocks(p, BLOCK_BYTES, hseed) for p in system]
    recordings: list[tuple[int, np.ndarray]] = []
    for e in range(endpoints):
        chosen = rng.choice(SYSTEM_PROMPTS, prompts_per_endpoint, replace=False)
        recordings.extend((e, system_hashes[int(s)]) for s in chosen)
        for s in chosen[:conversations_per_endpoint]:
            convo = system[int(s)] + _text(rng, user_tokens)
            recordings.append((e, _core.hash_blocks(convo, BLOCK_BYTES, hseed)))
    metrics = [
        (int(rng.integers(0, 20)), int(rng.integers(0, 64)), float(rng.uniform(0.05, 0.95)))
        for _ in range(endpoints)
    ]
    return Fleet(endpoints, seed, system, recordings, metrics)


def build_queries(fleet: Fleet, prompt_tokens: int, count: int = 16) -> list[bytes]:
    """Prompts that start with one of the system prompts (up to 3/4 of their length) and
    continue with unique text: warm prefixes, cold tails, as in multi-turn chat traffic."""
    rng = np.random.default_rng(fleet.seed + prompt_tokens)
    want = prompt_tokens * BYTES_PER_TOKEN
    out = []
    for _ in range(count):
        head = fleet.system_prompts[int(rng.integers(SYSTEM_PROMPTS))][: want * 3 // 4]
        out.append(head + _text(rng, max(0, want - len(head)) // BYTES_PER_TOKEN))
    return out


@dataclass
class Setup:
    core: ModuleType
    table: object
    index: object
    scheduler: object
    profile: object
    model_seed: int


def setup(core: ModuleType, fleet: Fleet) -> Setup:
    """Build table, warm index and scheduler for ``fleet`` in ``core`` (C++ or reference)."""
    table = core.EndpointTable(max(fleet.endpoints, 1))
    index = core.PrefixIndex(max(fleet.endpoints, 1), 31250)
    for waiting, running, kv in fleet.metrics:
        e = table.add()
        table.update(e, waiting=waiting, running=running, kv_util=kv, now=1.0)
        table.set_ready(e, True)
    for e, hashes in fleet.recordings:
        index.record(e, hashes)
    scheduler = core.Scheduler(table, index, fleet.seed)
    return Setup(
        core, table, index, scheduler, core.Profile(DEFAULT_PROFILE), core.model_seed(MODEL)
    )


def pick_once(s: Setup, prompt: bytes, prompt_tokens: int):
    """One routing decision as the gateway makes it: hash, match, score, pick."""
    return s.scheduler.pick(
        s.profile,
        prompt=prompt,
        block_bytes=BLOCK_BYTES,
        seed=s.model_seed,
        prompt_tokens=prompt_tokens,
        block_tokens=BLOCK_TOKENS,
        reserve=False,
        record=False,
    )


def time_prehashed(s: Setup, hashes: list[np.ndarray], prompt_tokens: int, iterations: int):
    """As ``time_picks`` but with the block hashes computed beforehand (pick only)."""
    out = np.empty(iterations, dtype=np.float64)
    clock = time.perf_counter_ns
    for i in range(iterations):
        h = hashes[i % len(hashes)]
        t0 = clock()
        s.scheduler.pick(
            s.profile, hashes=h, prompt_tokens=prompt_tokens, block_tokens=BLOCK_TOKENS,
            reserve=False, record=False,
        )  # fmt: skip
        out[i] = (clock() - t0) / 1000.0
    return out


def time_picks(
    s: Setup, queries: list[bytes], prompt_tokens: int, iterations: int, warmup: int = 20
) -> np.ndarray:
    """Per-pick wall time in microseconds, cycling through ``queries``."""
    for i in range(warmup):
        pick_once(s, queries[i % len(queries)], prompt_tokens)
    out = np.empty(iterations, dtype=np.float64)
    clock = time.perf_counter_ns
    for i in range(iterations):
        q = queries[i % len(queries)]
        t0 = clock()
        pick_once(s, q, prompt_tokens)
        out[i] = (clock() - t0) / 1000.0
    return out


def check_same_answers(fast: Setup, slow: Setup, queries: list[bytes], prompt_tokens: int):
    """A benchmark of a wrong core is worthless: both must match the same blocks."""
    for q in queries[:2]:
        a = pick_once(fast, q, prompt_tokens).matched_blocks
        b = pick_once(slow, q, prompt_tokens).matched_blocks
        if not np.array_equal(a, b):
            raise AssertionError("C++ and reference disagree on matched_blocks")


def measure(
    endpoints: int,
    prompt_tokens: int,
    iterations: int = 2000,
    reference: bool = True,
    reference_iterations: int = 20,
) -> dict:
    """Run the benchmark and return a JSON-able dict of the numbers."""
    from igw import _core

    fleet = build_fleet(endpoints)
    queries = build_queries(fleet, prompt_tokens)
    fast = setup(_core, fleet)
    times = time_picks(fast, queries, prompt_tokens, iterations)
    result = {
        "endpoints": endpoints,
        "prompt_tokens": prompt_tokens,
        "iterations": iterations,
        "pick_p50_us": float(np.percentile(times, 50)),
        "pick_p99_us": float(np.percentile(times, 99)),
        "index_entries": int(fast.index.entries()),
        "index_bytes": int(fast.index.memory_bytes()),
        "index_bytes_per_entry": fast.index.memory_bytes() / max(1, fast.index.entries()),
        "reference_pick_p50_us": None,
        "speedup_vs_reference": None,
        "prehashed_pick_p50_us": None,
        "reference_prehashed_pick_p50_us": None,
        "speedup_vs_reference_prehashed": None,
    }
    if reference:
        from igw import core_reference

        slow = setup(core_reference, fleet)
        check_same_answers(fast, slow, queries, prompt_tokens)
        ref_times = time_picks(slow, queries, prompt_tokens, reference_iterations, warmup=1)
        ref_p50 = float(np.percentile(ref_times, 50))
        result["reference_pick_p50_us"] = ref_p50
        result["speedup_vs_reference"] = ref_p50 / result["pick_p50_us"]
        # Without hashing (pure-Python XXH64 dominates the reference's time above).
        hashes = [_core.hash_blocks(q, BLOCK_BYTES, fast.model_seed) for q in queries]
        fast_nh = float(np.percentile(time_prehashed(fast, hashes, prompt_tokens, 500), 50))
        slow_nh = float(
            np.percentile(time_prehashed(slow, hashes, prompt_tokens, reference_iterations), 50)
        )
        result["prehashed_pick_p50_us"] = fast_nh
        result["reference_prehashed_pick_p50_us"] = slow_nh
        result["speedup_vs_reference_prehashed"] = slow_nh / fast_nh
    return result


# Scheduling-engine profiles timed by ``engine_schedule_us``: the default (core scorers only:
# no snapshot), one with a Python filter (the engine's shared snapshot), one with LoRA affinity.
ENGINE_PROFILES = {
    "default": None,
    "python-filter": "plugins: [{type: utilization-filter, parameters: {conditions: "
    "[{metric: waiting-queue, maxValue: 1000}]}}, {type: queue-scorer}, "
    "{type: kv-cache-utilization-scorer}, {type: prefix-cache-scorer}]",
    "lora": "plugins: [{type: queue-scorer}, {type: kv-cache-utilization-scorer}, "
    "{type: prefix-cache-scorer}, {type: lora-affinity-scorer}]",
}


def engine_schedule_us(
    endpoints: int, profile: str, prompt_tokens: int = 2048, iterations: int = 1000
) -> float:
    """Median microseconds of one ``SchedulingEngine.schedule`` + ``release`` on a pool of
    ``endpoints`` (the fleet's metrics, a 2k-token prompt, fresh request state each call), with
    one endpoint's metrics updated between picks as a scrape loop would."""
    from igw.config import load_config
    from igw.datastore import Pool
    from igw.pipeline import Request
    from igw.scheduling.engine import SchedulingEngine

    fleet = build_fleet(endpoints, prompts_per_endpoint=2, conversations_per_endpoint=1)
    text = ENGINE_PROFILES[profile]
    config = None
    if text is not None:
        config = load_config(
            text="apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n" + text
        )
    engine = SchedulingEngine(config)
    pool = Pool("bench", max_endpoints=max(endpoints, 1), seed=fleet.seed)
    for i, (waiting, running, kv) in enumerate(fleet.metrics):
        e = pool.upsert(f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}:8000")
        pool.table.update(e.id, waiting=waiting, running=running, kv_util=kv, now=1.0, max_lora=4)
        pool.table.set_ready(e.id, True)
    requests = [
        Request(request_id=str(i), incoming_model=MODEL, target_model=MODEL, prompt=q)
        for i, q in enumerate(build_queries(fleet, prompt_tokens, count=32))
    ]
    out = np.empty(iterations, dtype=np.float64)
    clock = time.perf_counter_ns
    for i in range(-50, iterations):  # 50 warm-up calls
        request = requests[i % len(requests)]
        request.attrs.clear()
        pool.table.update((i * 7919) % endpoints, waiting=i % 5, running=1, kv_util=0.5, now=1.0)
        t0 = clock()
        engine.release(engine.schedule(request, pool))
        if i >= 0:
            out[i] = (clock() - t0) / 1000.0
    return float(np.median(out))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-h", "--help", action="help", help="show this help and exit")
    parser.add_argument("--endpoints", type=int, default=1000, help="endpoints (default 1000)")
    parser.add_argument(
        "--prompt-tokens", type=int, default=8192, help="prompt length in tokens (default 8192)"
    )
    parser.add_argument(
        "--iterations", type=int, default=2000, help="timed picks on the C++ core (default 2000)"
    )
    parser.add_argument(
        "--reference-iterations",
        type=int,
        default=20,
        help="timed picks on the pure-Python reference (default 20)",
    )
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the (slow) pure-Python reference"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    for name in ("endpoints", "prompt_tokens", "iterations", "reference_iterations"):
        if getattr(args, name) < 1:
            print(f"igw bench core: --{name.replace('_', '-')} must be >= 1")
            return 2
    result = measure(
        args.endpoints,
        args.prompt_tokens,
        args.iterations,
        reference=not args.no_reference,
        reference_iterations=args.reference_iterations,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"endpoints={result['endpoints']} prompt_tokens={result['prompt_tokens']}")
    print(f"pick p50 {result['pick_p50_us']:.1f} us   p99 {result['pick_p99_us']:.1f} us")
    print(
        f"index {result['index_entries']} entries, "
        f"{result['index_bytes_per_entry']:.1f} bytes per (block, endpoint) entry"
    )
    if result["speedup_vs_reference"] is not None:
        print(
            f"reference pick p50 {result['reference_pick_p50_us']:.0f} us -> "
            f"{result['speedup_vs_reference']:.0f}x faster (hashing included)"
        )
        print(
            f"without hashing: {result['prehashed_pick_p50_us']:.1f} us vs reference "
            f"{result['reference_prehashed_pick_p50_us']:.0f} us -> "
            f"{result['speedup_vs_reference_prehashed']:.0f}x faster"
        )
    return 0
