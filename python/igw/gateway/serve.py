"""Start everything ``igw serve`` runs, from one ``GatewayConfig``, and stop it again.

Per pool: its replicas (simulated in-process with ``igw.sim.fleet.SimFleet`` when the pool
says ``sim``), a ``Pool``, a ``DataLayer`` scraping each replica's ``/metrics`` (readiness and
outlier detection too), a ``SchedulingEngine`` from the pool's named policy or
EndpointPickerConfig file, and the pool's model names (configured, or learned from the
replicas' ``/v1/models`` and refreshed in the background). Then one gateway over all pools.

The config's ``access:`` section (API keys, rate limits, quotas: ``igw.access``) and
``guard:`` section (content safety: ``igw.guard``, imported only when configured) become the
pipeline's admit checks, guard checks and response stages; both are built before anything
starts, so a bad section (or a missing environment variable holding keys) fails at start.

The three command-line forms (``--sim N``, ``--endpoints``, ``--config``) all become a
``GatewayConfig`` first, so they share this one start-up path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from pathlib import Path
from typing import Any

from igw.busypoll import BusyPollCollector
from igw.config import ConfigError, load_config
from igw.datalayer import DataLayer, DataLayerError
from igw.datastore import Pool
from igw.gateway.app import Gateway, Limits
from igw.gateway.config import GatewayConfig, PoolSpec, resolve_path
from igw.gateway.mirror import Mirror
from igw.gateway.routing import EngineSet, ModelRouter, PoolRuntime
from igw.gateway.runtime import build_gateway
from igw.metrics import Metrics
from igw.objectives import (
    InferenceModelRewrite,
    ObjectivesFile,
    RewriteStore,
)
from igw.scheduling import SchedulingEngine, named_policy

log = logging.getLogger("igw.gateway")

MODEL_REFRESH_SECONDS = 15.0
# The standalone gateway is igw's own product, not a drop-in for anything, so it routes with
# igw's best policy unless told otherwise; ``igw epp`` keeps the reference picker's default
# profile. Measured over HTTP (docs/benchmarks.md): predicted-ttft's TTFT p90 is 0.3-0.6x
# sglang-router cache_aware's on shared-prefix, bursty, half-speed-replica and multi-turn
# workloads, where the reference weights pin a hot prefix to one replica like the peers do.
DEFAULT_POLICY = "predicted-ttft"


@dataclasses.dataclass
class ServeOptions:
    """What the command line adds to a config: defaults for pools and the gateway's limits."""

    host: str = "127.0.0.1"
    port: int = 8080
    policy: str | None = None  # default policy for pools that name none
    epp_config: Path | None = None  # default EndpointPickerConfig for pools that name none
    config_path: Path | None = None  # for resolving relative paths in the config
    scrape_interval: float = 0.05
    # calm replicas are scraped at most this far apart (None: the data layer's default);
    # never more than half the strictest staleness threshold a reader uses (start_stack)
    scrape_calm_interval: float | None = None
    limits: Limits = dataclasses.field(default_factory=Limits)
    seed: int | None = None
    outlier: Any | None = None  # igw.datalayer.OutlierPolicy (None = the data layer's default)


@dataclasses.dataclass
class Stack:
    """Everything started; ``stop`` undoes it in reverse order."""

    gateway: Gateway
    router: ModelRouter
    fleets: dict[str, Any] = dataclasses.field(default_factory=dict)
    datalayers: list[DataLayer] = dataclasses.field(default_factory=list)
    tasks: list[asyncio.Task] = dataclasses.field(default_factory=list)
    mirror: Mirror | None = None
    host: str = "127.0.0.1"
    flow: Any | None = None  # igw.flowcontrol.FlowControl when a pool's config enables it
    policies: dict[str, str] = dataclasses.field(default_factory=dict)  # pool -> policy/config
    checks: Checks | None = None  # access / guard, when configured

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.gateway.port}"

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.flow is not None:
            await self.flow.close()  # queued requests get 503 rejected-shutting-down
        await self.gateway.stop()
        if self.mirror is not None:
            await self.mirror.close()
        for layer in self.datalayers:
            await layer.stop()
        for fleet in self.fleets.values():
            await fleet.stop()


class _PoolDetectors:
    """The legacy shedding path's saturation detector, chosen per pool from its config."""

    def __init__(self, detectors: dict[str, Any]) -> None:
        self.detectors = detectors

    def saturation(self, pool: Pool, request: Any) -> float:
        return self.detectors[pool.name].saturation(pool, request)


def flow_control_for(
    engines: dict[str, tuple[Any, str]], metrics: Metrics
) -> tuple[Any | None, Any | None]:
    """(FlowControl, None) when any pool's EndpointPickerConfig enables flow control, else
    (None, the per-pool legacy detector). A bad ``flowControl`` / ``saturationDetector``
    section is a ``ConfigError`` naming the pool, its config file and the field."""
    from igw.flowcontrol import FlowControl, detector_from_config

    configs = {name: config for name, (config, _) in engines.items()}
    flow = FlowControl.from_configs(configs, metrics=metrics)
    if flow is not None:
        return flow, None
    # from_configs has built (so checked) every pool's detector already.
    return None, _PoolDetectors({name: detector_from_config(c) for name, c in configs.items()})


