"""``igw sim``: serve N simulated vLLM replicas from one process until interrupted.

Every engine constant of ``EngineParams`` has a flag of the same name (``--num-gpu-blocks``,
``--prefill-ms-per-token`` ...) that overrides the chosen ``--profile``. Faults take a
replica index (``*`` for all replicas where it makes sense) and can be repeated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import signal
import sys

from igw.sim.fleet import DEFAULT_MODEL, SimFleet
from igw.sim.metrics import ENGINE_TYPES
from igw.sim.model import EngineParams
from igw.sim.profiles import PROFILES
from igw.sim.replica import ERROR_MODES, Faults


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replicas", type=int, default=1, help="replicas to serve (default 1)")
    parser.add_argument(
        "--port",
        type=int,
        default=8000,
        help="port of replica 0; replica i listens on PORT+i; 0 picks free ports (default 8000)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--profile", default="default", choices=sorted(PROFILES), help="hardware profile"
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="run the model this many times faster than real time (tests use 10-100)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of fault injection")
    parser.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help=f"served model name; repeat for aliases (default {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--lora", action="append", default=[], metavar="NAME", help="LoRA adapter name; repeat"
    )
    parser.add_argument(
        "--stream-interval",
        type=int,
        default=1,
        metavar="N",
        help="after the first token, write streamed tokens in groups of N (default 1: each "
        "token as it is generated, like vLLM); larger N saves CPU in big benchmarks",
    )
    parser.add_argument(
        "--engine-type",
        choices=ENGINE_TYPES,
        default="vllm",
        help="whose metric names /metrics exports (default vllm)",
    )
    engine = parser.add_argument_group("engine constants (override the profile)")
    for field in dataclasses.fields(EngineParams):
        engine.add_argument(
            "--" + field.name.replace("_", "-"),
            type=int if field.type == "int" else float,
            default=None,
            metavar="N" if field.type == "int" else "X",
            help=f"{field.metadata['help']} (default profile: {field.default})",
        )
    engine.add_argument(
        "--replica-param",
        action="append",
        default=[],
        metavar="I:NAME=VALUE",
        help="an engine constant for replica I only, e.g. 3:num-gpu-blocks=512 "
        "(a heterogeneous fleet); repeatable",
    )
    faults = parser.add_argument_group("fault injection (replica index I, or * for all)")
    faults.add_argument(
        "--fail-replica",
        action="append",
        default=[],
        metavar="I",
        help="answer every inference request with 500 while /health stays 200",
    )
    faults.add_argument(
        "--slow-replica",
        action="append",
        default=[],
        metavar="I:FACTOR",
        help="make every engine step FACTOR times longer",
    )
    faults.add_argument(
        "--error-rate",
        action="append",
        default=[],
        metavar="I:P",
        help="break a request mid-stream with probability P",
    )
    faults.add_argument(
        "--error-mode",
        choices=ERROR_MODES,
        default="abort",
        help="how a stream breaks: abort = connection closed without [DONE]; "
        "event = an error event then [DONE] (vLLM's way)",
    )
    faults.add_argument(
        "--down-replica",
        action="append",
        default=[],
        metavar="I[:closed]",
        help="503 on every path incl. /health; with :closed the port is not even open",
    )


def _indexes(text: str, n: int, flag: str) -> list[int]:
    if text == "*":
        return list(range(n))
    try:
        i = int(text)
    except ValueError:
        raise ValueError(f"{flag}: expected a replica index or *, got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"{flag}: replica index {i} out of range 0..{n - 1}")
    return [i]


def _pair(spec: str, flag: str, what: str) -> tuple[str, float]:
    index, sep, value = spec.partition(":")
    if not sep:
        raise ValueError(f"{flag}: expected I:{what}, got {spec!r}")
    try:
        return index, float(value)
    except ValueError:
        raise ValueError(f"{flag}: {what} must be a number, got {value!r}") from None


def build_faults(args: argparse.Namespace) -> tuple[dict[int, Faults], list[int]]:
    """Per-replica ``Faults`` from the flags, and the replicas whose port stays closed."""
    n = args.replicas
    faults = {i: Faults(error_mode=args.error_mode) for i in range(n)}
    closed: list[int] = []
    for spec in args.fail_replica:
        for i in _indexes(spec, n, "--fail-replica"):
            faults[i].fail = True
    for spec in args.slow_replica:
        index, factor = _pair(spec, "--slow-replica", "FACTOR")
        for i in _indexes(index, n, "--slow-replica"):
            faults[i].slow_factor = factor
    for spec in args.error_rate:
        index, p = _pair(spec, "--error-rate", "P")
        for i in _indexes(index, n, "--error-rate"):
            faults[i].error_rate = p
    for spec in args.down_replica:
        index, _, mode = spec.partition(":")
        if mode not in ("", "closed"):
            raise ValueError(f"--down-replica: expected I or I:closed, got {spec!r}")
        for i in _indexes(index, n, "--down-replica"):
            if mode == "closed":
                closed.append(i)
            else:
                faults[i].down = True
    return faults, closed


def replica_overrides(args: argparse.Namespace) -> dict[int, dict[str, float | int]]:
    """``--replica-param I:NAME=VALUE`` flags as {replica: {field: value}}."""
    types = {f.name: f.type for f in dataclasses.fields(EngineParams)}
    out: dict[int, dict[str, float | int]] = {}
    for spec in args.replica_param:
        index, sep, assignment = spec.partition(":")
        name, eq, raw = assignment.partition("=")
        if not sep or not eq:
            raise ValueError(f"--replica-param: expected I:NAME=VALUE, got {spec!r}")
        field = name.strip().replace("-", "_")
        if field not in types:
            raise ValueError(f"--replica-param: unknown engine parameter {name!r}")
        kind = "an integer" if types[field] == "int" else "a number"
        try:
            value = int(raw) if types[field] == "int" else float(raw)
        except ValueError:
            raise ValueError(f"--replica-param: {name} expects {kind}, got {raw!r}") from None
        for i in _indexes(index, args.replicas, "--replica-param"):
            out.setdefault(i, {})[field] = value
    return out


def make_fleet(args: argparse.Namespace) -> tuple[SimFleet, list[int]]:
    """The fleet the flags describe (not started) and the replicas to keep closed."""
    if args.replicas < 1:
        raise ValueError(f"--replicas: expected >= 1, got {args.replicas}")
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(EngineParams)}
    faults, closed = build_faults(args)
    fleet = SimFleet(
        args.replicas,
        profile=args.profile,
        host=args.host,
        port=args.port,
        speed=args.speed,
        seed=args.seed,
        models=args.model or [DEFAULT_MODEL],
        loras=args.lora,
        faults=faults,
        engine_type=args.engine_type,
        replica_overrides=replica_overrides(args),
        stream_interval=args.stream_interval,
        **overrides,
    )
    return fleet, closed


async def serve(fleet: SimFleet, closed: list[int], stop: asyncio.Event) -> None:
    async with fleet:
        for i in closed:
            await fleet.replicas[i].close_port()
        p = fleet.params
        print(
            f"igw sim: {len(fleet.replicas)} replica(s) of {', '.join(fleet.models)} "
            f"(block {p.block_size} tokens x {p.num_gpu_blocks}, max_num_seqs {p.max_num_seqs})",
            flush=True,
        )
        for r in fleet.replicas:
            notes = [
                f"{f.name}={getattr(r.params, f.name)}"
                for f in dataclasses.fields(EngineParams)
                if getattr(r.params, f.name) != getattr(p, f.name)
            ]
            if r.index in closed:
                notes.append("port closed")
            state = f" ({', '.join(notes)})" if notes else ""
            print(f"replica {r.index}: {r.url}{state}", flush=True)
        open_urls = [r.url for r in fleet.replicas if r.index not in closed] or fleet.urls
        print(
            f"try: curl -s {open_urls[0]}/v1/completions -H 'content-type: application/json' "
            f"""-d '{{"model": "{fleet.models[0]}", "prompt": "Hello", "max_tokens": 8}}'""",
            flush=True,
        )
        gc.freeze()  # start-up objects never die: keep them out of every later collection
        await stop.wait()


async def _main(args: argparse.Namespace) -> int:
    try:
        fleet, closed = make_fleet(args)
    except ValueError as exc:
        print(f"igw sim: error: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await serve(fleet, closed, stop)
    except OSError as exc:
        print(f"igw sim: error: {exc}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        import uvloop  # faster event loop when installed (a dependency on Linux/macOS)
    except ImportError:
        return asyncio.run(_main(args))
    return uvloop.run(_main(args))
