"""Deterministic offline replay: a workload routed by a SchedulingEngine onto simulated
replicas, in virtual time.

``igw bench`` measures the whole system over HTTP, which on a small shared machine is noisy
(the same seed gives TTFT p90s a factor of 3 apart between runs). Tuning a policy needs the
routing effect alone, so this replays the same requests through the real engine (real config,
real core, real prefix index) onto ``igw.sim.model`` engines driven by an event queue: no
sockets, no wall clock, the same answer every run. Metrics reach the pool table the way the
data layer delivers them (a scrape every ``scrape_interval`` seconds); in-flight accounting,
first-token calibration and release happen exactly as in the gateway.

Use it to compare policies before deploying (``python -m igw.scheduling.replay``) or from
tests; it is not a substitute for the end-to-end bench.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import itertools
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from igw.config import EndpointPickerConfig, load_config
from igw.datastore import Pool
from igw.pipeline import Request
from igw.scheduling.engine import SchedulingEngine
from igw.scheduling.policies import POLICIES, named_policy

MODEL = "sim-model"


@dataclasses.dataclass
class ReplayResult:
    policy: str
    ttft_ms: np.ndarray
    e2e_ms: np.ndarray
    share: list[int]  # requests per replica
    hit_rate: float
    preemptions: int
    makespan_s: float
    errors: int = 0  # requests a replica refused (too long for its context or KV cache)
    unreleased: int = 0  # decisions the engine still holds at the end (must be 0)
    leftover_inflight: int = 0  # in-flight requests + tokens left in the table (must be 0)

    def percentile(self, values: np.ndarray, q: float) -> float:
        return float(np.percentile(values, q)) if len(values) else float("nan")

    @property
    def hotspot(self) -> float:
        total = sum(self.share)
        return len(self.share) * max(self.share) / total if total else 0.0

    def row(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "ttft_p50_ms": round(self.percentile(self.ttft_ms, 50), 1),
            "ttft_p90_ms": round(self.percentile(self.ttft_ms, 90), 1),
            "ttft_p99_ms": round(self.percentile(self.ttft_ms, 99), 1),
            "e2e_p50_ms": round(self.percentile(self.e2e_ms, 50), 1),
            "e2e_p90_ms": round(self.percentile(self.e2e_ms, 90), 1),
            "hit_rate": round(self.hit_rate, 4),
            "hotspot": round(self.hotspot, 2),
            "preemptions": self.preemptions,
            "errors": self.errors,
        }


@dataclasses.dataclass
class _Pending:
    request: Any  # igw.bench.workloads.BenchRequest
    replica: int = -1
    decision: Any = None
    seq: Any = None


def _texts(bench_request) -> tuple[bytes, bytes]:
    """(what the gateway hashes, what the simulated server tokenizes)."""
    from igw.sim import text

    if bench_request.messages is not None:
        rendered = text.chat_text(bench_request.messages).encode()
        return rendered, rendered + text.GENERATION_PROMPT.encode()
    prompt = (bench_request.prompt or "").encode()
    return prompt, prompt


def replay(
    config: EndpointPickerConfig,
    requests: Sequence[Any],
    *,
    label: str = "policy",
    replicas: int = 4,
    params: Any = None,
    scrape_interval: float = 0.05,
    slow_replica: float = 1.0,
    seed: int = 0,
) -> ReplayResult:
    """Route ``requests`` (``igw.bench.workloads.BenchRequest``) and simulate the fleet.

    ``slow_replica`` > 1 makes the last replica's steps that many times longer.
    """
    from igw.sim import model, text

    params = params or model.EngineParams()
    engines = [model.Engine(params) for _ in range(replicas)]
    slow = [1.0] * replicas
    slow[-1] = slow_replica
    pool = Pool("replay", max_endpoints=max(replicas, 1), seed=seed)
    endpoints = [pool.upsert(f"10.0.0.{i + 1}:8000") for i in range(replicas)]
    clock = [0.0]
    # snapshot_max_age=0: Python plugins see every table change at once (a wall-clock cache
    # age would make virtual-time replays depend on how fast this machine is)
    scheduler = SchedulingEngine(config, clock=lambda: clock[0], snapshot_max_age=0)
    for endpoint in endpoints:
        pool.table.update(endpoint.id, waiting=0, running=0, kv_util=0.0, now=0.0)
        pool.table.set_ready(endpoint.id, True)
        pool.index.set_capacity(endpoint.id, params.num_gpu_blocks * params.block_size // 64)

    events: list[tuple[float, int, str, Any]] = []
    order = itertools.count()
    pending = [_Pending(r) for r in requests]
    finished_at: dict[int, float] = {}
    waiters: dict[int, list[int]] = {}
    for i, item in enumerate(pending):
        if item.request.after is None:
            heapq.heappush(events, (item.request.at, next(order), "arrive", i))
        else:
            waiters.setdefault(item.request.after, []).append(i)
    heapq.heappush(events, (0.0, next(order), "scrape", None))
    busy = [False] * replicas
    ttft: list[float] = []
    e2e: list[float] = []
    share = [0] * replicas
    done = 0
    errors = 0
    now = 0.0

    def admit(i: int) -> None:
        """A request held by the prefill gate may go (called from a first token or release)."""
        item = pending[i]
        engines[item.replica].add(item.seq)
        if not busy[item.replica]:
            start_step(item.replica, clock[0])

    def start_step(r: int, at: float) -> None:
        engine = engines[r]
        if not engine.has_work():
            busy[r] = False
            return
        step = engine.schedule(at * 1000.0)
        if not step.seqs:
            busy[r] = False
            return
        busy[r] = True
        end = at + step.duration_ms * slow[r] / 1000.0
        heapq.heappush(events, (end, next(order), "step", (r, step)))

    while events and done < len(pending):
        now, _, kind, data = heapq.heappop(events)
        clock[0] = now
        if kind == "scrape":
            for r, engine in enumerate(engines):
                pool.table.update(
                    endpoints[r].id,
                    waiting=len(engine.waiting),
                    running=len(engine.running),
                    kv_util=min(1.0, engine.cache.usage),
                    now=now,
                )
            if not any(busy) and all(e[2] == "scrape" for e in events):
                break  # nothing will ever happen again (should not occur; never spin)
            heapq.heappush(events, (now + scrape_interval, next(order), "scrape", None))
        elif kind == "arrive":
            item = pending[data]
            hashed, served = _texts(item.request)
            request = Request(
                request_id=str(data),
                incoming_model=MODEL,
                target_model=MODEL,
                prompt=hashed,
                prompt_tokens_estimate=text.estimate_tokens(hashed, 4),
                stream=True,
            )
            item.decision = scheduler.schedule(request, pool)
            r = item.decision.primary.id
            item.replica = r
            share[r] += 1
            tokens = text.estimate_tokens(served, params.bytes_per_token)
            natural, _ = text.answer_plan(served, params.output_len_min, params.output_len_max)
            target = max(1, min(item.request.max_tokens, natural))
            hashes = text.block_hashes(
                served, params.block_bytes, text.chain_seed(None, None), tokens // params.block_size
            )
            problem = engines[r].check(tokens, item.request.max_tokens)
            if problem is not None:  # the server would answer 400 at once
                errors += 1
                scheduler.release(item.decision)
                done += 1
                for follower in waiters.pop(data, []):
                    at = now + pending[follower].request.at
                    heapq.heappush(events, (at, next(order), "arrive", follower))
                continue
            seq = model.Seq(tokens, hashes, target, arrival=now * 1000.0, listener=data)
            item.seq = seq
            if scheduler.hold_for_prefill(item.decision, request, lambda i=data: admit(i)):
                continue  # behind another long prefill on that replica (scheduling.gate)
            engines[r].add(seq)
            if not busy[r]:
                start_step(r, now)
        elif kind == "step":
            r, step = data
            for seq in engines[r].finish_step(step, now * 1000.0):
                item = pending[seq.listener]
                if seq.output == 1:
                    ttft_s = now - seq.arrival / 1000.0
                    ttft.append(ttft_s * 1000.0)
                    scheduler.observe_first_token(item.decision, ttft_s)
                if seq.finished:
                    e2e.append(now * 1000.0 - seq.arrival)
                    scheduler.release(item.decision)
                    finished_at[seq.listener] = now
                    done += 1
                    for follower in waiters.pop(seq.listener, []):
                        at = now + pending[follower].request.at
                        heapq.heappush(events, (at, next(order), "arrive", follower))
            start_step(r, now)

    snapshot = pool.table.snapshot()
    queries = sum(e.stats.prefix_queries for e in engines)
    hits = sum(e.stats.prefix_hits for e in engines)
    return ReplayResult(
        policy=label,
        ttft_ms=np.array(ttft),
        e2e_ms=np.array(e2e),
        share=share,
        hit_rate=hits / queries if queries else 0.0,
        preemptions=sum(e.stats.preemptions for e in engines),
        makespan_s=now,
        errors=errors,
        unreleased=scheduler.outstanding,
        leftover_inflight=int(snapshot.inflight_requests.sum() + snapshot.inflight_tokens.sum()),
    )


def _capacity_rate(requests: Sequence[Any], replicas: int, params: Any) -> float:
    """A rough fleet capacity in requests/s (prefill-bound, half the prompts cached)."""
    mean_tokens = float(np.mean([max(r.prompt_tokens, 1) for r in requests]))
    per_request_ms = 0.5 * mean_tokens * params.prefill_ms_per_token + 64 * 0.8
    return replicas * 1000.0 / max(per_request_ms, 1e-3)


def main(argv: Sequence[str] | None = None) -> int:
    from igw.bench import workloads

    parser = argparse.ArgumentParser(
        prog="python -m igw.scheduling.replay",
        description="Replay a workload through igw's scheduler onto simulated replicas "
        "(virtual time, deterministic).",
    )
    parser.add_argument("--workload", default="shared-prefix")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--config", action="append", default=[], help="EndpointPickerConfig")
    parser.add_argument(
        "--peers",
        default="",
        help="emulated peer policies to add, comma-separated: sglang-cache-aware "
        "(igw.scheduling.peers)",
    )
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--load", type=float, default=0.7, help="fraction of rough capacity")
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s (overrides --load)")
    parser.add_argument("--slow-replica", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default="default", help="igw sim hardware profile")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from igw.sim import profiles

    params = profiles.make_params(args.profile)
    shape = workloads.WorkloadParams(requests=args.requests, seed=args.seed, rate=1.0)
    probe = workloads.build(args.workload, shape)
    rate = args.rate or args.load * _capacity_rate(probe, args.replicas, params)
    shape.rate = rate
    requests = workloads.build(args.workload, shape)
    targets = [(name, named_policy(name)) for name in args.policies.split(",") if name]
    targets += [(path, load_config(path)) for path in args.config]
    from igw.scheduling.peers import PEERS

    for name in filter(None, args.peers.split(",")):
        if name not in PEERS:
            parser.error(f"--peers: unknown peer {name!r}; expected one of {', '.join(PEERS)}")
        targets.append((f"emulated:{name}", PEERS[name]()))
    rows = []
    for label, config in targets:
        started = time.perf_counter()
        result = replay(
            config,
            requests,
            label=label,
            replicas=args.replicas,
            params=params,
            slow_replica=args.slow_replica,
            seed=args.seed,
        )
        row = result.row()
        row["wall_s"] = round(time.perf_counter() - started, 2)
        rows.append(row)
    if args.json:
        print(json.dumps({"workload": args.workload, "rate": rate, "rows": rows}, indent=1))
        return 0
    print(
        f"replay: {args.workload}, {len(requests)} requests at {rate:.1f} req/s, "
        f"{args.replicas} replicas (virtual time)"
    )
    head = [
        "policy",
        "ttft_p50_ms",
        "ttft_p90_ms",
        "ttft_p99_ms",
        "e2e_p90_ms",
        "hit_rate",
        "hotspot",
        "preemptions",
        "errors",
    ]
    print("  ".join(f"{h:>14}" for h in head))
    for row in rows:
        print("  ".join(f"{row[h]!s:>14}" for h in head))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
