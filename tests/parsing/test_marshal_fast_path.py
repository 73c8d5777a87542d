"""``marshal`` writes a value without unusual floats with orjson; the bytes must be those of
the plain ``json`` statement of Go's ``json.Marshal`` (sorted keys, compact, raw UTF-8, ``<>&``
and U+2028/U+2029 escaped), and values orjson refuses or writes differently go the plain way.
The route stage's model rewrite decodes the body again only when a float in it could be an
integer beyond 64 bits that orjson turned into one."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from igw.parsing.gojson import fast_codec_exact, marshal
from igw.pipeline import Request
from igw.stages import ParseStage, RouteStage


def plain_marshal(value: object) -> bytes:
    """The rule, written with json alone."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):  # fmt: skip
        text = text.replace(char, escape)
    return text.encode()


# text that reaches every escape: HTML, U+2028/9 and their E2 80 neighbours, control bytes
texts = st.text(
    alphabet=st.one_of(
        st.sampled_from("<>&\"\\\n\t\x00\x1f\x7f\u2028\u2029\u2014\u201c\u00e9\U0001f600"),
        st.characters(codec="utf-8"),
    ),
    max_size=12,
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), texts)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(texts, values, max_size=6))
def test_a_value_without_floats_is_written_as_json_writes_it(value):
    assert marshal(value) == plain_marshal(value)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(texts, st.one_of(values, st.floats(allow_nan=False)), max_size=6))
def test_a_value_with_any_floats_is_written_as_json_writes_it(value):
    assert marshal(value) == plain_marshal(value)


def test_floats_outside_the_shared_notation_are_written_the_json_way():
    value = {"a": 1e16, "b": 1e-5, "c": [0.5], "d": -0.0}
    assert marshal(value) == b'{"a":1e+16,"b":1e-05,"c":[0.5],"d":-0.0}'


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-4, max_value=1e16, exclude_max=True))
def test_everyday_floats_are_written_by_the_fast_path_as_json_writes_them(number):
    value = {"temperature": number, "top_p": -number, "zero": 0.0}
    assert fast_codec_exact(value)
    assert marshal(value, plain=True) == plain_marshal(value)


def test_a_float_the_fast_codec_may_change_is_found_anywhere():
    assert fast_codec_exact({"a": [1, {"b": "x", "c": [None, True, 0.7, 0.0, 1e15]}]})
    assert not fast_codec_exact({"a": [1, {"b": "x", "c": [None, 2.0**63]}]})
    assert not fast_codec_exact([[[[1e-5]]]])


def test_a_rewritten_body_with_everyday_values_is_the_plain_marshal_of_it():
    body = json.dumps({"model": "m", "prompt": "a <b> & c\u2028" * 100, "max_tokens": 5,
                       "n": 2**63, "stop": ["\n"], "temperature": 0.7}).encode()  # fmt: skip
    request = Request("r", headers={"x-llm-d-model-name-rewrite": "t"}, body=body)
    ParseStage().apply(request)
    RouteStage().apply(request)
    expected = json.loads(body)
    expected["model"] = "t"
    assert request.out_body == plain_marshal(expected)


def test_a_rewritten_body_with_an_integer_beyond_64_bits_keeps_it_exact():
    body = b'{"model":"m","prompt":"p","temperature":0.7,"seed":123456789012345678901234567890}'
    request = Request("r", headers={"x-llm-d-model-name-rewrite": "t"}, body=body)
    ParseStage().apply(request)
    RouteStage().apply(request)
    assert request.out_body == (
        b'{"model":"t","prompt":"p","seed":123456789012345678901234567890,"temperature":0.7}'
    )
    assert request.body_json["seed"] == 123456789012345678901234567890


def test_an_orjson_that_writes_floats_otherwise_leaves_them_to_json(monkeypatch):
    from igw.parsing import gojson

    monkeypatch.setattr(gojson, "_WRITES_FLOATS", False)
    value = {"temperature": 0.7, "zero": 0.0, "n": 1}
    assert not fast_codec_exact(value)
    assert fast_codec_exact({"n": 1, "s": "x"})
    assert marshal(value) == plain_marshal(value)


def test_an_orjson_that_writes_strings_otherwise_is_not_used(monkeypatch):
    from igw.parsing import gojson

    def refuse(*_args, **_kwargs):
        raise AssertionError("the fast writer was used")

    monkeypatch.setattr(gojson, "_WRITES_PLAIN", False)
    monkeypatch.setattr(gojson, "_fast_dumps", refuse)
    value = {"b": "<x>", "a": [1, "\u2028"]}
    assert marshal(value) == plain_marshal(value)


def test_the_import_probe_tells_a_writer_with_other_float_or_string_forms(monkeypatch):
    import orjson

    from igw.parsing import gojson

    def exponent_floats(value, **kwargs):
        return b"1e-1" if value == 0.1 else orjson.dumps(value, **kwargs)

    def escaped_slash(value, **kwargs):
        return orjson.dumps(value, **kwargs).replace(b"/", b"\\/")

    monkeypatch.setattr(gojson, "_fast_dumps", orjson.dumps)
    assert gojson._fast_writer_agrees() == (True, True)
    monkeypatch.setattr(gojson, "_fast_dumps", exponent_floats)
    assert gojson._fast_writer_agrees() == (True, False)
    monkeypatch.setattr(gojson, "_fast_dumps", escaped_slash)
    assert gojson._fast_writer_agrees()[0] is False
