"""The top-level usage of a non-streamed body is found from its end, without decoding the
whole body, and gives what decoding the whole body gives."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from igw.parsing import usage as usage_mod
from igw.parsing import usage_from_body
from igw.pipeline import Usage

USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


@pytest.fixture(autouse=True)
def _search_every_body(monkeypatch):
    """The search runs on bodies of any size here (by default only on large ones)."""
    monkeypatch.setattr(usage_mod, "MIN_SEARCHED_BODY", 0)


def _whole_body(body: bytes) -> Usage | None:
    """What the decode of the whole body says (the behaviour before the search)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return usage_mod._usage_in_event(data)


def _no_whole_decode(monkeypatch) -> None:
    """Fail the test if the body is decoded whole (only slices may be)."""

    def refuse(payload: bytes):
        raise AssertionError(f"decoded the whole body: {payload[:40]!r}")

    monkeypatch.setattr(usage_mod, "_fast_loads", None)
    monkeypatch.setattr(usage_mod, "json", SimpleNamespace(loads=_slices_only(refuse)))


def _slices_only(refuse):
    real = json.loads

    def loads(payload, *args, **kwargs):
        if isinstance(payload, bytes) and payload.startswith(b'{"id"'):
            refuse(payload)
        return real(payload, *args, **kwargs)

    return loads


def test_usage_last_is_read_without_decoding_the_body(monkeypatch) -> None:
    body = json.dumps({"id": "x", "choices": [{"text": "hi"}], "usage": USAGE}).encode()
    _no_whole_decode(monkeypatch)
    assert usage_from_body(body) == Usage(7, 3, 0, 10)


def test_fields_after_usage_are_allowed(monkeypatch) -> None:
    # vLLM's chat answer: usage, then prompt_logprobs / prompt_token_ids / kv_transfer_params
    body = json.dumps(
        {"id": "x", "choices": [], "usage": USAGE, "prompt_logprobs": None,
         "kv_transfer_params": {"a": [1, 2]}}
    ).encode()  # fmt: skip
    _no_whole_decode(monkeypatch)
    assert usage_from_body(body) == Usage(7, 3, 0, 10)


def test_a_text_holding_a_usage_object_does_not_fool_the_search() -> None:
    fake = json.dumps({"usage": {"prompt_tokens": 999, "completion_tokens": 999}})
    body = json.dumps({"id": "x", "choices": [{"text": fake}], "usage": USAGE}).encode()
    assert usage_from_body(body) == Usage(7, 3, 0, 10)
    only_text = json.dumps({"id": "x", "choices": [{"text": fake}]}).encode()
    assert usage_from_body(only_text) is None


def test_a_text_ending_the_body_with_a_usage_lookalike_is_not_taken() -> None:
    # the last '"usage"' bytes sit in a string value that ends the body
    body = b'{"id":"x","usage":{"prompt_tokens":1},"note":"\\"usage\\":{\\"prompt_tokens\\":9}}"}'
    assert usage_from_body(body) == Usage(1, 0, 0, 0)


def test_a_nested_usage_after_the_top_level_one_is_skipped() -> None:
    body = json.dumps(
        {"id": "x", "usage": USAGE, "extra": {"usage": {"prompt_tokens": 500}}}
    ).encode()
    assert usage_from_body(body) == Usage(7, 3, 0, 10)


def test_only_a_nested_usage_is_no_usage() -> None:
    body = json.dumps({"id": "x", "choices": [{"usage": USAGE}]}).encode()
    assert usage_from_body(body) is None


def test_usage_as_a_value_is_not_a_key() -> None:
    body = json.dumps({"id": "x", "usage": USAGE, "kind": "usage"}).encode()
    assert usage_from_body(body) == Usage(7, 3, 0, 10)


def test_null_usage_falls_back_to_the_other_shapes() -> None:
    body = json.dumps(
        {"id": "x", "type": "response.completed", "usage": None,
         "response": {"usage": {"input_tokens": 4, "output_tokens": 2}}}
    ).encode()  # fmt: skip
    assert usage_from_body(body) == Usage(4, 2, 0, 0)


def test_spaces_and_a_trailing_newline_are_allowed() -> None:
    body = b'{ "id": "x",\n  "usage" : {"prompt_tokens": 2, "completion_tokens": 1} \n}\n'
    assert usage_from_body(body) == Usage(2, 1, 0, 0)


