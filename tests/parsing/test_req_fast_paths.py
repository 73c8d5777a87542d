"""The completions parser's shortcut for a plain string prompt gives what the general path
gives (bytes, estimate, errors), for ASCII, multi-byte and lone-surrogate text."""

from __future__ import annotations

import json

import pytest

from igw.errors import InferenceError
from igw.parsing import parse_body
from igw.parsing.openai import BYTES_PER_TOKEN, _string_or_array


@pytest.mark.parametrize(
    "prompt",
    ["hello world!", "héllo wörld, 你好", "a" * 4097, "\ud800 lone surrogate"],
)
def test_a_string_prompt_is_parsed_as_the_general_path_does(prompt):
    body = json.dumps({"model": "m", "prompt": prompt}).encode()
    parsed = parse_body("/v1/completions", body)
    general = _string_or_array(prompt, "prompt", "unused")
    assert (parsed.prompt, parsed.prompt_tokens_estimate) == general
    expected = prompt.encode("utf-8", "surrogatepass")
    assert parsed.prompt == expected
    assert parsed.prompt_tokens_estimate == -(-len(expected) // BYTES_PER_TOKEN)


@pytest.mark.parametrize("prompt", ["", None, 3, True, {"text": "x"}])
def test_prompts_the_shortcut_does_not_take_get_the_reference_message(prompt):
    body = json.dumps({"model": "m", "prompt": prompt}).encode()
    with pytest.raises(InferenceError, match="invalid completions request: must have prompt"):
        parse_body("/v1/completions", body)


def test_a_bad_cache_salt_is_refused_before_a_good_prompt_is_read():
    body = json.dumps({"model": "m", "prompt": "p", "cache_salt": 5}).encode()
    with pytest.raises(InferenceError, match="invalid completions request: must have prompt"):
        parse_body("/v1/completions", body)


def test_every_parsed_field_is_filled_for_a_streamed_completion():
    body = json.dumps(
        {"model": "m", "prompt": "p", "stream": True, "cache_salt": "s", "max_tokens": 7}
    ).encode()
    parsed = parse_body("/v1/completions", body)
    assert (parsed.parser, parsed.api, parsed.model, parsed.stream, parsed.cache_salt) == (
        "openai-parser", "completions", "m", True, "s")  # fmt: skip
    assert (parsed.max_output_tokens, parsed.skip_response) == (7, False)
    assert parsed.body_json == json.loads(body)
