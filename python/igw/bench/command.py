"""``igw bench``: ``run`` compares routing policies on a simulated fleet; ``core`` runs the
C++ core's micro-benchmarks (implemented in ``igw.bench.core``).

``igw bench run --workload shared-prefix --replicas 4 --load 0.7 --sglang-router`` starts, for
each policy in turn, a fresh ``igw sim`` fleet and a router in front of it, replays the same
request schedule, and prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import importlib.util
import sys
import time
from typing import Any

from igw.bench import capacity, report, runner, workloads
from igw.bench.stats import format_table

DEFAULT_POLICIES = "round-robin,random,least-loaded,default,predicted-ttft"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="{run,show,core}")
    sub.required = True
    add_run_arguments(sub.add_parser("run", help="compare routing policies on a simulated fleet"))
    show = sub.add_parser("show", help="print saved bench JSON results as Markdown tables")
    show.add_argument("files", nargs="+", metavar="FILE.json")
    show.add_argument("--chart", metavar="OUT.png", help="also chart the (single) result")
    core = sub.add_parser("core", help="micro-benchmarks of the C++ routing core", add_help=False)
    try:
        core_module = importlib.import_module("igw.bench.core")
    except ImportError as exc:
        core.add_argument("rest", nargs=argparse.REMAINDER)
        core.set_defaults(core_unavailable=str(exc))
    else:
        core_module.add_arguments(core)
        core.set_defaults(core_unavailable=None)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.set_defaults(run_parser=p)
    p.add_argument("--workload", required=True, choices=sorted(workloads.WORKLOADS))
    p.add_argument("--replicas", type=int, default=4, help="simulated replicas (default 4)")
    p.add_argument(
        "--policies",
        default=DEFAULT_POLICIES,
        help=f"comma-separated igw policies ('' for none; default {DEFAULT_POLICIES})",
    )
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="also run igw serve --config FILE (repeatable)",
    )
    p.add_argument(
        "--router-url",
        action="append",
        default=[],
        metavar="URL",
        help="also drive this running router (needs --fleet-urls: the fleet it uses)",
    )
    p.add_argument(
        "--router-cmd",
        action="append",
        default=[],
        metavar="TEMPLATE",
        help="also start this router against each fresh fleet; placeholders "
        "{python} {port} {workers} {workers_csv}",
    )
    p.add_argument(
        "--sglang-router",
        action="store_true",
        help="also run sglang-router (pip install sglang-router) against the fleet",
    )
    p.add_argument("--sglang-policies", default="cache_aware,round_robin")
    p.add_argument(
        "--fleet-urls",
        default=None,
        help="comma-separated replica URLs of a running fleet (no fresh fleets)",
    )
    p.add_argument("--requests", type=int, default=200, help="requests to send (default 200)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=float, help="mean arrival rate, requests/s")
    rate.add_argument(
        "--load",
        type=float,
        default=None,
        help="rate as a fraction of the estimated fleet capacity (default 0.7)",
    )
    p.add_argument(
        "--decode-batch",
        type=float,
        default=256.0,
        help="decode batch of a saturated replica, for the --load capacity estimate "
        "(default 256, vLLM's max_num_seqs: the fixed step cost is then spread thin)",
    )
    p.add_argument(
        "--duration-max",
        type=float,
        default=300.0,
        help="wall-time cap per policy, seconds (default 300)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        help="leave requests sent in the first S seconds out of the latency figures (default 0)",
    )
    p.add_argument("--speed", type=float, default=1.0, help="simulator speed factor")
    p.add_argument("--profile", default="default", help="simulator hardware profile")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--slow-replica",
        action="store_true",
        help="run the last replica at half speed (fleet variant)",
    )
    p.add_argument(
        "--slow-replica-args",
        default="--slow-replica {last}:2",
        help="sim arguments that make one replica half speed ({last}: its index)",
    )
    p.add_argument(
        "--sim-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument passed to igw sim (repeatable; use --sim-arg=--x)",
    )
    p.add_argument("--json", dest="json_out", metavar="OUT", help="write results as JSON")
    p.add_argument("--chart", metavar="OUT.png", help="write a latency chart (needs matplotlib)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--log-dir", help="keep child process logs here")
    w = p.add_argument_group("workload shape")
    w.add_argument("--groups", type=int, default=16)
    w.add_argument("--system-tokens", type=int, default=2000)
    w.add_argument("--question-tokens", type=int, default=64)
    w.add_argument("--output-tokens", type=int, default=64)
    w.add_argument("--hot-share", type=float, default=0.45)
    w.add_argument("--burst-size", type=int, default=32)
    w.add_argument("--turns", type=int, default=5)
    w.add_argument(
        "--think-time", type=float, default=None, help="seconds between turns (default 1.0 / speed)"
    )
    w.add_argument("--agentic-steps", type=int, default=6)
    w.add_argument("--trace", help="JSONL trace for --workload trace")
    adv = p.add_argument_group("advanced (tests, other simulators)")
    adv.add_argument("--fleet-cmd", default=runner.DEFAULT_FLEET_CMD)
    adv.add_argument("--gateway-cmd", default=runner.DEFAULT_GATEWAY_CMD)
    adv.add_argument("--ready-timeout", type=float, default=60.0)


def command_line(args: argparse.Namespace) -> list[str]:
    """The equivalent ``igw bench run`` command: every option that differs from its default,
    so a saved result says exactly how to reproduce it."""
    out = ["igw", "bench", "run"]
    for action in args.run_parser._actions:
        if not action.option_strings or action.dest in ("help", "run_parser"):
            continue
        value = getattr(args, action.dest, None)
        if value == action.default:
            continue
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            out.append(flag)
        elif isinstance(value, list):
            for item in value:
                out += [flag, str(item)]
        else:
            out += [flag, str(value)]
    return out


def _fail(message: str) -> int:
    print(f"igw bench: error: {message}", file=sys.stderr)
    return 2


def _estimated_rate(args: argparse.Namespace, reqs: list[workloads.BenchRequest]) -> float:
    """Rate for ``--load``: uncached tokens assume ideal reuse of each workload's shared part."""
    shared = {
        "shared-prefix": args.system_tokens,
        "hot-prefix": args.system_tokens,
        "bursty": args.system_tokens,
    }.get(args.workload)
    mean_prompt = workloads.mean_prompt_tokens(reqs)
    if shared is not None:
        uncached = max(1.0, mean_prompt - shared)
    elif args.workload in ("multi-turn", "agentic"):
        # each turn re-sends the history; only the new user text (and last reply) is uncached
        uncached = float(args.question_tokens + args.output_tokens)
    else:
        uncached = mean_prompt
    return capacity.fleet_capacity_rps(
        args.profile,
        args.replicas,
        args.speed,
        uncached,
        args.output_tokens,
        mean_prompt,
        args.decode_batch,
    )


