"""Core filters (new-prefix-spread-filter): the edge cases, table-driven, on both cores.

Every case has 4 endpoints and a 10-block query. ``held`` gives each endpoint a number of
unrelated blocks; ``leading`` gives it the query's first k blocks (which count as entries too);
``expected`` is ``Scheduler.filter``'s answer, and a pick with k=4 must return exactly the
expected endpoints that are also live, ready candidates.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

SPREAD = "new-prefix-spread-filter"
QUERY = np.arange(1, 11, dtype=np.uint64)
T, F = True, False

CASES = {
    "nobody holds anything: all kept": dict(expected=[T, T, T, T]),
    "only the fewest entries are kept, ties included": dict(
        held={0: 5, 1: 3, 2: 3, 3: 4}, expected=[F, T, T, F]
    ),
    "a holder of more than the fraction: passes through": dict(
        held={0: 5, 1: 3}, leading={0: 4}, expected=[T, T, T, T]
    ),
    "holding exactly the fraction is still new": dict(
        held={1: 1, 2: 2, 3: 1}, leading={0: 3}, expected=[F, T, F, T]
    ),
    "a holder outside the candidates still makes the prompt cached": dict(
        held={1: 2, 2: 1, 3: 1}, leading={0: 5}, candidates=[F, T, T, T], expected=[F, T, T, T]
    ),
    "endpoints that are not ready neither count nor get cleared": dict(
        held={1: 2, 2: 1, 3: 1}, ready=[F, T, T, T], expected=[T, F, T, T]
    ),
    "fewer than two eligible candidates: passes through": dict(
        held={0: 9}, candidates=[T, F, F, F], expected=[T, F, F, F]
    ),
    "tolerance is relative to the smallest": dict(
        held={0: 4, 1: 6, 2: 7, 3: 5}, params={"tolerance": 0.5}, expected=[T, T, F, T]
    ),
    "fraction 0: any held block makes the prompt cached": dict(
        held={1: 5}, leading={0: 1}, params={"newPrefixFraction": 0.0}, expected=[T, T, T, T]
    ),
    "fraction 1: every prompt is new": dict(
        held={1: 2, 2: 2, 3: 3},
        leading={0: 10},
        params={"newPrefixFraction": 1.0},
        expected=[F, T, T, F],
    ),
    "no prompt: passes through": dict(held={0: 5, 1: 1}, hashes=None, expected=[T, T, T, T]),
    "an empty prompt: passes through": dict(
        held={0: 5, 1: 1}, hashes=np.zeros(0, np.uint64), expected=[T, T, T, T]
    ),
}


def _setup(core, case):
    table = core.EndpointTable(8)
    index = core.PrefixIndex(8, 1000)
    for e in range(4):
        assert table.add() == e
        table.set_ready(e, case.get("ready", [T] * 4)[e])
    for e, size in case.get("held", {}).items():
        index.record(e, np.arange(1000 * (e + 1), 1000 * (e + 1) + size, dtype=np.uint64))
    for e, blocks in case.get("leading", {}).items():
        index.record(e, QUERY[:blocks])
    return table, core.Scheduler(table, index, 3)


def _candidates(case):
    given = case.get("candidates")
    return None if given is None else np.array(given, dtype=np.bool_)


@pytest.mark.parametrize("name", list(CASES))
def test_spread_filter_case(core, name):
    case = CASES[name]
    _, scheduler = _setup(core, case)
    profile = core.Profile([(SPREAD, 0.0, case.get("params", {})), ("queue-scorer", 1.0, {})])
    hashes = case.get("hashes", QUERY)
    kept = scheduler.filter(profile, hashes=hashes, candidates=_candidates(case))
    assert kept.tolist() == case["expected"]


@pytest.mark.parametrize("name", list(CASES))
def test_pick_ranks_only_what_the_filter_keeps(core, name):
    case = CASES[name]
    _, scheduler = _setup(core, case)
    profile = core.Profile([("queue-scorer", 1.0, {}), (SPREAD, 0.0, case.get("params", {}))])
    result = scheduler.pick(
        profile,
        hashes=case.get("hashes", QUERY),
        candidates=_candidates(case),
        k=4,
        reserve=False,
        record=False,
    )
    ready = case.get("ready", [T] * 4)
    given = case.get("candidates", [T] * 4)
    eligible = [e for e in range(4) if ready[e] and given[e] and case["expected"][e]]
    assert sorted(result.endpoints) == eligible


def test_filter_sees_the_index_as_the_pick_left_it(core):
    # the pick records the new prompt for its winner, so the next new prompt avoids it
    _, scheduler = _setup(core, {})
    profile = core.Profile([(SPREAD, 0.0, {}), ("queue-scorer", 1.0, {})])
    first = scheduler.pick(profile, hashes=QUERY, reserve=False).endpoints[0]
    kept = scheduler.filter(profile, hashes=QUERY + np.uint64(100))
    assert kept.tolist() == [e != first for e in range(4)]


def test_filter_returns_a_mask_as_long_as_the_candidates(core):
    _, scheduler = _setup(core, {"held": {0: 1, 1: 2, 2: 2, 3: 2}})
    candidates = np.ones(6, dtype=np.bool_)
    kept = scheduler.filter(core.Profile([(SPREAD, 0.0, {})]), hashes=QUERY, candidates=candidates)
    assert kept.tolist() == [T, F, F, F, T, T]
    assert candidates.all()  # the caller's mask is not modified


def test_filters_are_listed_apart_from_scorers(core):
    profile = core.Profile([("queue-scorer", 1.0, {}), (SPREAD, 2.0, {"tolerance": 0.1})])
    assert profile.filter_types == [SPREAD]
    assert profile.scorer_types == ["queue-scorer"]


def test_a_filter_adds_no_score_row(core):
    _, scheduler = _setup(core, {})
    result = scheduler.pick(
        core.Profile([(SPREAD, 1.0, {}), ("queue-scorer", 1.0, {})]),
        hashes=QUERY,
        with_scores=True,
    )
    assert sorted(result.scores) == ["queue-scorer", "total"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"newPrefixFraction": 1.5}, "newPrefixFraction must be within 0..1"),
        ({"newPrefixFraction": -0.1}, "newPrefixFraction must be within 0..1"),
        ({"newPrefixFraction": math.nan}, "newPrefixFraction must be finite"),
        ({"tolerance": -1.0}, "tolerance must be >= 0"),
        ({"tolerance": math.inf}, "tolerance must be finite"),
        (
            {"tolerence": 0.1},
            "unknown parameter 'tolerence'; allowed: newPrefixFraction, tolerance",
        ),
        ({"tolerance": "0.1"}, "tolerance must be a number"),
    ],
)
def test_bad_filter_params_name_the_parameter(core, params, message):
    with pytest.raises(core.Error, match=message):
        core.Profile([(SPREAD, 0.0, params)])


def test_a_filter_weight_is_checked_like_a_scorers(core):
    with pytest.raises(core.Error, match=r"scorers\[0\] \(new-prefix-spread-filter\): weight"):
        core.Profile([(SPREAD, -1.0, {})])


def test_unknown_type_lists_the_filters_too(core):
    with pytest.raises(core.Error, match="filters: new-prefix-spread-filter"):
        core.Profile([("new-prefix-spread", 0.0, {})])


def test_filter_checks_its_arguments(core):
    _, scheduler = _setup(core, {})
    profile = core.Profile([(SPREAD, 0.0, {})])
    with pytest.raises(core.Error, match="hashes"):
        scheduler.filter(profile, hashes=QUERY.astype(np.int64))
    with pytest.raises(core.Error, match="candidates"):
        scheduler.filter(profile, hashes=QUERY, candidates=np.ones(2, dtype=np.bool_))
    with pytest.raises(core.Error, match="profile"):
        scheduler.filter("profile", hashes=QUERY)
    with pytest.raises(core.Error):
        scheduler.filter(profile, prompt=b"x")
