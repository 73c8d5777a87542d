"""Serving: the ext_proc gRPC server, the health server and the metrics HTTP endpoint.

``EppServer`` wires a ``Director`` into a ``grpc.aio`` server (TLS or plaintext; it also
answers ``grpc.health.v1`` for Envoy's cluster health check), a second server for
``grpc.health.v1`` on its own port (plaintext, as Kubernetes gRPC probes expect),
an aiohttp app serving ``/metrics`` from igw's own registry, and, when asked for, the
observer port (``h2_transport.py``: observability-mode streams without grpc-python's
per-message cost). ``stop`` drains: readiness
turns NOT_SERVING first, then the servers stop with a grace period.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

import grpc
from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2_grpc

from igw.busypoll import BusyPollCollector, make_poller, poke_of
from igw.extproc.director import Director
from igw.extproc.flags import GRPC_TRANSPORTS
from igw.extproc.h2_transport import DEFAULT_MAX_MESSAGE, DEFAULT_READ_BATCH, H2GrpcServer
from igw.extproc.health import HealthServicer, Readiness
from igw.extproc.service import ExternalProcessorServicer
from igw.metrics import Metrics

log = logging.getLogger("igw.extproc")


def grpc_options(max_recv: int | None = None, max_send: int | None = None) -> list[tuple]:
    options: list[tuple] = [("grpc.so_reuseport", 0)]
    if max_recv:
        options.append(("grpc.max_receive_message_length", max_recv))
    if max_send:
        options.append(("grpc.max_send_message_length", max_send))
    return options


async def start_metrics_server(metrics: Metrics, host: str, port: int) -> web.AppRunner:
    """``/metrics`` (Prometheus text) on ``host:port``; returns the runner (port 0 = any)."""

    async def handle(_request: web.Request) -> web.Response:
        body = metrics.generate()
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        return int(address[1])
    raise RuntimeError("metrics server is not listening")


class EppServer:
    """The listeners of ``igw epp`` around one Director: ext_proc, health, metrics and, when
    asked for, the observer port.

    ``transport`` serves the ext_proc port with grpc.aio (``"grpcio"``) or with igw's own
    HTTP/2 transport (``"igw"``, ``h2_transport.py``); the observer port always uses igw's.
    TLS: ``credentials`` for grpc.aio, ``ssl_context`` (same certificate) for igw's.
    """

    def __init__(
        self,
        director: Director,
        *,
        host: str = "0.0.0.0",
        grpc_port: int = 9002,
        health_port: int = 9003,
        metrics_port: int | None = 9090,
        credentials: grpc.ServerCredentials | None = None,
        synced: Callable[[], bool] | None = None,
        max_recv: int | None = None,
        max_send: int | None = None,
        servicer: object | None = None,
        transport: str = "grpcio",
        observer_port: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        read_batch: float = DEFAULT_READ_BATCH,
        busy_poll_us: float = 0.0,
    ) -> None:
        if transport not in GRPC_TRANSPORTS:
            raise ValueError(
                f"transport: expected one of {', '.join(GRPC_TRANSPORTS)}, got {transport!r}"
            )
        self.director = director
        self.host = host
        self.credentials = credentials
        self.readiness = Readiness(synced or (lambda: director.pool.synced))
        health = HealthServicer(self.readiness)
        max_message = max_recv or DEFAULT_MAX_MESSAGE
        # one poller for both of igw's listeners: they share the loop (igw.busypoll)
        self.poller = make_poller(busy_poll_us)
        poke = poke_of(self.poller)
        if self.poller is not None and director.metrics is not None:
            director.metrics.registry.register(BusyPollCollector(self.poller))
        if poke is not None and transport != "igw" and observer_port is None:
            log.warning(
                "busy polling is on but has nothing to keep it going: only igw's own "
                "transport (--grpc-transport=igw, --observer-port) reports its reads to it"
            )

        def own_transport(port: int, batch: float) -> H2GrpcServer:
            return H2GrpcServer(director, health, host=host, port=port, ssl_context=ssl_context,
                                read_batch=batch, max_message=max_message,
                                on_read=poke)  # fmt: skip

        self.server: grpc.aio.Server | None = None
        self.main: H2GrpcServer | None = None
        if transport == "igw":
            self.main = own_transport(grpc_port, read_batch)
            self.grpc_port = grpc_port  # the bound port once started
        else:
            self.server = grpc.aio.server(options=grpc_options(max_recv, max_send))
            pb_grpc.add_ExternalProcessorServicer_to_server(
                servicer or ExternalProcessorServicer(director), self.server
            )
            # Health on the ext_proc port too: Envoy's grpc_health_check of the ext_proc
            # cluster then uses the same (TLS) connection settings as the ext_proc calls.
            health_pb2_grpc.add_HealthServicer_to_server(health, self.server)
            target = f"{host}:{grpc_port}"
            if credentials is not None:
                self.grpc_port = self.server.add_secure_port(target, credentials)
            else:
                self.grpc_port = self.server.add_insecure_port(target)
        self.health_server = grpc.aio.server(options=grpc_options())
        health_pb2_grpc.add_HealthServicer_to_server(health, self.health_server)
        self.health_port = self.health_server.add_insecure_port(f"{host}:{health_port}")
        self.observer = (
            own_transport(observer_port, read_batch) if observer_port is not None else None
        )
        self._metrics_port = metrics_port
        self.metrics_port: int | None = None
        self._metrics_runner: web.AppRunner | None = None

    @property
    def observer_port(self) -> int | None:
        return self.observer.port if self.observer is not None else None

    async def start(self) -> None:
        if self.server is not None:
            await self.server.start()
        if self.main is not None:
            await self.main.start()
            assert self.main.port is not None
            self.grpc_port = self.main.port
        await self.health_server.start()
        if self.observer is not None:
            await self.observer.start()
        if self._metrics_port is not None and self.director.metrics is not None:
            self._metrics_runner = await start_metrics_server(
                self.director.metrics, self.host, self._metrics_port
            )
            self.metrics_port = bound_port(self._metrics_runner)

    async def stop(self, grace: float = 5.0) -> None:
        """Drain: report NOT_SERVING, let open streams finish for ``grace`` s, then stop."""
        self.readiness.draining = True
        stopping = [s.stop(grace) for s in (self.server, self.main, self.observer) if s is not None]
        try:
            await asyncio.gather(*stopping)
        finally:
            await self.health_server.stop(0)
            if self._metrics_runner is not None:
                await self._metrics_runner.cleanup()