def _check_fits(args: argparse.Namespace, reqs: list[workloads.BenchRequest]) -> None:
    """Refuse a run whose prompts the simulated replicas would reject as too long."""
    if args.fleet_urls or any(a.startswith("--max-model-len") for a in args.sim_arg):
        return
    limit = capacity.max_model_len(args.profile)
    longest = max(r.prompt_tokens + r.max_tokens for r in reqs)
    if limit is not None and longest > limit:
        raise ValueError(
            f"the longest request needs ~{longest} tokens but profile {args.profile!r} has "
            f"max_model_len {limit}: use --profile h100-llama8b or --sim-arg=--max-model-len=N"
        )


def _targets(args: argparse.Namespace) -> list[runner.Target]:
    targets = [
        runner.Target(label=p, kind="igw-policy", value=p)
        for p in (x.strip() for x in args.policies.split(","))
        if p
    ]
    for path in args.config:
        targets.append(runner.Target(label=f"config:{path}", kind="igw-config", value=path))
    for url in args.router_url:
        if not url.startswith(("http://127.", "http://localhost", "http://[::1]")):
            raise ValueError(f"--router-url {url!r}: only loopback routers may be benchmarked")
        targets.append(runner.Target(label=f"url:{url.split('//', 1)[1]}", kind="url", value=url))
    for i, cmd in enumerate(args.router_cmd):
        targets.append(runner.Target(label=f"cmd{i}:{cmd.split()[0]}", kind="cmd", value=cmd))
    if args.sglang_router:
        if importlib.util.find_spec("sglang_router") is None:
            raise ValueError(
                "--sglang-router needs the sglang-router package: pip install sglang-router"
            )
        for pol in (x.strip() for x in args.sglang_policies.split(",")):
            if pol:
                cmd = runner.SGLANG_CMD.replace("{policy}", pol)
                targets.append(runner.Target(label=f"sglang:{pol}", kind="cmd", value=cmd))
    if not targets:
        raise ValueError(
            "nothing to compare: give --policies, --config, --router-url, --router-cmd "
            "or --sglang-router"
        )
    return targets