def test_small_bodies_are_decoded_whole_with_the_same_result(monkeypatch) -> None:
    monkeypatch.setattr(usage_mod, "MIN_SEARCHED_BODY", 1 << 20)
    monkeypatch.setattr(usage_mod, "_tail_usage", None)  # would raise if called
    body = json.dumps({"id": "x", "usage": USAGE, "kind": "usage"}).encode()
    assert usage_from_body(body) == Usage(7, 3, 0, 10)


def test_a_cut_body_has_no_usage() -> None:
    body = json.dumps({"id": "x", "usage": USAGE}).encode()
    assert usage_from_body(body[:-1]) is None


def test_counts_beyond_64_bits_stay_exact() -> None:
    big = 2**70 + 1
    body = b'{"id":"x","usage":{"prompt_tokens":%d}}' % big
    found = usage_from_body(body)
    assert found is not None and found.prompt_tokens == big


def test_a_brace_inside_a_string_of_the_usage_object_is_handled() -> None:
    body = b'{"id":"x","usage":{"note":"}{","prompt_tokens":3}}'
    assert usage_from_body(body) == Usage(3, 0, 0, 0)


_texts = st.lists(
    st.sampled_from(['"', "\\", "{", "}", ":", ",", '"usage":', "usage", "a", " "]), max_size=8
).map("".join)
_usage_objects = st.fixed_dictionaries(
    {}, optional={"prompt_tokens": st.integers(0, 10**6), "completion_tokens": st.integers(0, 99)}
)


@settings(max_examples=300, deadline=None)
@given(
    before=st.dictionaries(st.sampled_from(["id", "usage", "text", "x"]), _texts, max_size=3),
    usage=st.one_of(st.none(), _usage_objects),
    after=st.dictionaries(st.sampled_from(["note", "usage2", "y"]), _texts, max_size=2),
    nested=st.booleans(),
    indent=st.sampled_from([None, 1]),
)
def test_the_search_agrees_with_decoding_the_whole_body(before, usage, after, nested, indent):
    document: dict = dict(before)
    document.pop("usage", None)
    if nested:
        document["choices"] = [{"usage": {"prompt_tokens": 5}, "text": "usage"}]
    if usage is not None:
        document["usage"] = usage
    document.update(after)
    body = json.dumps(document, indent=indent).encode()
    assert usage_from_body(body) == _whole_body(body)


def _mapping_by_get(raw: dict) -> Usage:
    """The field rules of usage_from_mapping written plainly with ``get`` (the reference)."""
    count = usage_mod._count
    prompt = raw.get("prompt_tokens")
    prompt = raw.get("input_tokens") if prompt is None else prompt
    completion = raw.get("completion_tokens")
    completion = raw.get("output_tokens") if completion is None else completion
    cached = 0
    for name in ("prompt_tokens_details", "input_tokens_details"):
        details = raw.get(name)
        if isinstance(details, dict) and "cached_tokens" in details:
            cached = usage_mod._to_int(details["cached_tokens"])
    if cached == 0:
        cached = count(raw.get("cache_read_input_tokens"))
    return Usage(count(prompt), count(completion), cached, count(raw.get("total_tokens")))


_counts = st.one_of(
    st.none(), st.integers(-5, 2**70), st.floats(allow_nan=False, allow_infinity=False,
    min_value=-1e6, max_value=1e6), st.sampled_from(["12", "x", True, [], {}]),
)  # fmt: skip
_names = st.sampled_from(
    ["prompt_tokens", "input_tokens", "completion_tokens", "output_tokens", "total_tokens",
     "cache_read_input_tokens", "other"]
)  # fmt: skip
_details = st.one_of(st.none(), st.dictionaries(st.just("cached_tokens"), _counts), st.just(3))


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(_names, _counts, max_size=6),
    st.dictionaries(
        st.sampled_from(["prompt_tokens_details", "input_tokens_details"]), _details, max_size=2
    ),
)
def test_usage_from_mapping_reads_every_field_as_the_plain_rules_say(counts, details):
    raw = {**counts, **details}
    assert usage_mod.usage_from_mapping(raw) == _mapping_by_get(raw)
