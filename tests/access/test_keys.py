"""Where a request's API key is read from, and how keys are stored and compared."""

from __future__ import annotations

import hashlib

import pytest

import igw.access.keys as keys_module
from igw.access.keys import KeyRing, MalformedKey, extract_key


def test_bearer_token_is_read_from_authorization():
    assert extract_key({"authorization": "Bearer sk-a-1"}) == "sk-a-1"


def test_bearer_scheme_is_case_insensitive_and_whitespace_is_trimmed():
    assert extract_key({"authorization": "  bearer   sk-a-1 "}) == "sk-a-1"


def test_x_api_key_is_accepted():
    assert extract_key({"x-api-key": "sk-b-2"}) == "sk-b-2"


def test_configured_header_wins_over_x_api_key():
    headers = {"authorization": "Bearer first", "x-api-key": "second"}
    assert extract_key(headers) == "first"


def test_custom_header_holds_the_key_itself():
    assert extract_key({"x-igw-key": "sk-c"}, "x-igw-key") == "sk-c"
    assert extract_key({"x-igw-key": "Bearer sk-c"}, "x-igw-key") == "sk-c"


def test_no_key_header_means_no_key():
    assert extract_key({"content-type": "application/json"}) is None


@pytest.mark.parametrize("value", ["Basic dXNlcjpwYXNz", "Bearer ", "sk-a-1"])
def test_authorization_without_a_bearer_key_is_malformed(value):
    with pytest.raises(MalformedKey):
        extract_key({"authorization": value})


def test_key_ring_finds_the_tenant_of_a_key():
    ring = KeyRing([("sk-a-1", "team-a"), ("sk-b-1", "team-b")])
    assert ring.tenant_of("sk-a-1") == "team-a"
    assert ring.tenant_of("sk-b-1") == "team-b"
    assert ring.tenant_of("sk-a-2") is None


def test_key_ring_keeps_only_digests():
    ring = KeyRing([("sk-secret-value", "team-a")])
    stored = repr(vars(ring))
    assert "sk-secret-value" not in stored
    assert hashlib.sha256(b"sk-secret-value").digest() in ring._entries


def test_key_ring_refuses_one_key_for_two_tenants():
    ring = KeyRing([("sk-shared", "team-a")])
    with pytest.raises(ValueError, match="team-a"):
        ring.add("sk-shared", "team-b")


def test_key_match_is_confirmed_with_a_constant_time_compare(monkeypatch):
    calls = []

    def spy(a, b):
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(keys_module.hmac, "compare_digest", spy)
    ring = KeyRing([("sk-a-1", "team-a")])
    assert ring.tenant_of("sk-a-1") == "team-a"
    digest = hashlib.sha256(b"sk-a-1").digest()
    assert calls == [(digest, digest)]
