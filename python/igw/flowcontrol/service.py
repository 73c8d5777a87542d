"""``FlowControl``: one ``PoolController`` per pool, built from config, seen by the pipeline.

It is the flow-control stage's ``controller`` (``await admit(request, pool)``) and, once
``attach``-ed, a response stage whose ``on_finish`` tells the request's pool controller
that capacity freed. Front ends build it with ``from_config`` (one EndpointPickerConfig)
or ``from_configs`` (one per pool, as the standalone gateway has).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from igw.config import ConfigError
from igw.errors import ErrorCode, InferenceError
from igw.flowcontrol.controller import ATTR, PoolController
from igw.flowcontrol.params import (
    FlowControlSettings,
    detector_from_config,
    detector_from_spec,
    flow_control_enabled,
    settings_from_config,
)

if TYPE_CHECKING:
    from igw.datastore import Pool
    from igw.flowcontrol.metrics import FlowControlMetrics
    from igw.pipeline import Pipeline, Request


class FlowControl:
    """One controller per pool, the flow-control stage's ``controller`` and a response stage.

    As a response stage (``attach``), ``on_finish`` tells the request's pool controller that
    capacity freed; it runs after the account stage released the request's in-flight
    reservation, so the next saturation reading already sees the room.
    """

    name = "flowcontrol"

    def __init__(
        self,
        settings: FlowControlSettings | None = None,
        *,
        detector: Any | None = None,
        detector_factory: Callable[[Pool], Any] | None = None,
        metrics: Any | None = None,
        clock: Callable[[], float] = time.monotonic,
        staleness: float = 0.2,
        per_pool: Mapping[str, tuple[FlowControlSettings | None, Any]] | None = None,
    ) -> None:
        """``detector`` is shared by every pool; ``detector_factory`` makes one per pool;
        with neither, the settings' detector spec is built per pool. ``metrics`` is an
        ``igw.metrics.Metrics`` (its registry gets the flow-control families) or a
        ``FlowControlMetrics``. ``per_pool`` maps a pool name to its own (settings,
        detector); settings None means flow control is off for that pool (legacy shedding
        with that detector)."""
        self.settings = settings or FlowControlSettings()
        self.per_pool = dict(per_pool or {})
        self.clock = clock
        if detector is not None:
            self._detector_for: Callable[[Pool], Any] = lambda _pool: detector
        elif detector_factory is not None:
            self._detector_for = detector_factory
        else:
            spec = self.settings.detector
            self._detector_for = lambda _pool: detector_from_spec(
                spec, staleness=staleness, lag_correction=True
            )
        self.metrics = _metrics_of(metrics)
        self.controllers: dict[int, PoolController] = {}
        self.closed = False

    @classmethod
    def from_config(
        cls, config: Any, *, metrics: Any | None = None, staleness: float = 0.2, **kwargs: Any
    ) -> FlowControl | None:
        """The controller a config asks for, or None when flow control is off (the legacy
        path then applies). Raises ``ConfigError`` for a bad ``flowControl`` section."""
        if not flow_control_enabled(config):
            return None
        settings = settings_from_config(config)
        detector_from_config(config, staleness=staleness)  # parameter errors now, not later
        return cls(settings, metrics=metrics, staleness=staleness, **kwargs)

    @classmethod
    def from_configs(
        cls, configs: Mapping[str, Any], *, metrics: Any | None = None, staleness: float = 0.2
    ) -> FlowControl | None:
        """One controller for several pools, each with its own EndpointPickerConfig (pool
        name -> config), as the standalone gateway has. None when no config enables flow
        control; pools whose config does not keep the legacy path with their detector."""
        plans: dict[str, tuple[FlowControlSettings | None, Any]] = {}
        for name, config in configs.items():
            try:
                if flow_control_enabled(config):
                    settings = settings_from_config(config)
                    detector_from_config(config, staleness=staleness)  # names the field
                    detector = detector_from_spec(
                        settings.detector, staleness=staleness, lag_correction=True
                    )
                    plans[name] = (settings, detector)
                else:
                    plans[name] = (None, detector_from_config(config, staleness=staleness))
            except ConfigError as error:
                source = f"pool {name}" + (f" ({error.source})" if error.source else "")
                raise ConfigError(source, error.field, error.expected) from None
        if all(settings is None for settings, _ in plans.values()):
            return None
        return cls(metrics=metrics, staleness=staleness, per_pool=plans)

    def controller_for(self, pool: Pool) -> PoolController:
        controller = self.controllers.get(id(pool))
        if controller is None or controller.pool is not pool:
            settings, detector = self.per_pool.get(pool.name, (self.settings, None))
            controller = PoolController(
                pool,
                detector if detector is not None else self._detector_for(pool),
                settings or self.settings,
                metrics=self.metrics,
                clock=self.clock,
            )
            if self.closed:
                controller.closed = True
            self.controllers[id(pool)] = controller
        return controller

    async def admit(self, request: Request, pool: Pool) -> None:
        plan = self.per_pool.get(pool.name)
        if plan is not None and plan[0] is None:  # flow control off for this pool
            if request.priority < 0 and plan[1].saturation(pool, request) >= 1.0:
                raise InferenceError(
                    ErrorCode.RESOURCE_EXHAUSTED, "system saturated, sheddable request dropped"
                )
            return
        await self.controller_for(pool).admit(request)

    def notify(self, pool: Pool | None = None) -> None:
        """Capacity or metrics changed (one pool, or all): try to dispatch."""
        if pool is not None:
            controller = self.controllers.get(id(pool))
            if controller is not None:
                controller.notify()
            return
        for controller in self.controllers.values():
            controller.notify()

    def attach(self, pipeline: Pipeline) -> FlowControl:
        """Use this controller in ``pipeline``'s flow-control stage and hear every finish."""
        for stage in pipeline.stages:
            if getattr(stage, "name", "") == "flowcontrol" and hasattr(stage, "controller"):
                stage.controller = self
        if self not in pipeline.response_stages:
            pipeline.response_stages.append(self)
        return self

    # -- response stage ---------------------------------------------------------------------
    observe_only = True  # only hears the finish: may run after the client has the bytes
    reads_response = False  # its head and chunk hooks do nothing: a relay may skip them

    def on_headers(self, request: Request, status: int, headers: dict[str, str]) -> None:
        return None

    def on_chunk(self, request: Request, chunk: bytes, end_of_stream: bool) -> bytes:
        return chunk

    def on_finish(self, request: Request) -> None:
        controller = request.attrs.pop(ATTR, None)
        if controller is not None:
            controller.notify()

    async def close(self) -> None:
        self.closed = True
        for controller in list(self.controllers.values()):
            await controller.close()


def _metrics_of(metrics: Any | None) -> FlowControlMetrics | None:
    if metrics is None:
        return None
    from igw.flowcontrol.metrics import FlowControlMetrics

    if isinstance(metrics, FlowControlMetrics):
        return metrics
    return FlowControlMetrics.for_registry(metrics.registry)


def install(
    pipeline: Pipeline, config: Any, *, metrics: Any | None = None, staleness: float = 0.2
) -> FlowControl | None:
    """Wire a pipeline's flow-control stage from a config, in one call.

    The legacy path gets the configured saturation detector (``saturationDetector``, with
    the reference's formula). When the config enables flow control, a ``FlowControl`` is
    attached and returned (the caller closes it at shutdown); otherwise None. Raises
    ``ConfigError`` for a bad section, before anything is changed.
    """
    detector = detector_from_config(config, staleness=staleness)
    flow = FlowControl.from_config(config, metrics=metrics, staleness=staleness)
    for stage in pipeline.stages:
        if getattr(stage, "name", "") == "flowcontrol" and hasattr(stage, "detector"):
            stage.detector = detector
    if flow is not None:
        flow.attach(pipeline)
    return flow
