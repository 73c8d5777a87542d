"""The access: section of igw serve's config: errors name the field, keys never leak."""

from __future__ import annotations

import pytest

from igw.access import build_access
from igw.config import ConfigError
from igw.gateway.config import parse_config

POOL = "pools: {p: {endpoints: ['http://127.0.0.1:9']}}\n"


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(POOL + text, "gw.yaml")
    return info.value


def test_access_section_is_parsed():
    config = parse_config(
        POOL
        + "access:\n  tenants:\n    team-a: {keys: [sk-a-1], requestsPerMinute: 600, "
        "tokensPerMinute: 200000, tokensPerDay: 5000000, models: ['llama-*'], priority: 2}\n"
    )
    tenant = config.access.tenants["team-a"]
    assert tenant.requests_per_minute == 600 and tenant.tokens_per_day == 5_000_000
    assert tenant.models == ["llama-*"] and tenant.priority == 2
    assert config.access.anonymous == "deny" and config.access.header == "authorization"


def test_no_access_section_means_no_access_control():
    assert parse_config(POOL).access is None


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("access: {tenants: {a: {keys: [k1], requestsPerMinute: 0}}}",
         "access.tenants.a.requestsPerMinute"),
        ("access: {tenants: {a: {keys: [k1], tokensPerDay: -5}}}", "access.tenants.a.tokensPerDay"),
        ("access: {tenants: {a: {keys: [k1], rpm: 5}}}", "access.tenants.a.rpm"),
        ("access: {anonymous: sometimes, tenants: {a: {keys: [k1]}}}", "access.anonymous"),
        ("access: {tenants: {a: {keysFrom: {env: 'not a name'}}}}",
         "access.tenants.a.keysFrom.env"),
        ("access: {tenants: {a: {keys: [k1], burst: 5}}}", "access.tenants.a"),
    ],
)  # fmt: skip
def test_config_errors_name_the_field(text, field):
    assert error_of(text).field == field


def test_tenant_without_keys_is_an_error_naming_it():
    err = error_of("access: {tenants: {team-a: {requestsPerMinute: 5}}}")
    assert "tenants.team-a" in str(err) and "keys" in str(err)


def test_one_key_for_two_tenants_is_an_error():
    err = error_of("access: {tenants: {a: {keys: [k-shared]}, b: {keys: [k-shared]}}}")
    assert "tenants.b.keys[0]" in str(err)


def test_config_errors_do_not_echo_keys():
    err = error_of("access: {tenants: {a: {keys: sk-live-secret}}}")
    assert err.field == "access.tenants.a.keys"
    assert "sk-live-secret" not in str(err)


def test_build_access_errors_do_not_echo_keys():
    with pytest.raises(ConfigError) as info:
        build_access({"tenants": {"a": {"keys": "sk-live-secret"}}}, source="gw.yaml")
    assert info.value.field == "access.tenants.a.keys"
    assert "sk-live-secret" not in str(info.value)


def test_keys_are_read_from_the_environment():
    spec = {"tenants": {"team-a": {"keysFrom": {"env": "TEAM_A_KEYS"}}}}
    access = build_access(spec, environ={"TEAM_A_KEYS": " sk-1 , sk-2,, "})
    ring = access.checks[0].key_ring
    assert ring.tenant_of("sk-1") == ring.tenant_of("sk-2") == "team-a"
    assert len(ring) == 2


def test_unset_key_variable_is_a_config_error_naming_it():
    spec = {"tenants": {"team-a": {"keysFrom": {"env": "TEAM_A_KEYS"}}}}
    with pytest.raises(ConfigError) as info:
        build_access(spec, source="gw.yaml", environ={})
    assert info.value.field == "access.tenants.team-a.keysFrom.env"
    assert "TEAM_A_KEYS" in str(info.value)


def test_empty_key_variable_is_a_config_error():
    spec = {"tenants": {"team-a": {"keysFrom": {"env": "TEAM_A_KEYS"}}}}
    with pytest.raises(ConfigError, match="holds no key"):
        build_access(spec, environ={"TEAM_A_KEYS": " , "})


def test_env_key_already_given_to_another_tenant_is_a_config_error():
    spec = {"tenants": {"a": {"keys": ["sk-1"]}, "b": {"keysFrom": {"env": "B_KEYS"}}}}
    with pytest.raises(ConfigError) as info:
        build_access(spec, environ={"B_KEYS": "sk-1"})
    assert info.value.field == "access.tenants.b"
    assert "sk-1" not in str(info.value)


def test_nobody_admitted_is_a_config_error():
    assert error_of("access: {anonymous: deny}").field == "access"


def test_guard_section_is_kept_as_a_mapping():
    config = parse_config(POOL + "guard: {anything: [1, 2]}\n")
    assert config.guard == {"anything": [1, 2]}
