"""``igw epp``: the Envoy ext_proc endpoint picker, with the reference picker's flags.

The flags, spellings and defaults are the reference's (REFERENCE 4), so a Deployment written
for it runs igw unchanged. Flags igw accepts but does not act on are listed under "accepted
for compatibility, ignored" in ``--help``.

Where the pool's members come from, first match wins: ``--endpoints ip:port,...`` or a watched
``--endpoints-file`` (outside Kubernetes); else ``--pool-name`` watches that InferencePool, its
pods and its InferenceObjectives / InferenceModelRewrites (``igw.k8s``); else
``--endpoint-selector`` + ``--endpoint-target-ports`` watches pods only. The API server is
found in-cluster or through ``--kubeconfig`` / ``$KUBECONFIG`` / ``~/.kube/config``. A watch
that fails (API server unreachable, RBAC forbidden) is logged and retried with back-off while
readiness stays NOT_SERVING until the first full pod list. A watched ``--objectives-file``
replaces the cluster's objectives when given.

Start-up errors (bad flag value, bad config, bad objectives file, missing endpoints) print one
line naming the flag or file, the field and what was expected, and exit with code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import ssl
import sys
from collections.abc import Sequence
from typing import Any

from igw import busypoll
from igw.extproc.flags import GRPC_TRANSPORTS, add_bool, names, parse_duration, parse_size

log = logging.getLogger("igw.epp")

DEFAULT_MAX_BODY = "64Mi"

# Deprecated reference flags that the reference itself now rejects when set.
_REJECTED = {
    "total-queued-requests-metric": "vllm:num_requests_waiting",
    "total-running-requests-metric": "vllm:num_requests_running",
    "kv-cache-usage-percentage-metric": "vllm:kv_cache_usage_perc",
    "lora-info-metric": "vllm:lora_requests_info",
    "cache-info-metric": "vllm:cache_config_info",
}

# Reference flags accepted for compatibility and ignored by igw (value kind, default).
_IGNORED_BOOLS = {
    "allow-experimental-plugins": False,
    "tracing": True,
    "health-checking": False,
    "enable-pprof": True,
    "enable-cert-reload": False,
    "metrics-endpoint-auth": True,
    "enable-grpc-stream-metrics": False,
    "zap-devel": False,
}
_IGNORED_VALUES = {
    "refresh-prometheus-metrics-interval": "5s",
    "tls-min-version": "",
    "tls-cipher-suites": "",
    "metrics-cert-dir": "",
    "metrics-client-ca-file": "",
    "zap-log-level": "",
    "zap-stacktrace-level": "",
    "zap-time-encoding": "",
}


class UsageError(Exception):
    """A start-up problem reported as one line and exit code 2."""


def _duration(text: str) -> float:
    return parse_duration(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    ref = parser.add_argument_group("reference flags (same spellings and defaults)")
    ref.add_argument(*names("grpc-port"), type=int, default=9002, help="ext_proc gRPC port")
    ref.add_argument(*names("grpc-health-port"), type=int, default=9003, help="gRPC health port")
    ref.add_argument(*names("metrics-port"), type=int, default=9090, help="Prometheus /metrics")
    ref.add_argument(*names("pool-name"), default="", help="InferencePool name")
    ref.add_argument(*names("pool-namespace"), default="", help="pool namespace (default)")
    ref.add_argument(
        *names("pool-group"),
        default="inference.networking.k8s.io",
        choices=("inference.networking.k8s.io", "inference.networking.x-k8s.io"),
        help="InferencePool API group (v1; the x-k8s.io group reads the historic v1alpha2)",
    )
    ref.add_argument(
        *names("kubeconfig"),
        default="",
        help="kubeconfig file (default: in-cluster, else $KUBECONFIG, else ~/.kube/config)",
    )
    ref.add_argument(
        *names("endpoint-selector"), default="", help="standalone label selector (Kubernetes)"
    )
    ref.add_argument(
        *names("endpoint-target-ports"),
        default="",
        help="comma list of target ports; the first is the default port of --endpoints entries",
    )
    add_bool(ref, "disable-endpoint-subset-filter", False, "ignore the subset hint metadata")
    add_bool(
        ref,
        "ha-enable-leader-election",
        False,
        "replicas of one pool elect a leader over a Lease; only the leader is ready",
    )
    add_bool(ref, "emit-endpoint-scores", False, "add x-gateway-destination-endpoint-scores")
    ref.add_argument(
        *names("refresh-metrics-interval"),
        type=_duration,
        default=parse_duration("50ms"),
        metavar="DURATION",
        help="model-server scrape interval, Go syntax (default 50ms, minimum 50ms)",
    )
    ref.add_argument(
        *names("metrics-staleness-threshold"),
        type=_duration,
        default=parse_duration("2s"),
        metavar="DURATION",
        help="metrics older than this are stale (default 2s)",
    )
    config = ref.add_mutually_exclusive_group()
    config.add_argument(*names("config-file"), default="", help="EndpointPickerConfig file")
    config.add_argument(*names("config-text"), default="", help="EndpointPickerConfig text")
    ref.add_argument(
        *names("drain-timeout"),
        type=_duration,
        default=parse_duration("30s"),
        metavar="DURATION",
        help="graceful shutdown window (default 30s)",
    )
    ref.add_argument(*names("grpc-max-recv-msg-size"), type=parse_size, default=0, metavar="SIZE")
    ref.add_argument(*names("grpc-max-send-msg-size"), type=parse_size, default=0, metavar="SIZE")
    add_bool(ref, "secure-serving", True, "serve ext_proc over TLS (self-signed if no cert)")
    ref.add_argument(*names("cert-path"), default="", help="directory with tls.crt and tls.key")
    ref.add_argument("--v", "-v", type=int, default=0, metavar="LEVEL", help="log verbosity")
    ref.add_argument(
        *names("zap-encoder"), choices=("json", "console"), default="console", help="log format"
    )

    own = parser.add_argument_group("igw flags (outside Kubernetes)")
    own.add_argument("--endpoints", default="", help="static endpoints: ip:port,ip:port")
    own.add_argument("--endpoints-file", default="", help="endpoint list file, watched")
    own.add_argument(
        "--objectives-file",
        default="",
        help="InferenceObjective / InferenceModelRewrite YAML manifests, watched",
    )
    own.add_argument("--bind-address", default="0.0.0.0", help="address of all listeners")
    own.add_argument(
        "--max-request-body",
        type=parse_size,
        default=parse_size(DEFAULT_MAX_BODY),
        metavar="SIZE",
        help=f"larger request bodies get 413 (default {DEFAULT_MAX_BODY}; the reference has "
        "no limit)",
    )
    own.add_argument(
        "--fallback-endpoints",
        type=int,
        default=0,
        help="ranked fallbacks after the primary in the destination list (default 0: the "
        "ORIGINAL_DST header mode needs a single ip:port)",
    )
    own.add_argument(
        "--refresh-metrics-calm-interval",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="longest gap between scrapes of a calm model server (figures unchanged over 3 "
        "scrapes, nothing waiting; igw's own requests on it are counted by igw and do not "
        "count); a change, a queue or a "
        "failure puts it back on --refresh-metrics-interval at once. Always at most "
        "half the strictest staleness threshold (--metrics-staleness-threshold, flow "
        "control's metricsStalenessThreshold), so calm scraping never makes metrics stale. "
        "Default: 4x --refresh-metrics-interval; equal to it turns calm scraping off",
    )
    add_bool(own, "usage-metrics", True, "parse token usage out of responses")
    own.add_argument(
        "--observe-until",
        choices=("end", "first-token"),
        default="end",
        help="observer streams (an ext_proc filter in observability_mode, see "
        "deploy/envoy/envoy-observe.yaml): read each response to its end (token and size "
        "metrics, truncated-stream detection), or only to its first chunk and close the "
        "stream (time to first token, prefill calibration and the prefill gate at a few ms of "
        "CPU per request; no token or size metrics). Default: end",
    )
    own.add_argument(
        "--grpc-transport",
        choices=GRPC_TRANSPORTS,
        default="grpcio",
        help="what serves the ext_proc port: grpcio (grpc.aio, the default) or igw's own "
        "HTTP/2 transport (several times less CPU per ext_proc message; same behaviour, "
        "health checks answered, TLS from the same certificate). Default: grpcio",
    )
    own.add_argument(
        "--observer-port",
        type=int,
        default=None,
        metavar="PORT",
        help="also serve ext_proc on PORT with igw's own gRPC transport, meant for the "
        "observability_mode filter of deploy/envoy/envoy-observe.yaml (an observed chunk "
        "costs about a sixth of what it costs on grpc.aio; reads are batched, see "
        "--observer-read-batch; same TLS setting and certificate). Default: off",
    )
    busypoll.add_flag(
        own,
        ". Applies to igw's own transport (--grpc-transport=igw, --observer-port). "
        "Default: 0 (off)",
    )
    own.add_argument(
        "--observer-read-batch",
        type=parse_duration,
        default=parse_duration("1ms"),
        metavar="DURATION",
        help="on a busy observer connection, wait this long between socket reads so one read "
        "takes many chunks (time stamps are late by at most this much; 0 = read at once). "
        "Default: 1ms",
    )

    ignored = parser.add_argument_group("accepted for compatibility, ignored")
    for flag, default in _IGNORED_BOOLS.items():
        add_bool(ignored, flag, default, "ignored")
    for flag, default in _IGNORED_VALUES.items():
        ignored.add_argument(*names(flag), default=default, help="ignored")
    rejected = parser.add_argument_group("rejected (deprecated in the reference too)")
    for flag, metric in _REJECTED.items():
        rejected.add_argument(
            *names(flag), default=None, help=f"use engineConfigs instead (was {metric})"
        )


def run(args: argparse.Namespace) -> int:
    _configure_logging(args.v, args.zap_encoder)
    try:
        return asyncio.run(_main(args))
    except UsageError as error:
        print(f"igw epp: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


def _configure_logging(verbosity: int, encoder: str) -> None:
    level = logging.DEBUG if verbosity >= 2 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    if encoder == "json":

        class _Json(logging.Formatter):
            def format(self, record: logging.LogRecord) -> str:
                entry = {
                    "ts": record.created,
                    "level": record.levelname.lower(),
                    "logger": record.name,
                    "msg": record.getMessage(),
                }
                if record.exc_info:
                    entry["error"] = self.formatException(record.exc_info)
                return json.dumps(entry)

        handler.setFormatter(_Json())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _validate(args: argparse.Namespace) -> None:
    for flag in _REJECTED:
        if getattr(args, flag.replace("-", "_")) is not None:
            raise UsageError(
                f"--{flag} is no longer supported (as in the reference); configure metric names "
                "with the core-metrics-extractor's engineConfigs"
            )
    if args.refresh_metrics_interval < 0.05:
        raise UsageError("--refresh-metrics-interval: expected at least 50ms")
    if args.metrics_staleness_threshold <= 0:
        raise UsageError("--metrics-staleness-threshold: expected a positive duration")
    calm = args.refresh_metrics_calm_interval
    if calm is not None and not args.refresh_metrics_interval <= calm < float("inf"):
        raise UsageError(
            "--refresh-metrics-calm-interval: expected a duration >= --refresh-metrics-interval"
            f" ({args.refresh_metrics_interval:g}s), got {calm:g}s"
        )
    if args.fallback_endpoints < 0:
        raise UsageError("--fallback-endpoints: expected 0 or more")
    if args.max_request_body <= 0:
        raise UsageError("--max-request-body: expected a positive size")
    if args.endpoints and args.endpoints_file:
        raise UsageError("--endpoints and --endpoints-file are mutually exclusive")
    if args.ha_enable_leader_election and (args.endpoints or args.endpoints_file):
        raise UsageError(
            "--ha-enable-leader-election: needs Kubernetes (--pool-name or --endpoint-selector), "
            "not --endpoints / --endpoints-file"
        )
    if not (args.endpoints or args.endpoints_file):
        if args.pool_name and args.endpoint_selector:
            raise UsageError(
                "--pool-name and --endpoint-selector are mutually exclusive; give exactly one"
            )
        if not (args.pool_name or args.endpoint_selector):
            raise UsageError(
                "no endpoints: give --pool-name (an InferencePool), or --endpoint-selector with "
                "--endpoint-target-ports (Kubernetes pods), or outside Kubernetes --endpoints "
                "ip:port,... or --endpoints-file FILE"
            )
        if args.endpoint_selector and not args.endpoint_target_ports.strip():
            raise UsageError("--endpoint-selector: --endpoint-target-ports is required (1 to 8)")
    for port in (args.grpc_port, args.grpc_health_port, args.metrics_port):
        if not 0 <= port <= 65535:
            raise UsageError(f"port {port}: expected 0..65535")


def _target_port(args: argparse.Namespace) -> int | None:
    text = args.endpoint_target_ports.strip()
    if not text:
        return None
    ports = [p.strip() for p in text.split(",") if p.strip()]
    if not all(p.isdigit() and 0 < int(p) < 65536 for p in ports) or not 1 <= len(ports) <= 8:
        raise UsageError("--endpoint-target-ports: expected 1 to 8 ports (1..65535), comma list")
    return int(ports[0])


class _LiveObjectives:
    """Lookups that always read the objectives file's current (reloaded) state."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def priority(self, name: str) -> int | None:
        return self.source.objectives.priority(name)

    def resolve(self, model: str, rng: Any):
        return self.source.rewrites.resolve(model, rng)


