"""Saturation detectors: one number per pool saying how full it is (1.0 = full).

Both read the pool's own ``EndpointTable`` snapshot. A pool's table holds only that pool's
endpoints, so the ``ready`` mask alone selects the candidates (no per-request endpoint list
to build); a request's subset hint narrows them further when present, as the reference's
``Locate(metadata)`` does.

* ``UtilizationDetector`` (``utilization-detector``, the reference's default): per ready
  endpoint ``max(waiting / queueDepthThreshold, kv / kvCacheUtilThreshold)``, an endpoint
  whose metrics are older than ``metricsStalenessThreshold`` (or never arrived) counts as
  1.0 (fail-closed), and the pool value is the unweighted mean. It only knows what the last
  scrape said, so a burst admitted between two scrapes is invisible to it.
* ``ConcurrencyDetector`` (``concurrency-detector``): igw's own in-flight counters
  (``inflight_requests`` / ``inflight_tokens``, raised by the scheduler's reservation and
  lowered by ``Pipeline.finish``), so it is exact at the instant of the decision, with no
  scrape lag. See its docstring for why it is capacity-weighted.

An empty pool (or no ready endpoint among the candidates) reads as 1.0: nothing can serve.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from igw.datastore import Pool
    from igw.pipeline import Request

UTILIZATION = "utilization-detector"
CONCURRENCY = "concurrency-detector"


def candidate_mask(pool: Pool, snapshot: Any, request: Request | None) -> np.ndarray:
    """Bool mask (length high_water) of the ready endpoints the request may use (its subset
    hint, when it has one). Masks, not index arrays: the hot path is a few whole-array
    numpy reductions (a few microseconds at 100 endpoints)."""
    ready = np.asarray(snapshot.ready)
    if request is not None and request.subset is not None:
        mask = np.zeros(ready.size, dtype=np.bool_)
        subset = pool.candidate_mask(request.subset)
        size = min(subset.size, ready.size)
        mask[:size] = ready[:size] & subset[:size]
        return mask
    return ready


class UtilizationDetector:
    """The reference's default saturation detector over a Pool snapshot, with lag correction.

    Scrapes arrive every ~50 ms; between two of them the reference's detector keeps reading
    the last figures, so once it reads "room" a flow controller releases its whole queue
    before the next scrape shows the servers' queues grown (the thundering herd its README
    warns about). With ``lag_correction`` (on by default under flow control, where the
    herd happens; off by default on the legacy shedding path) every request igw sent to an
    endpoint since that endpoint's last scrape counts as waiting there: the detector notes
    igw's in-flight count when it first sees a new scrape and adds the growth since. When
    nothing was sent since the scrape, the value is exactly the reference's. The parameter
    ``lagCorrection`` (true/false) overrides the default.
    """

    type_name = UTILIZATION

    def __init__(
        self,
        queue_depth_threshold: float = 5.0,
        kv_cache_util_threshold: float = 0.8,
        staleness: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        headroom: float = 0.0,
        lag_correction: bool = False,
    ) -> None:
        if not queue_depth_threshold > 0:
            raise ValueError(
                f"queueDepthThreshold: expected a number > 0, got {queue_depth_threshold!r}"
            )
        if not 0 < kv_cache_util_threshold <= 1:
            raise ValueError(
                "kvCacheUtilThreshold: expected a number in (0, 1], "
                f"got {kv_cache_util_threshold!r}"
            )
        if not staleness > 0:
            raise ValueError(f"metricsStalenessThreshold: expected > 0 seconds, got {staleness!r}")
        self.queue_depth_threshold = float(queue_depth_threshold)
        self.kv_cache_util_threshold = float(kv_cache_util_threshold)
        self.staleness = float(staleness)
        self.clock = clock
        self.headroom = headroom  # the reference uses it only when the detector filters
        self.lag_correction = lag_correction
        # per pool: (updated_at seen, igw in-flight at that moment) per endpoint id
        self._baselines: weakref.WeakKeyDictionary[Pool, tuple[np.ndarray, np.ndarray]] = (
            weakref.WeakKeyDictionary()
        )

    def sent_since_scrape(self, pool: Pool, snapshot: Any) -> np.ndarray:
        """Per endpoint id: requests igw sent since the endpoint's last scrape (>= 0)."""
        updated = np.asarray(snapshot.updated_at)
        inflight = np.asarray(snapshot.inflight_requests)
        size = updated.size
        seen, base = self._baselines.get(pool, (None, None))
        if seen is None or seen.size != size:
            grown_seen = np.full(size, -1.0)
            grown_base = np.zeros(size, dtype=inflight.dtype)
            if seen is not None:
                keep = min(size, seen.size)
                grown_seen[:keep] = seen[:keep]
                grown_base[:keep] = base[:keep]
            seen, base = grown_seen, grown_base
            self._baselines[pool] = (seen, base)
        fresh = seen != updated
        np.copyto(base, inflight, where=fresh)
        np.copyto(seen, updated, where=fresh)
        return np.maximum(inflight - base, 0)

    def saturation(self, pool: Pool, request: Request | None = None, pending: int = 0) -> float:
        """``pending`` (released by a flow controller, not yet reserved) counts as waiting,
        spread over the candidates, when lag correction is on."""
        snap = pool.table.snapshot()
        mask = candidate_mask(pool, snap, request)
        count = int(np.count_nonzero(mask))
        if count == 0:
            return 1.0
        waiting = np.asarray(snap.waiting, dtype=np.float64)
        if self.lag_correction:
            waiting = waiting + self.sent_since_scrape(pool, snap) + pending / count
        per = np.maximum(
            waiting * (1.0 / self.queue_depth_threshold),
            np.asarray(snap.kv_util) * (1.0 / self.kv_cache_util_threshold),
        )
        updated = np.asarray(snap.updated_at)
        stale = (updated <= 0) | (updated < self.clock() - self.staleness)
        per[stale] = 1.0
        return float(per.sum(where=mask) / count)


