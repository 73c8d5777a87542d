"""Schedule stage: ask the scheduling engine for ranked endpoints and keep the decision.

An empty pool or an empty / unmatched subset is 503 ``rejected-no-endpoints`` (the engine
raises that itself for subsets; the checks here are the cheap early exits). An engine failure
that is not an ``InferenceError`` is the reference's "untyped scheduler error": 429
``failed to find target endpoint: ...``. After success the request is counted
(``inference_objective_request_total``) and marked running.

Then, when the engine has a prefill gate (``igw.scheduling.gate``), a long streamed prefill
whose endpoint already has one in flight waits here, reserved, until that one's first token
(or end), or at most the profile's ``prefillGateMaxWaitSeconds``; a client that leaves while
waiting gives its place up.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from igw.errors import ErrorCode, InferenceError, no_endpoints
from igw.pipeline import Decision, Request
from igw.stages.protocols import Engine

if TYPE_CHECKING:
    from igw.datastore import Pool
    from igw.metrics import Metrics

log = logging.getLogger("igw.schedule")

# request.attrs key: the future a request held by the prefill gate waits for (process_now
# sets it, process awaits it)
_GATE_WAIT = "igw.gate_wait"


class ScheduleStage:
    name = "schedule"

    def __init__(
        self,
        engine: Engine,
        pool_for: Callable[[Request], Pool],
        *,
        k: int | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if inspect.iscoroutinefunction(getattr(engine, "schedule", None)):
            # the stage calls schedule synchronously, in the read callback when it can
            # (Pipeline.advance): a coroutine would be taken for the decision itself
            raise TypeError(
                f"ScheduleStage: {type(engine).__name__}.schedule must return a Decision, "
                "not a coroutine (do any waiting in a stage before the schedule stage)"
            )
        self.engine = engine
        self.pool_for = pool_for
        self.k = k
        self.metrics = metrics
        # the gate holds only streamed requests (see the module doc)
        self._gated = getattr(engine, "hold_for_prefill", None) is not None

    def process_now(self, request: Request) -> bool:
        """Schedule at once. True when done; False only when the prefill gate holds the
        request: ``process`` then waits for it (without scheduling again)."""
        decision = self._schedule(request)
        if not (self._gated and request.stream):
            return True
        waiter: list[asyncio.Future] = []  # made only when held (notify never runs before)

        def notify() -> None:
            if waiter and not waiter[0].done():
                waiter[0].set_result(None)

        # asked synchronously: only a held request pays for a future and a coroutine
        if not self.engine.hold_for_prefill(decision, request, notify):
            return True
        # held: what was left for after the send (the prompt's prefix blocks among it) is
        # done now, so the requests scheduled while it waits see where its prefix goes
        request.sent()
        waiter.append(asyncio.get_running_loop().create_future())
        request.attrs[_GATE_WAIT] = waiter[0]
        return False

    async def process(self, request: Request) -> None:
        future = request.attrs.pop(_GATE_WAIT, None)
        if future is None:  # not begun by process_now
            if self.process_now(request):
                return
            future = request.attrs.pop(_GATE_WAIT)
        assert request.decision is not None
        await self._wait_at_prefill_gate(request, request.decision, future)

    def _schedule(self, request: Request) -> Decision:
        """Pick, keep the decision on the request, count it and mark it running."""
        pool = self.pool_for(request)
        if len(pool) == 0 or (request.subset is not None and not request.subset):
            raise no_endpoints()
        try:
            decision = self.engine.schedule(request, pool, k=self.k)
        except InferenceError:
            self._record(request, "failure")
            raise
        except Exception as exc:  # the engine's own failure, not a request error
            self._record(request, "failure")
            raise InferenceError(
                ErrorCode.RESOURCE_EXHAUSTED, f"failed to find target endpoint: {exc}"
            ) from exc
        if decision is None or not decision.endpoints:
            if decision is not None and decision.reserved:
                self.engine.release(decision)
            self._record(request, "failure")
            raise no_endpoints()
        request.decision = decision
        if self.metrics is not None:
            # success, request count and size, running: once the request is on its way
            request.later(self.metrics.scheduled, request)
        request.attrs["running"] = True
        return decision

    async def _wait_at_prefill_gate(
        self, request: Request, decision: Decision, future: asyncio.Future
    ) -> None:
        limit = self.engine.prefill_gate_max_wait(decision)
        try:
            await asyncio.wait_for(future, timeout=limit)
        except asyncio.TimeoutError:
            log.debug(
                "request %s: sent to %s after waiting %gs behind a long prefill",
                request.request_id, decision.primary.address, limit,
            )  # fmt: skip
            self.engine.stop_waiting(decision)
        except BaseException:
            self.engine.stop_waiting(decision)
            raise

    def _record(self, request: Request, status: str) -> None:
        if self.metrics is not None:
            self.metrics.record_scheduled(request, status)
