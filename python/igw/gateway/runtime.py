"""Assemble a ``Gateway``: the standard pipeline (``igw.stages.build_pipeline``) around a
``ModelRouter``, plus the two things only the standalone gateway needs:

* ``ModelPriorityStage`` (after parse): a model's configured priority applies to requests that
  name no InferenceObjective header, so "priority 10 on the chatbot model" needs no header;
* the mirror hook (see ``igw.gateway.mirror``).

Access control (``igw.access``) and content safety (``igw.guard``) arrive as plain checks and
response stages (``admit_checks``, ``guard_checks``, ``response_checks``); the admit stage runs
after the model priority, so a tenant's configured priority overrides a model's.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from igw.gateway.app import Gateway, Limits
from igw.gateway.routing import ModelRouter
from igw.stages import build_pipeline

if TYPE_CHECKING:
    from igw.pipeline import Request


class ModelPriorityStage:
    """Sets ``request.priority`` from the model's configured priority when no objective
    header chose one (the header, resolved by the parse stage, wins)."""

    name = "model-priority"

    def __init__(self, priorities: dict[str, int]) -> None:
        self.priorities = dict(priorities)

    async def process(self, request: Request) -> None:
        if request.objective is None:
            priority = self.priorities.get(request.incoming_model)
            if priority is not None:
                request.priority = priority


def build_gateway(
    router: ModelRouter,
    engine: Any,
    *,
    metrics: Any | None = None,
    objectives: Any | None = None,
    rewrites: Any | None = None,
    priorities: dict[str, int] | None = None,
    limits: Limits | None = None,
    mirror: Any | None = None,
    detector: Any | None = None,
    rng: random.Random | None = None,
    admit_checks: Sequence[Any] = (),
    guard_checks: Sequence[Any] = (),
    response_checks: Sequence[Any] = (),
    authorize: Any | None = None,
) -> Gateway:
    """The gateway over ``router``'s pools with ``engine`` (an Engine or ``EngineSet``)."""
    limits = limits or Limits()
    pipeline = build_pipeline(
        engine,
        router.pool_for,
        metrics=metrics,
        objectives=objectives,
        rewrites=rewrites,
        k=limits.max_attempts,
        use_subset_metadata=False,
        # the pool's data layer itself with one pool (two calls fewer per response); asked
        # here, after the caller attached the data layers (start_stack does)
        reporter=router.response_reporter(),
        is_adapter=router.is_adapter,
        detector=detector,
        rng=rng,
        admit_checks=admit_checks,
        guard_checks=guard_checks,
        response_checks=response_checks,
    )
    if priorities:
        pipeline.stages.insert(1, ModelPriorityStage(priorities))
    if metrics is not None:
        for runtime in router.pools.values():
            metrics.add_pool(runtime.pool)
    return Gateway(
        pipeline,
        models=router.models,
        ready=router.ready,
        metrics_text=metrics.generate if metrics is not None else None,
        on_error=(lambda req, err: metrics.record_error(req, err.code.label)) if metrics else None,
        report_failure=router.report_failure,
        mirror=mirror,
        limits=limits,
        authorize=authorize,
    )
