"""``grpc.health.v1.Health`` with the reference picker's service names and readiness rule.

Names: ``liveness`` is SERVING while the process answers (GIE proposal 004); ``readiness``,
``""`` and ``envoy.service.ext_proc.v3.ExternalProcessor`` are SERVING iff the pool is synced
(discovery delivered its first view) and the server is not draining, else NOT_SERVING. Any
other name gets the readiness answer too: the reference (without leader election) does not
inspect the name at all. ``Watch`` streams the status whenever it changes (polled every
``watch_interval`` seconds, cheap: a flag read).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from igw.extproc.service import SERVICE_NAME

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_NAMES = ("liveness", "readiness", "", SERVICE_NAME)


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, ready: Callable[[], bool], *, watch_interval: float = 1.0) -> None:
        self.ready = ready
        self.watch_interval = watch_interval

    def status(self, service: str) -> int:
        if service == "liveness":
            return SERVING
        return SERVING if self.ready() else NOT_SERVING

    async def Check(self, request, context: grpc.aio.ServicerContext):
        return health_pb2.HealthCheckResponse(status=self.status(request.service))

    async def Watch(self, request, context: grpc.aio.ServicerContext):
        last = None
        while True:
            status = self.status(request.service)
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
            await asyncio.sleep(self.watch_interval)


class Readiness:
    """Readiness = pool synced and not draining; ``draining`` is set at shutdown."""

    def __init__(self, synced: Callable[[], bool]) -> None:
        self.synced = synced
        self.draining = False

    def __call__(self) -> bool:
        return bool(self.synced()) and not self.draining
