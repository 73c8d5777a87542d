"""``igw serve``: the standalone OpenAI-compatible gateway.

    igw serve --sim 4                                  # 4 simulated replicas, in-process
    igw serve --endpoints http://10.0.0.5:8000,http://10.0.0.6:8000 --policy predicted-ttft
    igw serve --config gateway.yaml                    # several models and pools, canary, mirror

A bad flag or config file fails at start with one line naming the file, the field and what
was expected (exit code 2). The gateway prints where to send requests and a curl example.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from igw import busypoll
from igw.gateway.app import Limits

DEFAULT_PORT = 8080


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT,
        help=f"port to listen on; 0 picks a free one (default {DEFAULT_PORT})",
    )  # fmt: skip
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--sim", type=int, metavar="N",
        help="start N simulated replicas in-process and route to them",
    )  # fmt: skip
    source.add_argument(
        "--endpoints", metavar="URLS",
        help="comma-separated OpenAI-compatible replicas (http://host:port,...): one pool, "
        "model names learned from their /v1/models, metrics scraped from their /metrics",
    )  # fmt: skip
    source.add_argument(
        "--config", type=Path, metavar="FILE",
        help="YAML: several pools and models, rewrites (canary splits), mirroring "
        "(see docs/standalone.md), API keys and limits (access:, docs/access.md), "
        "content safety (guard:)",
    )  # fmt: skip
    routing = parser.add_argument_group("routing")
    routing.add_argument(
        "--policy", default=None,
        help="named policy for pools that name none: predicted-ttft (igw's cost model, the "
        "default) | default (the reference picker's weights) | round-robin | random | "
        "least-loaded",
    )  # fmt: skip
    routing.add_argument(
        "--epp-config", type=Path, metavar="FILE",
        help="EndpointPickerConfig YAML for pools that name none (instead of --policy)",
    )  # fmt: skip
    routing.add_argument(
        "--scrape-interval", type=float, default=0.05, metavar="SECONDS",
        help="how often each replica's /metrics is read (default 0.05)",
    )  # fmt: skip
    routing.add_argument(
        "--scrape-calm-interval", type=float, default=None, metavar="SECONDS",
        help="longest gap between reads of a calm replica (figures unchanged over 3 reads, "
        "nothing waiting; igw's own requests on it are counted by igw and do not count); "
        "a change, a queue or a failure puts it back on --scrape-interval at once. Always "
        "at most half the "
        "strictest metrics staleness threshold (flow control's metricsStalenessThreshold, "
        "default 0.2 s), so calm reading never makes metrics stale. Default 4x "
        "--scrape-interval; equal to --scrape-interval turns it off",
    )  # fmt: skip
    routing.add_argument("--seed", type=int, default=None, help="seed for random choices")
    sim = parser.add_argument_group("simulator (with --sim)")
    sim.add_argument("--sim-profile", default="default", help="default | h100-llama8b")
    sim.add_argument(
        "--sim-speed", type=float, default=1.0, metavar="X",
        help="simulate X times faster than real time (default 1)",
    )  # fmt: skip
    sim.add_argument(
        "--sim-model", action="append", metavar="NAME",
        help="model name the replicas serve; repeat for more (default sim-model)",
    )  # fmt: skip
    sim.add_argument(
        "--sim-lora",
        action="append",
        default=[],
        metavar="NAME",
        help="LoRA adapter the replicas serve; repeat for more",
    )
    limits = parser.add_argument_group("limits")
    defaults = Limits()
    limits.add_argument(
        "--max-body-bytes", type=int, default=defaults.client_max_size, metavar="N",
        help=f"largest request body accepted; 413 beyond (default {defaults.client_max_size})",
    )  # fmt: skip
    limits.add_argument(
        "--body-timeout", type=float, default=defaults.body_timeout, metavar="SECONDS",
        help=f"time to receive a request body; 408 beyond (default {defaults.body_timeout:g})",
    )  # fmt: skip
    limits.add_argument(
        "--idle-timeout", type=float, default=defaults.idle_timeout, metavar="SECONDS",
        help="time for a request head to arrive and for idle keep-alive connections "
        f"(default {defaults.idle_timeout:g})",
    )  # fmt: skip
    limits.add_argument(
        "--upstream-timeout", type=float, default=defaults.upstream_read_timeout,
        metavar="SECONDS",
        help="longest silence from a replica, between stream chunks too "
        f"(default {defaults.upstream_read_timeout:g})",
    )  # fmt: skip
    limits.add_argument(
        "--frontend", default="auto", choices=("auto", "httptools", "aiohttp"),
        help="HTTP server for clients: httptools (about half aiohttp's CPU per request), "
        "aiohttp, or auto = httptools when installed (default)",
    )  # fmt: skip
    busypoll.add_flag(limits, " (default 0 = off; try 1000)")
    limits.add_argument(
        "--upstream-client", default="auto", choices=("auto", "httptools", "aiohttp"),
        help="HTTP client towards the replicas: auto = httptools when installed (faster)",
    )  # fmt: skip
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"),
        help="log verbosity (default info)",
    )  # fmt: skip


def _fail(message: str) -> int:
    print(f"igw serve: error: {message}", file=sys.stderr, flush=True)
    return 2


def config_from_args(args: argparse.Namespace):
    """The ``GatewayConfig`` the flags describe (``ConfigError`` / ``ValueError`` if bad)."""
    from pydantic import ValidationError

    from igw.config import validation_to_config_error
    from igw.gateway.config import load_gateway_config

    if args.config is not None:
        return load_gateway_config(args.config)
    flag = "--sim" if args.sim is not None else "--endpoints"
    try:
        return _flags_config(args)
    except ValidationError as exc:
        raise validation_to_config_error(exc, flag) from None


def _flags_config(args: argparse.Namespace):
    from igw.gateway.config import GatewayConfig, PoolSpec, SimSpec

    if args.sim is not None:
        sim = SimSpec(
            replicas=args.sim,
            profile=args.sim_profile,
            speed=args.sim_speed,
            models=args.sim_model or ["sim-model"],
            loras=args.sim_lora,
            seed=args.seed or 0,
        )
        return GatewayConfig(pools={"default": PoolSpec(sim=sim)})
    urls = [item.strip() for item in args.endpoints.split(",") if item.strip()]
    if not urls:
        raise ValueError("--endpoints: expected http://host:port[,http://host:port...]")
    return GatewayConfig(pools={"default": PoolSpec(endpoints=urls)})


def banner(stack) -> str:
    """Where to send requests, what is behind it, and a request that works."""
    lines = [f"igw serve: OpenAI-compatible gateway listening on {stack.url}"]
    for name, runtime in stack.router.pools.items():
        addresses = ", ".join(e.address for e in runtime.pool.endpoints())
        kind = "simulated replicas" if name in stack.fleets else "replicas"
        policy = stack.policies.get(name)
        routed = f", routing: {policy}" if policy else ""
        lines.append(f"  pool {name}: {len(runtime.pool)} {kind} ({addresses}){routed}")
    models = stack.router.models()
    lines.append("  models: " + (", ".join(models) or "(learned from the replicas' /v1/models)"))
    checks = getattr(stack, "checks", None)
    access = checks.access if checks is not None else None
    key_header = ""
    if access is not None:
        keyed = [name for name in access.tenants if name != "anonymous"]
        anonymous = access.checks[0].anonymous is not None
        lines.append(
            f"  access: {len(keyed)} tenant(s) with API keys"
            + (", requests without a key allowed" if anonymous else ", a key is required")
        )
        if keyed:  # never print a key: the example reads it from the environment
            key_header = '    -H "authorization: Bearer $IGW_API_KEY" \\'
    if checks is not None and checks.guard_runtime is not None:
        lines.append("  guard: content safety checks on")
    example = json.dumps(
        {"model": models[0] if models else "sim-model", "prompt": "Once upon a time",
         "max_tokens": 16}
    )  # fmt: skip
    lines += [
        "Try:",
        f"  curl -s {stack.url}/v1/completions -H 'content-type: application/json' \\",
        *([key_header] if key_header else []),
        f"    -d '{example}'",
        f"Also: {stack.url}/v1/models, {stack.url}/health, {stack.url}/metrics. Ctrl-C stops.",
    ]
    return "\n".join(lines)


async def _main(args: argparse.Namespace, config) -> int:
    from igw.gateway.serve import ServeOptions, start_stack

    options = ServeOptions(
        host=args.host,
        port=args.port,
        policy=args.policy,
        epp_config=args.epp_config,
        config_path=args.config,
        scrape_interval=args.scrape_interval,
        scrape_calm_interval=args.scrape_calm_interval,
        seed=args.seed,
        limits=Limits(
            client_max_size=args.max_body_bytes,
            body_timeout=args.body_timeout,
            idle_timeout=args.idle_timeout,
            upstream_read_timeout=args.upstream_timeout,
            lean_client={"auto": None, "httptools": True, "aiohttp": False}[args.upstream_client],
            frontend=args.frontend,
            busy_poll_us=args.busy_poll_us,
        ),
    )
    stack = await start_stack(config, options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(banner(stack), flush=True)
    try:
        await stop.wait()
    finally:
        await stack.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    from igw.config import ConfigError

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.sim is not None and args.sim < 1:
        return _fail(f"--sim: expected a number of replicas >= 1, got {args.sim}")
    if "httptools" in (args.upstream_client, args.frontend):
        from igw.gateway.upstream import httptools

        if httptools is None:
            return _fail("httptools was asked for but the package is not installed")
    bad_window = busypoll.window_error("--busy-poll-us", args.busy_poll_us)
    if bad_window is not None:
        return _fail(bad_window)
    if not args.scrape_interval > 0:
        return _fail(f"--scrape-interval: expected seconds > 0, got {args.scrape_interval:g}")
    calm = args.scrape_calm_interval
    if calm is not None and not args.scrape_interval <= calm < float("inf"):
        return _fail(
            f"--scrape-calm-interval: expected seconds >= --scrape-interval "
            f"({args.scrape_interval:g}), got {calm:g}"
        )
    if args.policy is not None and args.epp_config is not None:
        return _fail("--policy and --epp-config: give one of them")
    try:
        config = config_from_args(args)
    except (ConfigError, ValueError) as exc:
        return _fail(str(exc).splitlines()[0] if not isinstance(exc, ConfigError) else str(exc))
    try:
        import uvloop
    except ImportError:  # optional: the stdlib loop works, a little slower
        uvloop = None
    try:
        if uvloop is not None:
            return uvloop.run(_main(args, config))
        return asyncio.run(_main(args, config))
    except ConfigError as exc:
        return _fail(str(exc))
    except (OSError, ValueError) as exc:  # a busy port, a constant the simulator refuses
        return _fail(f"cannot start: {exc}")
    except KeyboardInterrupt:
        return 0
