"""Runs one workload against each target (routing policy or peer router) in turn.

Each target gets a fresh simulated fleet (empty KV caches, zeroed counters) and a fresh
router in front of it, then the same request schedule. Per-replica served counts and
prefix-cache hits come from the replicas' own vLLM counters (deltas across the replay), so
the numbers are comparable whatever router is in front, igw or a peer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from igw.bench import fleet
from igw.bench.client import Progress, replay
from igw.bench.stats import summarize
from igw.bench.workloads import BenchRequest

DEFAULT_FLEET_CMD = "{python} -m igw sim"
DEFAULT_GATEWAY_CMD = (
    "{python} -m igw serve --host 127.0.0.1 --port {port} --endpoints {workers_csv}"
)
# sglang-router's CLI defaults for cache_aware (RouterArgs), spelled out so the run is explicit.
SGLANG_CMD = (
    "{python} -m sglang_router.launch_router --host 127.0.0.1 --port {port} "
    "--worker-urls {workers} --policy {policy} --cache-threshold 0.3 "
    "--balance-abs-threshold 64 --balance-rel-threshold 1.5 --eviction-interval-secs 120 "
    "--max-tree-size 67108864 --prometheus-host 127.0.0.1 --prometheus-port {port2} "
    "--log-level warn"
)


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """Something to compare: ``kind`` is igw-policy, igw-config, cmd (a router command
    template started against each fresh fleet) or url (an already running router)."""

    label: str
    kind: str
    value: str
    health_path: str = "/health"


@dataclasses.dataclass(slots=True)
class RunSettings:
    replicas: int = 4
    speed: float = 1.0
    profile: str = "default"
    seed: int = 0
    duration_max: float = 300.0
    warmup: float = 0.0  # seconds: requests sent earlier are left out of the latency figures
    sim_args: list[str] = dataclasses.field(default_factory=list)
    fleet_cmd: str = DEFAULT_FLEET_CMD
    gateway_cmd: str = DEFAULT_GATEWAY_CMD
    fleet_urls: list[str] | None = None  # reuse a running fleet (caches are then not fresh)
    ready_timeout: float = 60.0
    settle: float = 0.5  # seconds after the router is ready (first metric scrape)
    progress: bool = True
    log_dir: str | None = None


def router_argv(target: Target, settings: RunSettings, port: int, workers: list[str]) -> list[str]:
    """The command line that starts ``target`` against ``workers`` on ``port``."""
    values = {
        "python": fleet.python(),
        "port": str(port),
        "port2": str(fleet.free_port_block(1)),
        "workers": workers,
        "workers_csv": ",".join(workers),
    }
    if target.kind == "igw-policy":
        return [*fleet.expand(settings.gateway_cmd, values), "--policy", target.value]
    if target.kind == "igw-config":
        return [*fleet.expand(settings.gateway_cmd, values), "--config", target.value]
    if target.kind == "cmd":
        return fleet.expand(target.value, values)
    raise ValueError(f"target {target.label!r} of kind {target.kind!r} has no command")


def fleet_argv(settings: RunSettings, port: int) -> list[str]:
    base = fleet.expand(settings.fleet_cmd, {"python": fleet.python()})
    return [
        *base,
        *("--replicas", str(settings.replicas), "--port", str(port)),
        *("--speed", str(settings.speed), "--seed", str(settings.seed)),
        *("--profile", settings.profile),
        *settings.sim_args,
    ]


def _counter_deltas(before: dict[str, dict], after: dict[str, dict], name: str) -> dict[str, float]:
    return {
        url: after[url].get(name, 0.0) - before.get(url, {}).get(name, 0.0)
        for url in after
        if after[url]
    }


async def run_target(
    target: Target, requests: list[BenchRequest], settings: RunSettings, log_dir: Path
) -> dict[str, Any]:
    """Fresh fleet + router for ``target``, replay, and return its result record."""
    children: list[fleet.Child] = []
    commands: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        try:
            if settings.fleet_urls:
                workers = list(settings.fleet_urls)
            else:
                base = fleet.free_port_block(settings.replicas)
                argv = fleet_argv(settings, base)
                commands["fleet"] = shlex.join(argv)
                safe = target.label.replace(":", "_").replace("/", "_")
                children.append(fleet.Child(f"fleet-{safe}", argv, log_dir))
                workers = [f"http://{fleet.LOOPBACK}:{base + i}" for i in range(settings.replicas)]
                await fleet.wait_ready(
                    session, [w + "/health" for w in workers], children[-1], settings.ready_timeout
                )
            model = await fleet.first_model(session, workers[0])
            if target.kind == "url":
                router = target.value.rstrip("/")
            else:
                port = fleet.free_port_block(1)
                argv = router_argv(target, settings, port, workers)
                commands["router"] = shlex.join(argv)
                safe = target.label.replace(":", "_").replace("/", "_")
                children.append(fleet.Child(f"router-{safe}", argv, log_dir))
                router = f"http://{fleet.LOOPBACK}:{port}"
                await fleet.wait_ready(
                    session, [router + target.health_path], children[-1], settings.ready_timeout
                )
            await asyncio.sleep(settings.settle)
            before = await fleet.scrape(session, workers)
            progress = Progress(target.label, len(requests), settings.progress)
            samples, wall = await replay(router, requests, model, settings.duration_max, progress)
            await asyncio.sleep(0.2)  # let the replicas' counters catch up with the last stream
            after = await fleet.scrape(session, workers)
            died = {c.name: c.proc.poll() for c in children if c.proc.poll() is not None}
            for name, code in died.items():
                print(
                    f"igw bench: {name} exited with code {code} during the run "
                    f"(negative = killed by that signal); see {log_dir}/{name}.log",
                    file=sys.stderr,
                )
        finally:
            await fleet.stop_all(children)
    names = {w: f"r{i}" for i, w in enumerate(workers)}  # replica index: stable across runs
    names.update({w.split("//", 1)[-1]: f"r{i}" for i, w in enumerate(workers)})
    served = {
        names[w]: n for w, n in _counter_deltas(before, after, "vllm:request_success_total").items()
    }
    if not served or sum(served.values()) <= 0:
        served = {}
        for s in samples:
            if s.ok and s.served_by:
                key = names.get(s.served_by, s.served_by)
                served[key] = served.get(key, 0) + 1
    hits = sum(_counter_deltas(before, after, "vllm:prefix_cache_hits_total").values())
    queries = sum(_counter_deltas(before, after, "vllm:prefix_cache_queries_total").values())
    # Warm-up: requests sent in the first seconds fill the empty caches; leaving them out
    # measures the steady state. Counters (hit rate, shares) still cover the whole run.
    measured = [s for s in samples if s.sent_at >= settings.warmup or (not s.ok and not s.sent_at)]
    row = summarize(
        target.label, measured, max(1e-9, wall - settings.warmup), served, hits, queries
    )
    row["warmup_s"] = settings.warmup
    errors: dict[str, int] = {}
    for s in samples:
        if not s.ok:
            key = s.error[:120] or "unknown"
            errors[key] = errors.get(key, 0) + 1
    return {
        "target": dataclasses.asdict(target),
        "summary": row,
        "per_replica_requests": served,
        "cache_hits": hits,
        "cache_queries": queries,
        "error_kinds": errors,
        "commands": commands,
        "children_died": died,
        "samples": {
            "ttft_ms": [None if s.ttft is None else round(s.ttft * 1e3, 2) for s in samples],
            "e2e_ms": [None if s.e2e is None else round(s.e2e * 1e3, 2) for s in samples],
            "sent_at_s": [round(s.sent_at, 4) for s in samples],
            "ok": [s.ok for s in samples],
        },
    }


async def run_all(
    targets: list[Target], requests: list[BenchRequest], settings: RunSettings
) -> list[dict[str, Any]]:
    """Every target in turn (never concurrently: they would share the 2 CPU cores)."""
    if settings.log_dir:
        log_dir = Path(settings.log_dir)
        await asyncio.to_thread(log_dir.mkdir, parents=True, exist_ok=True)
        return [await run_target(t, requests, settings, log_dir) for t in targets]
    tmp = Path(tempfile.mkdtemp(prefix="igw-bench-"))
    results = []
    try:
        for t in targets:
            results.append(await run_target(t, requests, settings, tmp))
    except BaseException:
        print(f"igw bench: child process logs kept in {tmp}", file=sys.stderr)
        raise
    if any(r["summary"]["errors"] for r in results):
        print(f"igw bench: some requests failed; child process logs kept in {tmp}", file=sys.stderr)
    else:
        await asyncio.to_thread(shutil.rmtree, tmp, True)
    return results
