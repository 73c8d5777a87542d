"""Hot-prefix detection (igw.scheduling.demand) and the per-request charge it selects."""

from __future__ import annotations

import pytest
from sched_helpers import make_request

from igw.config import load_config
from igw.scheduling import SchedulingEngine
from igw.scheduling.demand import PrefixDemand


def test_a_prefix_with_most_of_the_traffic_is_hot():
    demand = PrefixDemand(window=64)
    for i in range(200):
        demand.observe(0 if i % 2 == 0 else i)  # key 0: half the requests
    assert demand.is_hot(0, endpoints=4, factor=1.0)  # 0.5 x 4 > 1


def test_prefixes_of_uniform_traffic_are_not_hot():
    demand = PrefixDemand(window=64)
    for i in range(400):
        demand.observe(i % 16)
    assert not any(demand.is_hot(k, endpoints=4, factor=1.0) for k in range(16))


def test_share_follows_recent_traffic_not_all_history():
    demand = PrefixDemand(window=32)
    for _ in range(200):
        demand.observe(7)
    for i in range(300):
        demand.observe(1000 + i % 16)
    assert demand.observe(7) < 0.05


def test_tracked_prefixes_stay_bounded():
    demand = PrefixDemand(window=16, max_keys=100)
    for i in range(10_000):
        demand.observe(i)
    assert len(demand._counts) <= 101


@pytest.mark.parametrize(
    "field,value", [("window", 0.5), ("window", float("nan")), ("max_keys", 0)]
)
def test_bad_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        PrefixDemand(**{field: value})


def _charge_config(factor: float = 1.0):
    return load_config(
        text="apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
        "- {type: predicted-ttft-scorer, parameters: {inflightRequestTokens: 100, "
        f"hotRequestTokens: 900, hotPrefixFactor: {factor}}}}}\n"
        "- {type: prefix-cache-scorer}\n"
    )


def _charged_tokens(pool, engine, prompt: str) -> int:
    before = int(pool.table.snapshot().inflight_tokens.sum())
    decision = engine.schedule(make_request(prompt), pool)
    charged = int(pool.table.snapshot().inflight_tokens.sum()) - before - decision.uncached_tokens
    engine.observe_first_token(decision, 0.1)
    engine.release(decision)
    return charged


def test_hot_prefix_requests_get_the_hot_charge_and_others_the_base_charge(make_pool):
    pool = make_pool([(i, 0, 0.0) for i in range(4)])
    engine = SchedulingEngine(_charge_config())
    groups = [f"system prompt {g} " * 80 for g in range(16)]
    for i in range(300):  # uniform over 16 groups: none is hot
        _charged_tokens(pool, engine, groups[i % 16] + f"q{i}")
    assert _charged_tokens(pool, engine, groups[3] + "cold") == 100
    for i in range(300):  # now group 0 takes over
        _charged_tokens(pool, engine, groups[0] + f"q{i}")
    assert _charged_tokens(pool, engine, groups[0] + "hot") == 900
    assert _charged_tokens(pool, engine, groups[5] + "cold again") == 100


def test_without_a_hot_factor_every_request_gets_the_base_charge(make_pool):
    pool = make_pool([(i, 0, 0.0) for i in range(4)])
    engine = SchedulingEngine(_charge_config(0.0))
    for i in range(50):
        assert _charged_tokens(pool, engine, "one prefix " * 80 + f"q{i}") == 100


def test_negative_hot_factor_is_a_config_error():
    from igw.config import ConfigError

    with pytest.raises(ConfigError, match="hotPrefixFactor"):
        _charge_config(-1.0)
