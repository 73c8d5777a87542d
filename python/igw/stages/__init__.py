"""The pipeline's stages and ``build_pipeline``, which assembles them for one front end.

Request phase: parse -> admit -> guard.in -> route -> flowcontrol -> schedule.
Response phase: usage -> reverse-rewrite -> account.

Front ends (ext_proc, standalone gateway) own the protocol; everything about the request is
decided here. On an ``InferenceError`` the front end answers with its status and calls
``metrics.record_error(request, err.code.label)``; after scheduling it must call
``pipeline.finish(request)`` exactly once whatever happens (``Pipeline.finish`` is idempotent).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from igw.parsing import ParserRegistry
from igw.pipeline import Pipeline, Request
from igw.stages.account import AccountStage, ReverseRewriteStage, UsageStage
from igw.stages.flowcontrol import FlowControlStage, UtilizationDetector
from igw.stages.parse import ParseStage, apply_headers, subset_of
from igw.stages.protocols import Engine, ObjectiveLookup, ResponseReporter, RewriteLookup
from igw.stages.route import RouteStage
from igw.stages.schedule import ScheduleStage
from igw.stages.seams import AdmitStage, Check, GuardStage

if TYPE_CHECKING:
    from igw.datastore import Pool
    from igw.metrics import Metrics

__all__ = [
    "AccountStage",
    "AdmitStage",
    "Check",
    "FlowControlStage",
    "GuardStage",
    "ParseStage",
    "ReverseRewriteStage",
    "RouteStage",
    "ScheduleStage",
    "UsageStage",
    "UtilizationDetector",
    "active_stages",
    "apply_headers",
    "build_pipeline",
    "parser_types_from_config",
    "subset_of",
]


def parser_types_from_config(config: Any) -> list[str] | None:
    """Parser type names from an EndpointPickerConfig's ``requestHandler.parsers``.

    Returns None when the config names no parsers (the default list applies). Accepts the
    config as a pydantic object or a plain dict; pluginRefs resolve through ``plugins``.
    """
    if config is None:
        return None
    data = config.model_dump(by_alias=True) if hasattr(config, "model_dump") else config
    if not isinstance(data, dict):
        return None
    handler = data.get("requestHandler") or data.get("request_handler") or {}
    refs = [
        p.get("pluginRef") or p.get("plugin_ref")
        for p in (handler.get("parsers") or [])
        if isinstance(p, dict)
    ]
    if not refs:
        return None
    types = {}
    for plugin in data.get("plugins") or []:
        if isinstance(plugin, dict) and plugin.get("type"):
            types[plugin.get("name") or plugin["type"]] = plugin["type"]
    return [types.get(ref, ref) for ref in refs if ref]


def build_pipeline(
    engine: Engine,
    pool: Pool | Callable[[Request], Pool],
    *,
    metrics: Metrics | None = None,
    parsers: ParserRegistry | Sequence[str] | None = None,
    objectives: ObjectiveLookup | None = None,
    rewrites: RewriteLookup | None = None,
    k: int | None = None,
    use_subset_metadata: bool = True,
    detector: Any | None = None,
    flow_controller: Any | None = None,
    admit_checks: Sequence[Check] = (),
    guard_checks: Sequence[Check] = (),
    response_checks: Sequence[Any] = (),
    reporter: ResponseReporter | None = None,
    is_adapter: Callable[[str], bool] | None = None,
    rng: random.Random | None = None,
) -> Pipeline:
    """The standard pipeline. ``pool`` is one Pool or a function choosing one per request.

    ``response_checks`` are response stages (``on_headers`` / ``on_chunk`` / ``on_finish``, see
    ``igw.pipeline``) that run after usage parsing and the reverse model rewrite and before
    accounting: guard.out (content checks on the answer) and access bookkeeping (token
    debits) plug in there. A stage that only reads the answer should say so with
    ``observe_only = True`` (and one that changes it only sometimes with
    ``changes_bytes(request)``): ``igw serve`` then runs it after the bytes are written; one
    that needs only ``on_finish`` says ``reads_response = False`` and its head and chunk
    hooks are skipped on a relay."""
    pool_for: Callable[[Request], Pool] = pool if callable(pool) else (lambda _r, p=pool: p)
    if parsers is None or isinstance(parsers, ParserRegistry):
        registry = parsers or ParserRegistry.from_types()
    else:
        registry = ParserRegistry.from_types(parsers)
    on_rewrite = metrics.record_rewrite if metrics is not None else None
    stages = [
        ParseStage(registry, objectives, use_subset_metadata=use_subset_metadata),
        AdmitStage(admit_checks),
        GuardStage(guard_checks),
        RouteStage(rewrites, rng=rng, on_rewrite=on_rewrite, is_adapter=is_adapter),
        FlowControlStage(pool_for, detector, flow_controller),
        ScheduleStage(engine, pool_for, k=k, metrics=metrics),
    ]
    response = [UsageStage(), ReverseRewriteStage(), *response_checks,
                AccountStage(engine, metrics, reporter)]  # fmt: skip
    return Pipeline(stages, response)


def active_stages(stages: Sequence[Any]) -> list[Any]:
    """``stages`` without the ones configured to do nothing: an admit or guard.in stage with
    no checks (no ``access:`` / ``guard:`` section).

    Why: every stage costs the pipeline loop a coroutine and an await per request (~1 us of
    the critical path between the request and the upstream write, measured on the request
    trace); an empty seam changes nothing, so leaving it out changes no behaviour. Every
    other stage stays: route always resolves the target model (and its 400), flow control
    sheds priority < 0 requests and is where a flow controller attaches, schedule picks.
    ``build_pipeline`` keeps the full standard order; a front end prunes when it adopts it.
    """
    return [
        stage
        for stage in stages
        if not (type(stage) in (AdmitStage, GuardStage) and not stage.checks)
    ]