def _ensure_core() -> None:
    """Until the C++ core is complete, build pools on its pure-Python twin (same API)."""
    import igw.datastore
    from igw.scheduling import _backend

    if not hasattr(igw.datastore._core, "EndpointTable"):
        log.warning("igw._core is incomplete in this build; using igw.core_reference")
        igw.datastore._core = _backend.core


async def _main(args: argparse.Namespace) -> int:
    _validate(args)
    default_port = _target_port(args)
    _ensure_core()
    from igw.config import ConfigError, load_config

    try:
        config = load_config(
            path=args.config_file or None,
            text=args.config_text or None,
        )
    except ConfigError as error:
        raise UsageError(f"config: {error}") from None

    from igw.datalayer import DataLayer, DiscoveryError, FileDiscovery, StaticDiscovery
    from igw.datalayer.freshness import strictest_staleness
    from igw.datastore import Pool
    from igw.extproc.director import Director
    from igw.extproc.server import EppServer
    from igw.extproc.tls import certificate_pair, grpc_credentials, ssl_server_context
    from igw.flowcontrol import install as install_flow_control
    from igw.metrics import Metrics
    from igw.parsing import ParserRegistry
    from igw.scheduling import SchedulingEngine
    from igw.stages import UtilizationDetector, build_pipeline

    pool_name = args.pool_name or "default"
    pool = Pool(pool_name, args.pool_namespace or "default")
    metrics = Metrics()
    metrics.add_pool(pool)

    objectives_source = None
    watch_task: asyncio.Task | None = None
    elector: Any = None
    if args.objectives_file:
        from igw.objectives import ObjectivesFile

        try:
            objectives_source = _LiveObjectives(
                ObjectivesFile(args.objectives_file, pool_name, pool_namespace=pool.namespace)
            )
        except ConfigError as error:
            raise UsageError(f"objectives: {error}") from None

    try:
        parsers = ParserRegistry.from_types(config.parser_names() or _default_parsers())
    except ValueError as error:
        raise UsageError(f"config: requestHandler.parsers: {error}") from None
    try:
        engine = SchedulingEngine(
            config, recorder=metrics.engine_recorder, with_scores=args.emit_endpoint_scores
        )
    except (ConfigError, ValueError) as error:
        raise UsageError(f"config: {error}") from None

    try:
        if args.endpoints:
            endpoints = args.endpoints
            if default_port is not None:
                endpoints = ",".join(
                    e if ":" in e.strip() else f"{e.strip()}:{default_port}"
                    for e in endpoints.split(",")
                    if e.strip()
                )
            discovery: Any = StaticDiscovery(pool, endpoints)
        elif args.endpoints_file:
            discovery = FileDiscovery(pool, args.endpoints_file)
        else:
            discovery = await _kubernetes_discovery(args, pool)
            from igw.k8s.metrics import WatchCollector

            metrics.registry.register(WatchCollector(discovery))
            if args.ha_enable_leader_election:
                elector = _leader_elector(discovery)
            if objectives_source is None and discovery.view is not None:
                objectives_source = _LiveObjectives(discovery)
        await discovery.start()
    except (DiscoveryError, ValueError, OSError) as error:
        raise UsageError(f"endpoints: {error}") from None

    datalayer = DataLayer(
        pool,
        interval=args.refresh_metrics_interval,
        staleness=args.metrics_staleness_threshold,
        block_tokens=_prefix_block_tokens(engine),
        calm_interval=args.refresh_metrics_calm_interval,
        consumer_staleness=args.metrics_staleness_threshold,
    )
    pipeline = build_pipeline(
        engine,
        pool,
        metrics=metrics,
        parsers=parsers,
        objectives=objectives_source,
        rewrites=objectives_source,
        k=1 + args.fallback_endpoints,
        use_subset_metadata=not args.disable_endpoint_subset_filter,
        detector=UtilizationDetector(staleness=args.metrics_staleness_threshold),
        reporter=datalayer,
    )
    try:
        flow = install_flow_control(
            pipeline, config, metrics=metrics, staleness=args.metrics_staleness_threshold
        )
    except ConfigError as error:
        raise UsageError(f"config: {error}") from None
    strictest = strictest_staleness(pipeline, flow)  # calm scraping stays within every reader's
    if strictest is not None:
        datalayer.require_fresh(strictest)
    if not args.usage_metrics:
        pipeline.response_stages = [s for s in pipeline.response_stages if s.name != "usage"]
    director = Director(
        pipeline,
        pool,
        metrics=metrics,
        objectives=objectives_source,
        emit_endpoint_scores=args.emit_endpoint_scores,
        use_subset_metadata=not args.disable_endpoint_subset_filter,
        max_body_bytes=args.max_request_body,
        observe_until=args.observe_until,
    )
    if args.observer_port is not None and not 0 <= args.observer_port <= 65535:
        raise UsageError(f"--observer-port: {args.observer_port} is not a port (0-65535)")
    if args.observer_read_batch < 0:
        raise UsageError("--observer-read-batch: expected a duration >= 0")
    bad_window = busypoll.window_error("--busy-poll-us", args.busy_poll_us)
    if bad_window is not None:
        raise UsageError(bad_window)
    credentials = None
    ssl_context = None
    if args.secure_serving:
        try:
            cert_pem, key_pem = certificate_pair(args.cert_path or None)
            credentials = grpc_credentials(cert_pem, key_pem)
            if args.observer_port is not None or args.grpc_transport == "igw":
                ssl_context = ssl_server_context(cert_pem, key_pem)
        except (ValueError, OSError, ssl.SSLError) as error:
            raise UsageError(f"TLS: {error}") from None
    server = EppServer(
        director,
        host=args.bind_address,
        grpc_port=args.grpc_port,
        health_port=args.grpc_health_port,
        metrics_port=args.metrics_port,
        credentials=credentials,
        max_recv=args.grpc_max_recv_msg_size or None,
        max_send=args.grpc_max_send_msg_size or None,
        synced=(lambda: pool.synced and elector.is_leader) if elector is not None else None,
        transport=args.grpc_transport,
        observer_port=args.observer_port,
        ssl_context=ssl_context,
        read_batch=args.observer_read_batch,
        busy_poll_us=args.busy_poll_us,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except (RuntimeError, OSError) as error:  # grpc: "Failed to bind"; asyncio: OSError
        await discovery.stop()
        raise UsageError(f"cannot listen: {error}") from None
    await datalayer.start()
    if elector is not None:
        elector.start()
    if args.objectives_file and objectives_source is not None:
        watch_task = asyncio.create_task(objectives_source.source.watch(1.0))
    scheme = "TLS" if credentials is not None else "plaintext"
    if args.grpc_transport == "igw":
        scheme += ", igw transport"
    observers = ""
    if server.observer_port is not None:
        observers = f"observer streams on :{server.observer_port}, "
    source = ""
    if getattr(discovery, "client", None) is not None:
        source = f" (watching Kubernetes at {discovery.client.config.server})"
    print(
        f"igw epp: ext_proc on {args.bind_address}:{server.grpc_port} ({scheme}), health on "
        f":{server.health_port}, metrics on :{server.metrics_port}/metrics, {observers}pool "
        f"{pool_name} "
        f"with {len(pool)} endpoints{source}",
        flush=True,
    )
    try:
        await stop.wait()
        log.info("draining for up to %.1fs", args.drain_timeout)
    finally:
        if watch_task is not None:
            watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch_task
        if elector is not None:
            await elector.stop()  # release first: a follower takes over while this one drains
        if flow is not None:
            await flow.close()  # queued requests get 503 rejected-shutting-down
        await server.stop(args.drain_timeout)
        await datalayer.stop()
        await discovery.stop()
    return 0


def _prefix_block_tokens(engine: Any) -> int:
    """The prefix index's block size in tokens (the smallest any profile hashes with), which
    turns a replica's ``num_gpu_blocks * block_size`` into the index's LRU capacity."""
    sizes = [p.prefix.block_tokens for p in engine.built.profiles.values() if p.needs_prefix]
    return min(sizes, default=64)


def _leader_elector(discovery: Any) -> Any:
    """A Lease elector for the pool, sharing the discovery's API client."""
    import os
    import socket
    import uuid

    from igw.k8s.leader import LeaderElector, lease_name

    identity = f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    return LeaderElector(
        discovery.client, discovery.namespace, lease_name(discovery.pool.name), identity
    )


async def _kubernetes_discovery(args: argparse.Namespace, pool: Any) -> Any:
    """The InferencePool (or standalone selector) watch; config problems are usage errors."""
    from igw.k8s import (
        KubeClient,
        KubeConfigError,
        KubernetesDiscovery,
        PoolSpec,
        PoolSpecError,
        load_config,
        parse_ports,
        parse_selector,
    )

    flag = "--pool-name" if args.pool_name else "--endpoint-selector"
    try:
        cluster = await asyncio.to_thread(load_config, args.kubeconfig or None)
    except KubeConfigError as error:
        raise UsageError(
            f"{flag}: {error}. Outside Kubernetes give the pool's members with "
            "--endpoints ip:port,... or --endpoints-file FILE"
        ) from None
    standalone = None
    if not args.pool_name:
        try:
            standalone = PoolSpec(
                parse_selector(args.endpoint_selector), parse_ports(args.endpoint_target_ports)
            )
        except PoolSpecError as error:
            raise UsageError(str(error)) from None
    log.info(
        "kubernetes: API server %s (%s), namespace %s, %s",
        cluster.server, cluster.source, pool.namespace,
        f"InferencePool {args.pool_name}" if args.pool_name else f"pods {args.endpoint_selector}",
    )  # fmt: skip
    return KubernetesDiscovery(
        pool,
        KubeClient(cluster),
        namespace=pool.namespace,
        pool_name=args.pool_name,
        pool_group=args.pool_group,
        standalone=standalone,
        watch_objectives=not args.objectives_file,
    )


def _default_parsers() -> Sequence[str]:
    from igw.parsing import DEFAULT_PARSERS

    return DEFAULT_PARSERS
