"""One pool's flow controller: hold requests while it is saturated, release them by priority.

``igw.flowcontrol.service.FlowControl`` (what the flow-control stage talks to) keeps one
``PoolController`` per pool. A request's path through ``PoolController.admit``:

1. shutting down -> 503 ``rejected-shutting-down``;
2. the pool has no endpoints -> a sheddable request gets 503 ``rejected-no-endpoints`` at
   once; others wait up to ``noEndpointRequestTTL`` for endpoints to appear (scale from
   zero), then 503 ``rejected-no-endpoints``;
3. fast path: nothing queued and the pool not saturated -> admitted at once: no item, no
   task switch, at most one saturation reading (none while the last whole-pool reading
   plus one detector ``step`` per admission since proves room, see ``_room_by_bound``);
4. sheddable (priority < 0) under pressure (the pool saturated, or requests already
   waiting) -> 429, as the legacy path sheds them. Sheddable work never waits in igw's
   queue: queued behind a standing backlog it would starve for its whole TTL, only to take
   capacity from more important work when it finally runs (measured: see
   docs/flowcontrol.md). A config that gives negative priorities a band of their own
   (``defaultNegativePriorityBand`` or a ``priorityBands`` entry below 0) asks for them to
   be queued instead, and they then follow steps 5-6 like everyone else;
5. over the band's or the global ``maxRequests`` / ``maxBytes`` -> 429 ``rejected-saturated``;
6. otherwise queued, until dispatched (returns), its TTL expires (429
   ``rejected-ttl-expired``, or 503 ``rejected-no-endpoints`` if the pool is then empty),
   the caller is cancelled (client gone: the item is removed, ``CancelledError``
   propagates), or the controller shuts down (503 ``rejected-shutting-down``).

Dispatch runs in one asyncio task per pool, only while something is queued. A cycle expires
due items, reads the pool's saturation once and, if below 1.0, releases ONE item: the
highest band with work (strict priority: a lower band never goes while a higher one waits),
the band's fairness policy's flow, that flow's ordering policy's item. After a release the
task yields once so the released request reaches the scheduler (which reserves its
in-flight slot) before the next reading. A blocked controller wakes on events - a request
finishing (``on_finish``, when ``attach`` put the controller in the pipeline's response
stages), an arrival, ``notify()`` (e.g. after a metrics scrape) - or on a fallback tick of
a few milliseconds (metrics that changed without telling anyone) or the next TTL expiry.

Requests released but not yet reserved by the scheduler are counted as ``pending`` and
handed to the detector, so a burst released faster than the scheduler runs is still seen
(the concurrency detector adds them to the in-flight count). ``pending`` forgets a request
once it has a decision, has finished, or after one second.

Memory is bounded by the capacity limits (every queued item counts against its band and
the global limit; removed items leave tombstones that are compacted, see ``queues``); empty
dynamic bands and flows are dropped.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from igw.errors import InferenceError
from igw.flowcontrol import queues
from igw.flowcontrol.outcomes import (
    DISPATCHED,
    EVICTED_CANCELLED,
    EVICTED_NO_ENDPOINTS,
    EVICTED_OTHER,
    EVICTED_TTL,
    REJECTED_CAPACITY,
    REJECTED_NO_ENDPOINTS,
    REJECTED_OTHER,
    no_endpoints_error,
    saturated_error,
    shed_error,
    shutdown_error,
    ttl_error,
)
from igw.flowcontrol.params import FlowControlSettings
from igw.flowcontrol.queues import Band, Item

if TYPE_CHECKING:
    from igw.datastore import Pool
    from igw.flowcontrol.metrics import FlowControlMetrics
    from igw.pipeline import Request

log = logging.getLogger("igw.flowcontrol")

PENDING_FORGET_S = 1.0
ATTR = "flowcontrol"  # request.attrs key: the PoolController that admitted the request
GONE = "flowcontrol_gone"  # request.attrs key: released, then cancelled before it ran


class PoolController:
    """Bands, queues and the dispatch task of one pool."""

    def __init__(
        self,
        pool: Pool,
        detector: Any,
        settings: FlowControlSettings | None = None,
        *,
        metrics: FlowControlMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.detector = detector
        self.settings = settings or FlowControlSettings()
        self.metrics = metrics
        self.clock = clock
        self.bands: dict[int, Band] = {}
        self._order: list[int] = []  # band priorities, ascending (highest last)
        self.queued = 0
        self.queued_bytes = 0
        self._seq = itertools.count()
        self._expiry: list[tuple[float, int, Item]] = []  # heap: (expires_at, seq, item)
        # released and not yet reserved, in release order: (request, released at)
        self._pending: collections.deque[tuple[Request, float]] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        self.last_saturation = 0.0
        self._detector_errors: set[str] = set()
        # the last whole-pool reading, for admissions proven safe without a new one
        self._bound_step: float | None = None
        self._bound_base = 0.0
        self._bound_since = 0
        self._bound_at = 0.0
        self.dispatched = 0  # counters for tests and debugging
        self.fast_path = 0
        if metrics is not None:
            metrics.track(self)

    # -- admission --------------------------------------------------------------------------
    async def admit(self, request: Request) -> None:
        """Return when the request may be scheduled, or raise ``InferenceError``."""
        start = self.clock()
        if self.closed:
            raise self._reject(request, start, REJECTED_OTHER, shutdown_error())
        empty = len(self.pool) == 0
        shed = request.priority < 0 and not self.settings.queue_sheddable
        if empty and (shed or self.settings.no_endpoint_ttl <= 0):
            raise self._reject(request, start, REJECTED_NO_ENDPOINTS, no_endpoints_error(False))
        if not empty:
            if self.queued == 0 and request.subset is None and self._room_by_bound():
                self._bound_since += 1
                self.fast_path += 1
                self._admitted(request, start)
                return
            saturation = self._saturation(request)
            if saturation < 1.0 and self.queued == 0:
                self._bound_since += 1
                self.fast_path += 1
                self._admitted(request, start)
                return
            if shed:  # saturated, or others already wait: sheddable work never queues
                raise self._reject(request, start, REJECTED_CAPACITY, shed_error())
        item = self._enqueue(request, start, empty)
        try:
            await item.future
        except asyncio.CancelledError:
            if not item.done:  # client gone while queued
                self._remove(item)
                self._record(item, EVICTED_CANCELLED)
            else:  # released, then cancelled before it ran: nothing was reserved
                request.attrs[GONE] = True
            raise

    def _enqueue(self, request: Request, now: float, empty: bool) -> Item:
        settings = self.settings
        band = self._band(request.priority)
        size = len(request.body)
        global_full = (settings.max_requests and self.queued + 1 > settings.max_requests) or (
            settings.max_bytes and self.queued_bytes + size > settings.max_bytes
        )
        if global_full or not band.fits(size):
            self._drop_if_idle(band)
            raise self._reject(request, now, REJECTED_CAPACITY, saturated_error())
        ttl = settings.no_endpoint_ttl if empty else settings.default_ttl
        seq = next(self._seq)
        item = Item(
            request=request,
            priority=request.priority,
            flow=request.fairness_id or "default-flow",
            size=size,
            enqueued_at=now,
            expires_at=now + ttl,
            seq=seq,
            future=asyncio.get_running_loop().create_future(),
        )
        if band.uses_deadlines:
            received = request.received_at if self.clock is time.monotonic else None
            item.deadline = queues.edf_deadline(item, settings.default_ttl, received)
        band.push(item)
        self.queued += 1
        self.queued_bytes += size
        heapq.heappush(self._expiry, (item.expires_at, seq, item))
        if self.metrics is not None:
            self.metrics.queued(self.pool.name, item, +1)
        self._ensure_task()
        self._wake.set()
        return item

    def _band(self, priority: int) -> Band:
        band = self.bands.get(priority)
        if band is None:
            conf, configured = self.settings.band_for(priority)
            band = Band(
                priority,
                max_requests=conf.max_requests,
                max_bytes=conf.max_bytes,
                fairness=conf.fairness,
                ordering=conf.ordering,
                configured=configured,
            )
            self.bands[priority] = band
            bisect.insort(self._order, priority)
        return band

    def _drop_if_idle(self, band: Band) -> None:
        """An empty band holds only tombstones: drop it (or clear it, if configured)."""
        if band.count:
            return
        if band.configured:
            band.clear()
        else:
            del self.bands[band.priority]
            self._order.remove(band.priority)

    def _remove(self, item: Item) -> None:
        """Take a queued item out before dispatch (its heap entries become tombstones)."""
        item.done = True
        band = self.bands[item.priority]
        band.discard(item)
        self._left_queue(item)
        if band.count == 0:
            self._drop_if_idle(band)
        self._compact_expiry()

    def _compact_expiry(self) -> None:
        """Keep the expiry heap within twice the queue (plus a small floor)."""
        if not self.queued:
            self._expiry.clear()
        elif len(self._expiry) > 64 and len(self._expiry) > 2 * self.queued:
            self._expiry = [e for e in self._expiry if not e[2].done]
            heapq.heapify(self._expiry)

    def _left_queue(self, item: Item) -> None:
        self.queued -= 1
        self.queued_bytes -= item.size
        if self.metrics is not None:
            self.metrics.queued(self.pool.name, item, -1)

    # -- dispatch -------------------------------------------------------------------------
    def _saturation(self, request: Request | None = None) -> float:
        """The detector's reading. A detector that fails is logged (once per kind of
        failure) and read as 0.0: a bug in a detector must not hold every request until its
        TTL; traffic then flows as it would without flow control."""
        pending = self._prune_pending()
        try:
            value = float(self.detector.saturation(self.pool, request, pending))
        except Exception as exc:  # a user or core bug, not the request's fault
            kind = type(exc).__name__
            if kind not in self._detector_errors:
                self._detector_errors.add(kind)
                log.exception("saturation detector failed for pool %s; admitting", self.pool.name)
            value = 0.0
        if value != value:  # NaN: same treatment
            value = 0.0
        self.last_saturation = value
        if request is None or request.subset is None:
            step = getattr(self.detector, "step", None)
            self._bound_step = step(self.pool) if step is not None else None
            self._bound_base, self._bound_since = value, 0
            self._bound_at = self.clock()
        return value

    def _room_by_bound(self) -> bool:
        """True when the last whole-pool reading proves there is room without a new one.

        Only detectors that can bound their growth offer a ``step`` (the concurrency
        detector in requests mode): after n admissions since a reading v, saturation is at
        most ``v + n * step`` (finishing requests only lower it). The bound is trusted for
        one tick, so membership and readiness changes are seen within milliseconds."""
        step = self._bound_step
        if step is None or self.clock() - self._bound_at > self.settings.tick:
            return False
        return self._bound_base + (self._bound_since + 1) * step < 1.0

    def _prune_pending(self) -> int:
        """Drop released requests that have reserved (or ended) from the front of the
        release order. Requests reserve in about the order they were released, so this is
        amortized O(1); one that never reserves is forgotten after a second."""
        pending = self._pending
        if not pending:
            return 0
        horizon = self.clock() - PENDING_FORGET_S
        while pending:
            request, at = pending[0]
            if (
                request.decision is None
                and request.finished_at is None
                and not request.attrs.get(GONE)
                and at > horizon
            ):
                break
            pending.popleft()
        return len(pending)

    def dispatch_once(self) -> bool:
        """One dispatch cycle: release the best item if the pool has room. True if released."""
        if self.queued == 0 or len(self.pool) == 0:
            return False
        started = time.perf_counter()
        released = False
        if self._saturation() < 1.0:
            for priority in reversed(self._order):
                band = self.bands[priority]
                item = band.pop() if band.count else None
                if item is None:
                    continue
                item.done = True
                self._left_queue(item)
                if band.count == 0:
                    self._drop_if_idle(band)
                self._compact_expiry()
                self._bound_since += 1
                self._pending.append((item.request, self.clock()))
                self._admitted(item.request, item.enqueued_at)
                if not item.future.done():
                    item.future.set_result(None)
                released = True
                break
        if self.metrics is not None:
            self.metrics.dispatch_cycle(time.perf_counter() - started)
        return released

    def expire(self, now: float | None = None) -> int:
        """Fail every queued item whose TTL has passed; returns how many."""
        now = self.clock() if now is None else now
        expired = 0
        while self._expiry and self._expiry[0][0] <= now:
            _, _, item = heapq.heappop(self._expiry)
            if item.done:
                continue
            self._remove(item)
            if len(self.pool) == 0:
                outcome, error = EVICTED_NO_ENDPOINTS, no_endpoints_error(True)
            else:
                outcome, error = EVICTED_TTL, ttl_error()
            self._record(item, outcome)
            if not item.future.done():
                item.future.set_exception(error)
            expired += 1
        self._compact_expiry()
        return expired

    def notify(self) -> None:
        """Something changed (a request finished, metrics arrived): try to dispatch now."""
        if self.queued:
            self._wake.set()

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"igw-flowcontrol-{self.pool.name}"
            )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.closed and self.queued:
            try:
                self.expire()
                released = self.dispatch_once()
            except Exception:  # a detector bug must not strand the queue: retry on the tick
                log.exception("flow control dispatch failed for pool %s", self.pool.name)
                released = False
            if released:
                await asyncio.sleep(0)  # let the released request reach the scheduler
                continue
            if not self.queued:
                break
            self._wake.clear()
            delay = self.settings.tick
            if self._expiry:
                delay = max(0.0, min(delay, self._expiry[0][0] - self.clock()))
            handle = loop.call_later(delay, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                handle.cancel()

    # -- outcomes ---------------------------------------------------------------------------
    def _admitted(self, request: Request, since: float) -> None:
        self.dispatched += 1
        request.attrs[ATTR] = self
        self._observe(request, since, DISPATCHED)

    def _record(self, item: Item, outcome: str) -> None:
        self._observe(
            item.request, item.enqueued_at, outcome, flow=item.flow, priority=item.priority
        )

    def _reject(
        self, request: Request, since: float, outcome: str, error: InferenceError
    ) -> InferenceError:
        self._observe(request, since, outcome)
        return error

    def _observe(
        self,
        request: Request,
        since: float,
        outcome: str,
        *,
        flow: str | None = None,
        priority: int | None = None,
    ) -> None:
        """One outcome and its time in flow control; a queued item's own flow and priority
        win over the request's (they were fixed when it was enqueued)."""
        if self.metrics is None:
            return
        self.metrics.outcome(
            self.pool.name,
            fairness_id=request.fairness_id if flow is None else flow,
            priority=request.priority if priority is None else priority,
            model=request.incoming_model,
            target=request.target_model,
            outcome=outcome,
            seconds=max(0.0, self.clock() - since),
        )

    async def close(self) -> None:
        """Shut down: every queued request gets 503 ``rejected-shutting-down``."""
        self.closed = True
        for band in list(self.bands.values()):
            while True:
                item = band.pop()
                if item is None:
                    break
                item.done = True
                self._left_queue(item)
                self._record(item, EVICTED_OTHER)
                if not item.future.done():
                    item.future.set_exception(shutdown_error())
        self.bands.clear()
        self._order.clear()
        self._expiry.clear()
        task, self._task = self._task, None
        if task is not None and not task.done():
            self._wake.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
