"""Model name -> pool routing and per-pool engines."""

from __future__ import annotations

import pytest

from igw.datastore import Pool
from igw.errors import ErrorCode, InferenceError
from igw.gateway.routing import EngineSet, ModelRouter, PoolRuntime
from igw.pipeline import Decision, Request


def router(**routes) -> ModelRouter:
    a = PoolRuntime(Pool("a"), models={"m1", "shared"})
    b = PoolRuntime(Pool("b"), models={"m2", "shared"})
    return ModelRouter([a, b], routes)


def test_configured_route_beats_learned_names():
    r = router(shared="b")
    request = Request(request_id="x", target_model="shared")
    assert r.pool_for(request).name == "b"
    assert request.pool_name == "b"


def test_learned_names_route_when_not_configured():
    r = router()
    assert r.pool_for(Request(request_id="x", target_model="m2")).name == "b"


def test_unknown_model_is_not_found_and_lists_models():
    with pytest.raises(InferenceError) as info:
        router().pool_for(Request(request_id="x", target_model="zz"))
    assert info.value.code is ErrorCode.NOT_FOUND
    assert "m1, m2, shared" in info.value.message


def test_missing_model_is_bad_request():
    with pytest.raises(InferenceError) as info:
        router().pool_for(Request(request_id="x"))
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_routes_to_undefined_pools_are_refused():
    with pytest.raises(ValueError, match="undefined pools"):
        router(m1="nope")


def test_single_pool_still_learning_accepts_any_model():
    only = PoolRuntime(Pool("only"), learn_models=True)
    assert ModelRouter([only]).pool_for(Request(request_id="x", target_model="a")) is only.pool


class Recording:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def schedule(self, request, pool, *, k=None):
        self.calls.append(("schedule", pool.name))
        return Decision(pool=pool, endpoints=[])

    def release(self, decision):
        self.calls.append(("release", decision.pool.name))


def test_engine_set_dispatches_by_pool():
    a, b = Recording(), Recording()
    engines = EngineSet({"a": a, "b": b})
    decision = engines.schedule(Request(request_id="x"), Pool("b"))
    engines.release(decision)
    assert a.calls == [] and b.calls == [("schedule", "b"), ("release", "b")]
