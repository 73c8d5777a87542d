"""Model name -> pool, for a gateway that fronts several pools at once.

The pipeline's route stage decides the *target model* (client model, header rewrite, weighted
InferenceModelRewrite split); this module maps that model to the pool serving it, which is
what body-based routing does in a cluster (model name -> InferencePool). Names come from the
config file, or are learned from each replica's ``/v1/models`` (``--endpoints`` / ``--sim``).

``EngineSet`` lets pools use different scheduling configs behind the one ``Engine`` the
stages expect, and ``ModelRouter.report_response`` sends each response's outcome to the data
layer of the pool that owns the endpoint (the stages take one reporter).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from igw.errors import ErrorCode, InferenceError, bad_request

if TYPE_CHECKING:
    from igw.datastore import Endpoint, Pool
    from igw.pipeline import Decision, Request


@dataclasses.dataclass(eq=False)
class PoolRuntime:
    """One pool with what serves it: its data layer and the model names it answers for."""

    pool: Pool
    datalayer: Any | None = None  # igw.datalayer.DataLayer (start/stop, report_response)
    models: set[str] = dataclasses.field(default_factory=set)  # configured or learned names
    adapters: set[str] = dataclasses.field(default_factory=set)  # LoRA adapters among them
    learn_models: bool = False  # refresh ``models`` from the replicas' /v1/models

    @property
    def name(self) -> str:
        return self.pool.name

    def ready(self) -> bool:
        return bool(self.pool.ready_endpoints())


class ModelRouter:
    """Maps target model names to pools; unknown names are 404 with the known names listed."""

    def __init__(self, pools: list[PoolRuntime], routes: dict[str, str] | None = None) -> None:
        self.pools = {runtime.name: runtime for runtime in pools}
        unknown = {pool for pool in (routes or {}).values() if pool not in self.pools}
        if unknown:
            raise ValueError(f"models route to undefined pools: {sorted(unknown)}")
        self.routes = dict(routes or {})  # explicit model -> pool name (config file)

    def runtime_for_model(self, model: str) -> PoolRuntime | None:
        name = self.routes.get(model)
        if name is not None:
            return self.pools[name]
        for runtime in self.pools.values():
            if model in runtime.models:
                return runtime
        if len(self.pools) == 1 and not self.routes:
            only = next(iter(self.pools.values()))
            if only.learn_models and not only.models:
                return only  # names not learned yet (replicas still starting): let it through
        return None

    def pool_for(self, request: Request) -> Pool:
        """The ``pool_for`` callable the flow-control and schedule stages use."""
        cached = request.attrs.get("pool")
        if cached is not None:
            return cached
        model = request.target_model or request.incoming_model
        if not model:
            raise bad_request("missing required field 'model' (a model name from /v1/models)")
        runtime = self.runtime_for_model(model)
        if runtime is None:
            known = ", ".join(self.models()) or "none yet"
            raise InferenceError(
                ErrorCode.NOT_FOUND,
                f"model {model!r} is not served by this gateway (known models: {known})",
            )
        request.pool_name = runtime.name
        request.attrs["pool"] = runtime.pool
        return runtime.pool

    def models(self) -> list[str]:
        names = set(self.routes)
        for runtime in self.pools.values():
            names |= runtime.models
        return sorted(names)

    def is_adapter(self, model: str) -> bool:
        # a plain loop: called once per request, and any() over a generator costs ~4x more
        for runtime in self.pools.values():
            if model in runtime.adapters:
                return True
        return False

    def ready(self) -> bool:
        return any(runtime.ready() for runtime in self.pools.values())

    def report_response(self, endpoint: Endpoint, ok: bool) -> None:
        """Outlier detection input, routed to the data layer of the pool that holds
        ``endpoint`` now (a removed endpoint is not reported). Runs once per response: the
        pools are searched here, without a helper call."""
        address = endpoint.address
        for runtime in self.pools.values():
            if runtime.pool.by_address(address) is endpoint:
                if runtime.datalayer is not None:
                    runtime.datalayer.report_response(endpoint, ok)
                return

    def report_failure(self, endpoint: Endpoint) -> None:
        self.report_response(endpoint, False)

    def response_reporter(self) -> Any | None:
        """What the account stage should send each response's outcome to (ask once the data
        layers are attached). With one pool, its data layer itself: a ``DataLayer`` hears
        only the endpoints it tracks, checked by identity, and it tracks exactly the pool's
        current members, so the search in ``report_response`` would decide nothing (two
        calls fewer per response). With several pools, the router. None when no pool has a
        data layer: nothing would hear the outcome."""
        layers = [runtime.datalayer for runtime in self.pools.values()]
        if all(layer is None for layer in layers):
            return None
        return layers[0] if len(layers) == 1 else self


class EngineSet:
    """One scheduling engine per pool behind the single ``Engine`` the stages call."""

    def __init__(self, engines: dict[str, Any], default: Any | None = None) -> None:
        self.engines = dict(engines)
        self.default = default

    def _for(self, pool: Pool) -> Any:
        engine = self.engines.get(pool.name, self.default)
        if engine is None:
            raise KeyError(f"no scheduling engine for pool {pool.name!r}")
        return engine

    def schedule(self, request: Request, pool: Pool, *, k: int | None = None) -> Decision:
        return self._for(pool).schedule(request, pool, k=k)

    def release(self, decision: Decision) -> None:
        self._for(decision.pool).release(decision)

    def observe_first_token(self, decision: Decision, ttft_s: float) -> None:
        observe = getattr(self._for(decision.pool), "observe_first_token", None)
        if observe is not None:
            observe(decision, ttft_s)

    def hold_for_prefill(self, decision: Decision, request: Request, notify) -> bool:
        hold = getattr(self._for(decision.pool), "hold_for_prefill", None)
        return hold is not None and hold(decision, request, notify)

    def stop_waiting(self, decision: Decision) -> None:
        stop = getattr(self._for(decision.pool), "stop_waiting", None)
        if stop is not None:
            stop(decision)

    def prefill_gate_max_wait(self, decision: Decision) -> float:
        limit = getattr(self._for(decision.pool), "prefill_gate_max_wait", None)
        return limit(decision) if limit is not None else 0.0
