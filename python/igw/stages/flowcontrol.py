"""Flow-control stage, legacy mode: shed sheddable requests (priority < 0) when saturated.

This is the reference's default path (flow-control feature gate off): requests with priority
>= 0 always pass; a priority < 0 request gets 429 ``system saturated, sheddable request
dropped`` when the pool's saturation is >= 1.0. Saturation is the reference's
utilization detector: per ready endpoint ``max(waiting / queueDepthThreshold,
kv / kvCacheUtilThreshold)`` (an endpoint whose metrics are older than the staleness bound
counts as 1.0), averaged over the candidates.

A queueing controller (priority bands, fairness, TTLs) plugs in as ``controller``: any object
with ``async admit(request, pool)`` that returns when the request may be scheduled or raises
``InferenceError`` (429/503 with a drop reason).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from igw.errors import ErrorCode, InferenceError
from igw.pipeline import Request

if TYPE_CHECKING:
    from igw.datastore import Pool


class UtilizationDetector:
    """The reference's default saturation detector over a Pool snapshot."""

    def __init__(
        self,
        queue_depth_threshold: float = 5.0,
        kv_cache_util_threshold: float = 0.8,
        staleness: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue_depth_threshold = queue_depth_threshold
        self.kv_cache_util_threshold = kv_cache_util_threshold
        self.staleness = staleness
        self.clock = clock

    def saturation(self, pool: Pool, request: Request | None = None) -> float:
        ids = np.fromiter((e.id for e in pool.endpoints()), dtype=np.int64)
        if ids.size == 0:
            return 1.0
        snap = pool.table.snapshot()
        ready = np.asarray(snap.ready)[ids]
        ids = ids[ready]
        if ids.size == 0:
            return 1.0
        queue = np.asarray(snap.waiting)[ids] / self.queue_depth_threshold
        kv = np.asarray(snap.kv_util)[ids] / self.kv_cache_util_threshold
        per = np.maximum(queue, kv)
        stale = (self.clock() - np.asarray(snap.updated_at)[ids]) > self.staleness
        per = np.where(stale, 1.0, per)
        return float(np.mean(per))


class FlowControlStage:
    name = "flowcontrol"

    def __init__(
        self,
        pool_for: Callable[[Request], Pool],
        detector: Any | None = None,
        controller: Any | None = None,
    ) -> None:
        self.pool_for = pool_for
        self.detector = detector or UtilizationDetector()
        self.controller = controller

    async def process(self, request: Request) -> None:
        pool = self.pool_for(request)
        if self.controller is not None:
            await self.controller.admit(request, pool)
            return
        if request.priority < 0 and self.detector.saturation(pool, request) >= 1.0:
            raise InferenceError(
                ErrorCode.RESOURCE_EXHAUSTED, "system saturated, sheddable request dropped"
            )