def _validate(args: argparse.Namespace) -> None:
    for name in (
        "replicas",
        "requests",
        "groups",
        "system_tokens",
        "question_tokens",
        "output_tokens",
        "burst_size",
        "turns",
        "agentic_steps",
    ):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0 seconds, got {args.warmup}")
    for name in ("speed", "duration_max"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.rate is not None and args.rate <= 0:
        raise ValueError(f"--rate must be > 0 requests/s, got {args.rate}")
    if args.load is not None and args.load <= 0:
        raise ValueError(f"--load must be > 0 (a fraction of capacity), got {args.load}")
    if args.router_url and not args.fleet_urls:
        raise ValueError("--router-url needs --fleet-urls: the replicas that router sends to")
    if args.fleet_urls:
        for url in args.fleet_urls.split(","):
            if not url.startswith(("http://127.", "http://localhost", "http://[::1]")):
                raise ValueError(f"--fleet-urls {url!r}: only loopback replicas are allowed")


def run(args: argparse.Namespace) -> int:
    if args.bench_command == "core":
        if args.core_unavailable:
            return _fail(f"core benchmarks are not available: {args.core_unavailable}")
        return int(importlib.import_module("igw.bench.core").run(args) or 0)
    if args.bench_command == "show":
        try:
            sections = [report.markdown_section(report.read_json(f)) for f in args.files]
        except ValueError as exc:
            return _fail(str(exc))
        print("\n\n".join(sections))
        if args.chart:
            if len(args.files) != 1:
                return _fail("--chart needs exactly one FILE.json")
            doc = report.read_json(args.files[0])
            try:
                report.write_chart(args.chart, doc["meta"].get("title", ""), doc["results"])
            except RuntimeError as exc:
                return _fail(str(exc))
        return 0
    return run_bench(args)


def run_bench(args: argparse.Namespace) -> int:
    try:
        _validate(args)
        targets = _targets(args)
        think = args.think_time if args.think_time is not None else 1.0 / args.speed
        params = workloads.WorkloadParams(
            requests=args.requests,
            rate=1.0,
            seed=args.seed,
            groups=args.groups,
            system_tokens=args.system_tokens,
            question_tokens=args.question_tokens,
            output_tokens=args.output_tokens,
            hot_share=args.hot_share,
            burst_size=args.burst_size,
            turns=args.turns,
            think_time=think,
            agentic_steps=args.agentic_steps,
            trace_path=args.trace,
        )
        probe = workloads.build(args.workload, params)  # shape only, to size --load
        if args.rate is not None:
            rate, how = args.rate, "--rate"
        else:
            load = 0.7 if args.load is None else args.load
            capacity_rps = _estimated_rate(args, probe)
            rate, how = (
                load * capacity_rps,
                f"--load {load} × est. capacity {capacity_rps:.2f} req/s",
            )
        params.rate = rate
        reqs = workloads.build(args.workload, params)
        _check_fits(args, reqs)
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    sim_args = list(args.sim_arg)
    if args.slow_replica:
        sim_args += args.slow_replica_args.replace("{last}", str(args.replicas - 1)).split()
    settings = runner.RunSettings(
        replicas=args.replicas,
        speed=args.speed,
        profile=args.profile,
        seed=args.seed,
        duration_max=args.duration_max,
        warmup=args.warmup,
        sim_args=sim_args,
        fleet_cmd=args.fleet_cmd,
        gateway_cmd=args.gateway_cmd,
        fleet_urls=args.fleet_urls.split(",") if args.fleet_urls else None,
        ready_timeout=args.ready_timeout,
        progress=not args.no_progress,
        log_dir=args.log_dir,
    )
    title = (
        f"igw bench: {args.workload}, {len(reqs)} requests at {rate:.2f} req/s ({how}), "
        f"{args.replicas} replicas{' (one at half speed)' if args.slow_replica else ''}, "
        f"profile {args.profile}, speed {args.speed}, seed {args.seed}"
        + (f", first {args.warmup:g} s not measured" if args.warmup else "")
    )
    print(title, file=sys.stderr)
    started = time.time()
    try:
        results = asyncio.run(runner.run_all(targets, reqs, settings))
    except runner.fleet.ProcessFailed as exc:
        return _fail(str(exc))
    rows = [r["summary"] for r in results]
    print(title)
    print(format_table(rows, markdown=args.markdown))
    for res in results:
        for kind, count in sorted(res["error_kinds"].items(), key=lambda kv: -kv[1]):
            print(f"  {res['summary']['policy']}: {count} x {kind}", file=sys.stderr)
    meta: dict[str, Any] = {
        "title": title,
        "argv": command_line(args),
        "workload": args.workload,
        "requests": len(reqs),
        "rate_rps": rate,
        "rate_from": how,
        "replicas": args.replicas,
        "slow_replica": args.slow_replica,
        "profile": args.profile,
        "speed": args.speed,
        "seed": args.seed,
        "warmup_s": args.warmup,
        "params": dataclasses.asdict(params),
        "started_unix": started,
        "elapsed_s": time.time() - started,
    }
    if args.json_out:
        report.write_json(args.json_out, meta, results)
        print(f"wrote {args.json_out}", file=sys.stderr)
    if args.chart:
        try:
            report.write_chart(args.chart, title, results)
        except RuntimeError as exc:
            return _fail(str(exc))
        print(f"wrote {args.chart}", file=sys.stderr)
    return 0