class _LiveObjectives:
    """The objectives of a watched file, read at call time so reloads take effect."""

    def __init__(self, source: ObjectivesFile) -> None:
        self.source = source

    def priority(self, name: str) -> int | None:
        return self.source.objectives.priority(name)


class _Rewrites:
    """Inline rewrites of the gateway config first, then the objectives file's."""

    def __init__(self, inline: RewriteStore | None, source: ObjectivesFile | None) -> None:
        self.inline = inline
        self.source = source

    def resolve(self, model: str, rng: Any) -> tuple[str, Any] | None:
        if self.inline is not None:
            found = self.inline.resolve(model, rng)
            if found is not None:
                return found
        if self.source is not None:
            return self.source.rewrites.resolve(model, rng)
        return None


def inline_rewrites(config: GatewayConfig, source: str) -> RewriteStore | None:
    """The config's ``rewrites`` as InferenceModelRewrite resources (one rule each)."""
    if not config.rewrites:
        return None
    resources = []
    for i, rewrite in enumerate(config.rewrites):
        name = rewrite.name or f"rewrite-{i}"
        try:
            resources.append(
                InferenceModelRewrite.model_validate(
                    {
                        "apiVersion": "llm-d.ai/v1alpha2",
                        "kind": "InferenceModelRewrite",
                        "metadata": {"name": name},
                        "spec": {
                            "poolRef": {"name": "igw-serve"},
                            "rules": [
                                {
                                    "matches": [
                                        {"model": {"type": "Exact", "value": rewrite.model}}
                                    ],
                                    "targets": [
                                        {"modelRewrite": t.model, "weight": t.weight}
                                        for t in rewrite.targets
                                    ],
                                }
                            ],
                        },
                    }
                )
            )
        except ValueError as exc:
            raise ConfigError(source, f"rewrites[{i}]", str(exc).splitlines()[0]) from None
    return RewriteStore(resources)


@dataclasses.dataclass
class Checks:
    """The checks and response stages ``access:`` and ``guard:`` add to the pipeline."""

    admit: list[Any] = dataclasses.field(default_factory=list)
    guard: list[Any] = dataclasses.field(default_factory=list)
    response: list[Any] = dataclasses.field(default_factory=list)
    access: Any | None = None  # igw.access.Access when configured
    guard_runtime: Any | None = None  # what igw.guard.build_guard returned


def build_checks(config: GatewayConfig, source: str) -> Checks:
    """Access and guard checks from the config (``ConfigError`` for a bad section)."""
    checks = Checks()
    if config.guard is not None:
        try:
            import igw.guard as guard_package
        except ImportError as exc:
            raise ConfigError(
                source, "guard", f"content safety is not available in this build ({exc})"
            ) from None
        guard = guard_package.build_guard(dict(config.guard), source=source)
        checks.guard_runtime = guard
        checks.guard = list(guard.checks)
        checks.response += list(guard.response_checks)
    if config.access is not None:
        from igw.access import build_access

        access = build_access(config.access, source=source)
        checks.access = access
        checks.admit = list(access.checks)
        checks.response += list(access.response_checks)  # debit after guard.out has run
    return checks


def engine_config(spec: PoolSpec, name: str, options: ServeOptions):
    """The EndpointPickerConfig of a pool: its own, else the command line's, else
    ``DEFAULT_POLICY``."""
    if spec.epp_config is not None:
        base = options.config_path or Path("igw.yaml")
        return load_config(resolve_path(base, spec.epp_config)), str(spec.epp_config)
    if spec.policy is not None:
        return _policy(spec.policy, f"pools.{name}.policy", options), spec.policy
    if options.epp_config is not None:
        return load_config(options.epp_config), str(options.epp_config)
    policy = options.policy or DEFAULT_POLICY
    return _policy(policy, "--policy", options), policy


def _policy(name: str, field: str, options: ServeOptions):
    try:
        return named_policy(name)
    except ValueError as exc:
        raise ConfigError(str(options.config_path or ""), field, str(exc)) from None


async def learn_models(runtime: PoolRuntime) -> None:
    """Refresh a pool's model names from its replicas (keeps old names if none answer)."""
    layer = runtime.datalayer
    if layer is None:
        return
    results = await asyncio.gather(
        *(layer.fetch_models(e) for e in runtime.pool.endpoints()), return_exceptions=True
    )
    names: set[str] = set()
    adapters: set[str] = set()
    for endpoint, result in zip(runtime.pool.endpoints(), results, strict=False):
        if isinstance(result, DataLayerError):
            log.warning(
                "pool %s: cannot list models of %s: %s", runtime.name, endpoint.address, result
            )
        elif isinstance(result, BaseException):
            log.warning(
                "pool %s: listing models of %s failed: %r", runtime.name, endpoint.address, result
            )
        else:
            names.update(model.id for model in result)
            adapters.update(model.id for model in result if model.is_adapter)
    if names:
        runtime.models = names
    # vLLM lists LoRA adapters with ``parent`` = the base model: LoRA-aware scoring needs
    # to know them. Never forgotten (an unloaded adapter's name stays an adapter's name).
    runtime.adapters |= adapters


