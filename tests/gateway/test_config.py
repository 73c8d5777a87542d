"""The ``--config`` file: good files parse, bad ones name the field and the expectation."""

from __future__ import annotations

import pytest

from igw.config import ConfigError
from igw.gateway.config import load_gateway_config, parse_config

GOOD = """
pools:
  chat: {endpoints: ["http://10.0.0.1:8000", "10.0.0.2:8000"], policy: predicted-ttft}
  canary: {sim: {replicas: 1}}
models:
  chatbot: {pool: chat, priority: 10}
  chatbot-canary: {pool: canary}
rewrites:
  - model: chatbot
    targets: [{model: chatbot, weight: 90}, {model: chatbot-canary, weight: 10}]
mirror:
  - {model: chatbot, url: "http://10.0.0.9:8000/", percent: 5}
"""


def test_good_config_parses_routes_and_priorities():
    config = parse_config(GOOD)
    assert config.routes() == {"chatbot": "chat", "chatbot-canary": "canary"}
    assert config.priorities() == {"chatbot": 10}
    assert config.mirror[0].url == "http://10.0.0.9:8000"
    assert config.pools["canary"].sim.replicas == 1


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("pools: {}", "pools", "at least 1"),
        ("pools: {a: {}}", "pools.a", "endpoints"),
        ("pools: {a: {endpoints: [http://h:99999]}}", "pools.a.endpoints", "1..65535"),
        ("pools: {a: {sim: {replicas: 0}}}", "pools.a.sim.replicas", "1"),
        ("pools: {a: {endpoints: ['https://h:1']}}", "pools.a.endpoints", "https"),
        ("pools: {a: {sim: {replicas: 1}, colour: red}}", "pools.a.colour", "unknown field"),
        ("pools: {a: {sim: {replicas: 1}}}\nmodels: {m: {pool: zz}}", "", "'zz' is not a pool"),
        (
            "pools: {a: {sim: {replicas: 1}}}\nmodels: {m: {pool: a}}\n"
            "rewrites: [{model: m, targets: [{model: m, weight: 1}, {model: m}]}]",
            "rewrites.0",
            "all targets or on none",
        ),
        (
            "pools: {a: {sim: {replicas: 1}}}\nmirror: [{model: m, url: ftp://x}]",
            "mirror.0.url",
            "http://",
        ),
        ("- just\n- a list", "", "expected a mapping"),
        ("pools: {a: [", "", "not valid YAML"),
    ],
)
def test_bad_config_names_field_and_expectation(text, field, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "gw.yaml")
    message = str(info.value)
    assert message.startswith("gw.yaml")
    assert field.replace(".0", "[0]") in message or field in message
    assert expected in message


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_gateway_config(tmp_path / "absent.yaml")


def test_pools_that_name_no_policy_route_with_predicted_ttft():
    from igw.gateway.config import PoolSpec
    from igw.gateway.serve import ServeOptions, engine_config
    from igw.scheduling import named_policy

    config, source = engine_config(PoolSpec(endpoints=["http://127.0.0.1:9"]), "p", ServeOptions())
    assert source == "predicted-ttft"
    assert config == named_policy("predicted-ttft")


def test_the_command_line_policy_wins_over_the_default():
    from igw.gateway.config import PoolSpec
    from igw.gateway.serve import ServeOptions, engine_config

    _, source = engine_config(
        PoolSpec(endpoints=["http://127.0.0.1:9"]), "p", ServeOptions(policy="default")
    )
    assert source == "default"