Mode = Literal["requests", "tokens", "hybrid"]


class ConcurrencyDetector:
    """Saturation from igw's own in-flight accounting, weighted by endpoint capacity.

    ``requests`` mode: ``sum(inflight requests) / sum(maxConcurrency)`` over ready endpoints.
    ``tokens`` mode: ``sum(inflight tokens) / sum(token capacity)``; an endpoint's token
    capacity is ``maxTokenConcurrency`` when configured, else its KV-cache size in tokens
    (``kv_blocks * block_size`` from the scrape) when known, else 1,000,000.
    ``hybrid``: per endpoint ``max(request ratio, token ratio)``, averaged with each endpoint
    weighted by its token capacity.

    Why capacity-weighted and not the plain mean of per-endpoint ratios: the question flow
    control asks is "is there room anywhere in the pool for one more request?", i.e. what
    fraction of the pool's total capacity is in use. A plain mean counts a small replica
    at 100% and a large idle one as 50% busy although most of the pool's capacity is free,
    and it lets one overfull replica (whose excess the scheduler steers new work away from
    anyway) weigh as much as a large one. The weighted form is exactly occupied / capacity,
    so 1.0 means the pool as a whole is full. With equal capacities (the usual case) the
    two coincide. ``pending`` adds requests already let through by the flow controller but
    not yet reserved by the scheduler, so a burst dispatched in one cycle is counted.
    """

    type_name = CONCURRENCY

    def __init__(
        self,
        mode: Mode = "requests",
        max_concurrency: int = 100,
        max_token_concurrency: int | None = None,
        headroom: float = 0.0,
    ) -> None:
        if mode not in ("requests", "tokens", "hybrid"):
            raise ValueError(
                f"concurrencyMode: expected 'requests', 'tokens' or 'hybrid', got {mode!r}"
            )
        if not max_concurrency > 0:
            raise ValueError(f"maxConcurrency: expected an integer > 0, got {max_concurrency!r}")
        if max_token_concurrency is not None and not max_token_concurrency > 0:
            raise ValueError(
                f"maxTokenConcurrency: expected an integer > 0, got {max_token_concurrency!r}"
            )
        if headroom < 0:
            raise ValueError(f"headroom: expected a number >= 0, got {headroom!r}")
        self.mode = mode
        self.max_concurrency = int(max_concurrency)
        self.max_token_concurrency = max_token_concurrency
        self.headroom = headroom  # the reference uses it only when the detector filters
        self._steps: weakref.WeakKeyDictionary[Pool, float] = weakref.WeakKeyDictionary()

    def step(self, pool: Pool) -> float | None:
        """How much one more admitted request can raise the pool's saturation at most, as of
        the last whole-pool reading (requests mode only; None when unknown). Requests that
        finish only lower it, so ``last + n * step`` bounds the reading after n admissions:
        the controller may admit without a new snapshot while that bound stays below 1.0."""
        return self._steps.get(pool) if self.mode == "requests" else None

    def token_capacity(self, snapshot: Any) -> np.ndarray:
        """Per endpoint id: token capacity (configured, else KV-cache tokens, else 1e6)."""
        size = np.asarray(snapshot.ready).size
        if self.max_token_concurrency is not None:
            return np.full(size, float(self.max_token_concurrency))
        kv_tokens = np.asarray(snapshot.kv_blocks, dtype=np.float64) * np.asarray(
            snapshot.block_size, dtype=np.float64
        )
        return np.where(kv_tokens > 0, kv_tokens, 1_000_000.0)

    def saturation(self, pool: Pool, request: Request | None = None, pending: int = 0) -> float:
        snap = pool.table.snapshot()
        mask = candidate_mask(pool, snap, request)
        count = int(np.count_nonzero(mask))
        if count == 0:
            return 1.0
        requests = np.asarray(snap.inflight_requests)
        request_capacity = float(self.max_concurrency * count)
        if request is None or request.subset is None:
            self._steps[pool] = 1.0 / request_capacity
        if self.mode == "requests":
            return (int(requests.sum(where=mask)) + pending) / request_capacity
        tokens = np.asarray(snap.inflight_tokens, dtype=np.float64)
        capacity = self.token_capacity(snap)
        total_capacity = float(capacity.sum(where=mask))
        if self.mode == "tokens":
            return float(tokens.sum(where=mask)) / total_capacity
        per = np.maximum(requests / float(self.max_concurrency), tokens / capacity)
        weighted = float((per * capacity).sum(where=mask)) / total_capacity
        return weighted + pending / request_capacity
