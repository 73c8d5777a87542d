"""Flow-control stage: the legacy shedding path, or the flow controller when configured.

Legacy mode (the reference's default, flow-control feature gate off): requests with
priority >= 0 always pass; a priority < 0 request gets 429 ``system saturated, sheddable
request dropped`` when the pool's saturation is >= 1.0. Saturation comes from the
configured detector (default: the reference's utilization detector, see
``igw.flowcontrol.detectors``).

With a ``controller`` (``igw.flowcontrol.FlowControl.from_config`` returns one when the
config enables flow control) every request goes through it: ``async admit(request, pool)``
returns when the request may be scheduled or raises ``InferenceError`` (429/503 with a drop
reason). Shedding of sheddable requests under saturation then happens inside the
controller, so both paths shed alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from igw.errors import ErrorCode, InferenceError
from igw.flowcontrol.detectors import ConcurrencyDetector, UtilizationDetector
from igw.pipeline import Request

if TYPE_CHECKING:
    from igw.datastore import Pool

__all__ = ["ConcurrencyDetector", "FlowControlStage", "UtilizationDetector"]


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

    def process_now(self, request: Request) -> bool:
        """The legacy check at once; with a flow controller the request may queue: False."""
        if self.controller is not None:
            return False
        self._shed_if_saturated(request)
        return True

    async def process(self, request: Request) -> None:
        if self.controller is not None:
            await self.controller.admit(request, self.pool_for(request))
            return
        self._shed_if_saturated(request)

    def _shed_if_saturated(self, request: Request) -> None:
        # Legacy: only a sheddable request needs its pool's saturation; for the others this
        # stage does nothing (the pool, and any error finding it, come with the schedule stage).
        if request.priority < 0:
            if self.detector.saturation(self.pool_for(request), request) >= 1.0:
                raise InferenceError(
                    ErrorCode.RESOURCE_EXHAUSTED, "system saturated, sheddable request dropped"
                )