def _bound_calm_scraping(stack: Stack, calm_interval: float | None) -> None:
    """Calm scraping within every reader's staleness threshold (see ``igw.datalayer``): the
    flow-control detectors of the pipeline and of ``stack.flow`` are only known once the
    gateway is built, a few milliseconds after the data layers started (an endpoint needs
    three scrapes to turn calm, so none is calm yet)."""
    from igw.datalayer.freshness import strictest_staleness

    strictest = strictest_staleness(stack.gateway.pipeline, stack.flow)
    for layer in stack.datalayers:
        if calm_interval is not None:
            layer.calm_interval = calm_interval
        if strictest is not None:
            layer.require_fresh(strictest)


async def _refresh_models(runtime: PoolRuntime, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await learn_models(runtime)


async def start_stack(config: GatewayConfig, options: ServeOptions) -> Stack:
    """Start replicas, data layers, engines and the gateway; raises ``ConfigError`` early."""
    source = str(options.config_path or "")
    engines = {name: engine_config(spec, name, options) for name, spec in config.pools.items()}
    objectives_file = None
    if config.objectives_file is not None:
        base = options.config_path or Path("igw.yaml")
        objectives_file = ObjectivesFile(resolve_path(base, config.objectives_file), None)
    rewrites = inline_rewrites(config, source)
    checks = build_checks(config, source)
    metrics = Metrics()
    flow, detector = flow_control_for(engines, metrics)  # config errors before starting

    fleets: dict[str, Any] = {}
    runtimes: list[PoolRuntime] = []
    layers: list[DataLayer] = []
    stack: Stack | None = None
    try:
        for name, spec in config.pools.items():
            urls = list(spec.endpoints)
            runtime = PoolRuntime(Pool(name, seed=options.seed or 0))
            if spec.sim is not None:
                from igw.sim.fleet import SimFleet

                fleet = SimFleet(
                    spec.sim.replicas,
                    profile=spec.sim.profile,
                    speed=spec.sim.speed,
                    seed=spec.sim.seed,
                    models=spec.sim.models,
                    loras=spec.sim.loras,
                )
                await fleet.start()
                fleets[name] = fleet
                urls += fleet.urls
                runtime.models = set(spec.sim.models) | set(spec.sim.loras)
                runtime.adapters = set(spec.sim.loras)
            for url in urls:
                runtime.pool.upsert(url, engine=spec.engine)
            runtime.pool.synced = True
            layer = DataLayer(
                runtime.pool, interval=options.scrape_interval, outlier=options.outlier
            )
            await layer.start()
            layers.append(layer)
            runtime.datalayer = layer
            runtime.learn_models = spec.sim is None  # config routes still win over learned names
            runtimes.append(runtime)
        for name, model in config.models.items():
            if model.lora:
                next(r for r in runtimes if r.name == model.pool).adapters.add(name)

        router = ModelRouter(runtimes, config.routes())
        by_pool = {
            name: SchedulingEngine(cfg, recorder=metrics.engine_recorder, source=src)
            for name, (cfg, src) in engines.items()
        }
        # one pool (the usual case): its engine serves the stages directly; EngineSet's
        # per-call lookup of the pool's engine is only needed with several
        engine = next(iter(by_pool.values())) if len(by_pool) == 1 else EngineSet(by_pool)
        mirror = Mirror(config.mirror) if config.mirror else None
        gateway = build_gateway(
            router,
            engine,
            metrics=metrics,
            objectives=_LiveObjectives(objectives_file) if objectives_file else None,
            rewrites=_Rewrites(rewrites, objectives_file)
            if (rewrites or objectives_file)
            else None,
            priorities=config.priorities(),
            limits=options.limits,
            mirror=mirror,
            detector=detector,
            rng=random.Random(options.seed) if options.seed is not None else None,
            admit_checks=checks.admit,
            guard_checks=checks.guard,
            response_checks=checks.response,
            authorize=checks.access.authorize if checks.access is not None else None,
        )
        if gateway.poller is not None:
            metrics.registry.register(BusyPollCollector(gateway.poller))
        stack = Stack(gateway, router, fleets, layers, mirror=mirror, host=options.host,
                      policies={name: source for name, (_, source) in engines.items()},
                      checks=checks)  # fmt: skip
        if flow is not None:
            stack.flow = flow.attach(gateway.pipeline)
        _bound_calm_scraping(stack, options.scrape_calm_interval)
        for runtime in runtimes:
            if runtime.learn_models:
                await learn_models(runtime)
                stack.tasks.append(
                    asyncio.get_running_loop().create_task(
                        _refresh_models(runtime, MODEL_REFRESH_SECONDS)
                    )
                )
        if objectives_file is not None:
            stack.tasks.append(asyncio.get_running_loop().create_task(objectives_file.watch()))
        await gateway.start(options.host, options.port)
        return stack
    except BaseException:
        if stack is not None:
            await stack.stop()
        else:
            for layer in layers:
                await layer.stop()
            for fleet in fleets.values():
                await fleet.stop()
        raise
