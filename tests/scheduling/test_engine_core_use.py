"""How the engine uses the core: adapter lookups that never register client-chosen names,
and one snapshot shared by Python plugins across picks (in-flight counters always current)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sched_helpers import add_endpoint, make_request

from igw.config import load_config
from igw.scheduling import PluginKind, SchedulingEngine, default_registry

LORA_CONFIG = (
    "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
    "plugins: [{type: lora-affinity-scorer}]\n"
)


def test_client_chosen_model_names_are_never_registered(make_pool):
    pool = make_pool([(0, 0, 0.0, "sql-lora")])
    engine = SchedulingEngine(load_config(text=LORA_CONFIG))
    for i in range(300):  # more names than the 256-adapter registry holds
        engine.release(engine.schedule(make_request(model=f"client-{i}"), pool))
    assert pool.table.find_adapter("client-0") == -1
    assert pool.table.adapter_id("next") == pool.table.find_adapter("sql-lora") + 1


def test_unknown_adapter_prefers_endpoints_with_a_free_slot(make_pool):
    # endpoint 0: both slots used by other adapters; endpoint 1: one free slot
    pool = make_pool([(0, 0, 0.0, "a", "b"), (1, 0, 0.0, "c")])
    pool.table.update(0, waiting=0, running=0, kv_util=0.0, now=time.monotonic(), max_lora=2)
    pool.table.update(1, waiting=0, running=0, kv_util=0.0, now=time.monotonic(), max_lora=2)
    engine = SchedulingEngine(load_config(text=LORA_CONFIG), with_scores=True)
    decision = engine.schedule(make_request(model="never-seen"), pool)
    assert decision.primary.id == 1
    scores = decision.scores["lora-affinity-scorer"]
    assert sorted(scores.values()) == pytest.approx([0.0, 0.8])


def test_known_adapter_still_gets_affinity(make_pool):
    pool = make_pool([(0, 0, 0.0, "x"), (1, 0, 0.0, "sql-lora")])
    engine = SchedulingEngine(load_config(text=LORA_CONFIG))
    assert engine.schedule(make_request(model="sql-lora"), pool).primary.id == 1


class Recorder:
    """A user filter that keeps what it was shown and passes everything."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, list[int], list[int], bool]] = []

    def filter(self, request, pool, snapshot, mask):
        self.seen.append(
            (
                snapshot,  # kept alive, so identity comparisons mean something
                snapshot.waiting.tolist(),
                snapshot.inflight_requests.tolist(),
                bool(snapshot.waiting.flags.writeable),
            )
        )
        return mask


def engine_with_recorder(max_age: float) -> tuple[SchedulingEngine, Recorder]:
    recorder = Recorder()
    registry = default_registry()
    registry.register("recorder", lambda name, params: recorder, PluginKind.FILTER)
    config = load_config(
        text="apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: recorder}, {type: queue-scorer}]\n",
        registry=registry,
    )
    return SchedulingEngine(config, registry, snapshot_max_age=max_age), recorder


def test_snapshot_is_reused_while_the_table_is_unchanged(make_pool):
    pool = make_pool([(0, 0, 0.0), (1, 3, 0.0)])
    engine, recorder = engine_with_recorder(max_age=0.0)
    first = engine.schedule(make_request(), pool)
    engine.schedule(make_request(), pool)
    (snap1, _, inflight1, _), (snap2, _, inflight2, _) = recorder.seen
    assert snap1 is snap2
    # the first pick reserved endpoint 0; the shared snapshot shows it at once
    assert inflight1 == [0, 0] and inflight2[first.primary.id] == 1


def test_snapshot_is_retaken_after_an_update(make_pool):
    pool = make_pool([(0, 0, 0.0), (1, 3, 0.0)])
    engine, recorder = engine_with_recorder(max_age=0.0)
    engine.release(engine.schedule(make_request(), pool))
    pool.table.update(1, waiting=9, running=0, kv_util=0.0, now=time.monotonic())
    engine.release(engine.schedule(make_request(), pool))
    assert [waiting for _, waiting, _, _ in recorder.seen] == [[0, 3], [0, 9]]


def test_a_young_snapshot_may_lag_metrics_but_not_membership(make_pool):
    pool = make_pool([(0, 0, 0.0), (1, 3, 0.0)])
    engine, recorder = engine_with_recorder(max_age=3600.0)
    engine.release(engine.schedule(make_request(), pool))
    pool.table.update(1, waiting=9, running=0, kv_util=0.0, now=time.monotonic())
    engine.release(engine.schedule(make_request(), pool))
    add_endpoint(pool, 2, 5)  # a new id past the snapshot's end forces a fresh one
    engine.release(engine.schedule(make_request(), pool))
    assert [waiting for _, waiting, _, _ in recorder.seen] == [[0, 3], [0, 3], [0, 9, 5]]


def test_shared_snapshot_arrays_are_read_only(make_pool):
    pool = make_pool([(0, 0, 0.0)])
    engine, recorder = engine_with_recorder(max_age=0.0)
    engine.schedule(make_request(), pool)
    engine.schedule(make_request(), pool)
    assert [writeable for *_, writeable in recorder.seen] == [False, False]


def test_negative_snapshot_age_is_rejected():
    with pytest.raises(ValueError, match="snapshot_max_age"):
        SchedulingEngine(snapshot_max_age=-1.0)


def test_reused_snapshot_never_routes_to_an_endpoint_made_unready(make_pool):
    """Readiness in a young snapshot may lag; the core re-checks it on every pick."""
    pool = make_pool([(0, 0, 0.0), (1, 5, 0.0)])
    engine, _ = engine_with_recorder(max_age=3600.0)
    engine.release(engine.schedule(make_request(), pool))
    pool.table.set_ready(0, False)
    picks = {engine.schedule(make_request(), pool).primary.id for _ in range(5)}
    assert picks == {1}
    assert np.asarray(pool.table.snapshot().ready).tolist() == [False, True]
