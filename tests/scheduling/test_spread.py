"""new-prefix-spread-filter: where a prefix nobody holds may land, and how the filter, a core
filter, reaches the core (inside the pick, or on its own when a Python filter follows it)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
from sched_helpers import make_request

from igw.config import ConfigError, load_config
from igw.scheduling import SchedulingEngine, default_registry, named_policy
from igw.scheduling._backend import core_of
from igw.scheduling.framework import PREFIX_ATTR
from igw.scheduling.plugins.core_plugins import CoreFilter

SPREAD = "new-prefix-spread-filter"


def _hashes(engine, pool, prompt: str):
    """Schedule nothing; just let the engine hash ``prompt`` the way the policy does."""
    request = make_request(prompt)
    profile = engine.built.profiles["default"]
    engine._prefix(request, profile, core_of(pool.scheduler))
    return request


def _filter(pool, request, tolerance: float = 0.1) -> np.ndarray:
    """The filter run on its own (as when a Python filter follows it in a profile)."""
    mask = np.ones(pool.table.high_water, dtype=np.bool_)
    spread = default_registry().create("spread", SPREAD, {"tolerance": tolerance})
    return spread.filter(request, pool, pool.table.snapshot(), mask)


def _hold(pool, engine, endpoint: int, prompt: str) -> None:
    request = _hashes(engine, pool, prompt)
    pool.index.record(endpoint, request.attrs[PREFIX_ATTR][1])


def test_a_new_prefix_goes_to_the_endpoints_holding_the_fewest_prefixes(make_pool):
    pool = make_pool([(i, 0, 0.0) for i in range(3)])
    engine = SchedulingEngine(named_policy("predicted-ttft"))
    _hold(pool, engine, 0, "group a " * 200)
    _hold(pool, engine, 1, "group b " * 200)
    kept = _filter(pool, _hashes(engine, pool, "group c " * 200))
    assert kept.tolist() == [False, False, True]
    decision = engine.schedule(make_request("group c " * 200), pool)
    assert decision.primary.id == 2


def test_a_cached_prefix_is_not_narrowed(make_pool):
    pool = make_pool([(i, 0, 0.0) for i in range(3)])
    engine = SchedulingEngine(named_policy("predicted-ttft"))
    _hold(pool, engine, 0, "group a " * 200)
    kept = _filter(pool, _hashes(engine, pool, "group a " * 200 + "a question"))
    assert kept.all()


def test_sizes_within_tolerance_tie_and_larger_ones_are_left_out(make_pool):
    pool = make_pool([(i, 0, 0.0) for i in range(3)])
    engine = SchedulingEngine(named_policy("predicted-ttft"))
    _hold(pool, engine, 0, "group a " * 200)
    _hold(pool, engine, 1, "group b " * 200 + "x")  # same number of blocks as group a
    _hold(pool, engine, 2, "group c " * 200)
    _hold(pool, engine, 2, "group d " * 200)
    kept = _filter(pool, _hashes(engine, pool, "group e " * 200))
    assert kept.tolist() == [True, True, False]


def test_equal_sizes_within_tolerance_are_all_kept(make_pool):
    pool = make_pool([(i, 0, 0.0) for i in range(3)])
    engine = SchedulingEngine(named_policy("predicted-ttft"))
    kept = _filter(pool, _hashes(engine, pool, "brand new " * 200))
    assert kept.all()  # nobody holds anything: the cost model chooses among all


def test_a_request_without_a_prompt_passes_through(make_pool):
    pool = make_pool([(i, 0, 0.0) for i in range(3)])
    engine = SchedulingEngine(named_policy("predicted-ttft"))
    _hold(pool, engine, 0, "group a " * 200)
    assert _filter(pool, make_request("")).all()


def test_predicted_ttft_runs_the_filter_inside_the_core_pick(make_pool):
    pool = make_pool([(i, 0, 0.0) for i in range(3)])
    engine = SchedulingEngine(named_policy("predicted-ttft"))
    profile = engine.built.profiles["default"]
    assert profile.filters == []  # no Python filter left: no snapshot, no Python call
    core_profile = engine._core_profile(core_of(pool.scheduler), profile, pool)
    assert core_profile.filter_types == [SPREAD]
    _hold(pool, engine, 0, "group a " * 200)
    _hold(pool, engine, 2, "group b " * 200)
    for _ in range(3):  # load on 1 would move a cost-model-only pick elsewhere
        pool.table.add_inflight(1, 1, 4000)
    assert engine.schedule(make_request("group c " * 200), pool).primary.id == 1
    assert len(engine._snapshots) == 0


class _Seen:
    """A Python filter that keeps everything and remembers the mask it was given."""

    seen: ClassVar[list[list[bool]]] = []

    def __init__(self, **_: object) -> None:
        self.name = "seen"

    def filter(self, request, pool, snapshot, mask):
        _Seen.seen.append(mask[: pool.table.high_water].tolist())
        return mask


def _config(order: list[str]):
    types = {"seen": f"python:{__name__}:_Seen", "spread": SPREAD}
    plugins = ", ".join(f"{{name: {n}, type: '{types[n]}'}}" for n in order)
    refs = ", ".join(f"{{pluginRef: {n}}}" for n in [*order, "queue"])
    return load_config(
        text="apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        f"plugins: [{plugins}, {{name: queue, type: queue-scorer}}]\n"
        f"schedulingProfiles: [{{name: default, plugins: [{refs}]}}]\n"
    )


def test_a_python_filter_after_it_sees_what_it_kept(make_pool):
    pool = make_pool([(i, 0, 0.0) for i in range(3)])
    engine = SchedulingEngine(_config(["spread", "seen"]))
    assert [t for _, t, _ in engine.built.profiles["default"].filters] == [
        SPREAD,
        f"python:{__name__}:_Seen",
    ]
    _hold(pool, engine, 0, "group a " * 200)
    _hold(pool, engine, 1, "group b " * 200)
    _Seen.seen.clear()
    assert engine.schedule(make_request("group c " * 200), pool).primary.id == 2
    assert _Seen.seen == [[False, False, True]]


def test_a_python_filter_before_it_sees_every_candidate(make_pool):
    pool = make_pool([(i, 0, 0.0) for i in range(3)])
    engine = SchedulingEngine(_config(["seen", "spread"]))
    profile = engine.built.profiles["default"]
    assert [t for _, t, _ in profile.filters] == [f"python:{__name__}:_Seen"]
    assert isinstance(profile.core_scorers[0][0], CoreFilter)
    _hold(pool, engine, 0, "group a " * 200)
    _hold(pool, engine, 1, "group b " * 200)
    _Seen.seen.clear()
    assert engine.schedule(make_request("group c " * 200), pool).primary.id == 2
    assert _Seen.seen == [[True, True, True]]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ("{newPrefixFraction: 1.5}", "plugins[0].parameters.newPrefixFraction"),
        ("{newPrefixFraction: -0.5}", "plugins[0].parameters.newPrefixFraction"),
        ("{tolerance: -1}", "plugins[0].parameters.tolerance"),
        ("{tolerance: .inf}", "plugins[0].parameters.tolerance"),
        ("{tolerance: '0.1'}", "plugins[0].parameters.tolerance"),
        ("{tolerence: 0.1}", "plugins[0].parameters.tolerence"),
    ],
)
def test_bad_parameters_are_a_config_error_naming_the_field(params, field):
    with pytest.raises(ConfigError) as info:
        load_config(
            text="apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
            f"plugins: [{{type: {SPREAD}, parameters: {params}}}]\n"
        )
    assert info.value.field == field, str(info.value)
    assert info.value.expected
