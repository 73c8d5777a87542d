"""OpenAI request-body parsing: prompts for prefix hashing, validation, Go-style JSON errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from igw.errors import ErrorCode, InferenceError
from igw.parsing import ParserRegistry, parse_body
from igw.parsing.gojson import marshal
from igw.pipeline import RequestKind


def _error(path: str, body: bytes, registry: ParserRegistry | None = None) -> str:
    with pytest.raises(InferenceError) as info:
        parse_body(path, body, registry)
    assert info.value.code is ErrorCode.BAD_REQUEST
    return info.value.message


def test_completions_string_prompt_gives_model_prompt_and_estimate():
    parsed = parse_body("/v1/completions", b'{"model":"m","prompt":"hello world!"}')
    assert (parsed.kind, parsed.model, parsed.prompt) == (
        RequestKind.COMPLETIONS,
        "m",
        b"hello world!",
    )
    assert parsed.prompt_tokens_estimate == 3


def test_completions_list_of_strings_is_joined_with_spaces():
    parsed = parse_body("/v1/completions", b'{"model":"m","prompt":["a","b"]}')
    assert parsed.prompt == b"a b"


def test_completions_token_ids_become_little_endian_uint32_bytes():
    parsed = parse_body("/v1/completions", b'{"model":"m","prompt":[1,2,70000]}')
    assert np.frombuffer(parsed.prompt, dtype="<u4").tolist() == [1, 2, 70000]
    assert parsed.prompt_tokens_estimate == 3


def test_completions_without_prompt_is_rejected_with_reference_message():
    assert _error("/v1/completions", b'{"model":"m"}') == (
        "invalid completions request: must have prompt field"
    )


def test_completions_with_mixed_prompt_array_is_rejected():
    assert "must have prompt field" in _error("/v1/completions", b'{"prompt":["a",1]}')


def test_chat_prompt_is_built_from_messages_in_order_including_text_parts():
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "x"}},
                    {"type": "text", "text": "here"},
                ],
            },
            {"role": "assistant", "content": None},
        ],
    }
    parsed = parse_body("/v1/chat/completions", json.dumps(body).encode())
    assert parsed.kind is RequestKind.CHAT
    assert parsed.prompt == b"system\nbe brief\nuser\nlook here\nassistant\n\n"


def test_chat_with_empty_messages_is_rejected():
    assert _error("/v1/chat/completions", b'{"model":"m","messages":[]}') == (
        "invalid chat completions request: must have valid messages field"
    )


def test_chat_with_non_text_content_type_is_rejected():
    assert "valid messages" in _error(
        "/v1/chat/completions", b'{"messages":[{"role":"user","content":5}]}'
    )


def test_embeddings_input_is_required():
    assert _error("/v1/embeddings", b'{"model":"e"}') == (
        "invalid embeddings request: must have input field"
    )
    assert parse_body("/v1/embeddings", b'{"model":"e","input":"x"}').kind is RequestKind.EMBEDDINGS


def test_responses_input_string_and_items_are_both_prompts():
    text = parse_body("/v1/responses", b'{"model":"r","input":"hi","instructions":"sys"}')
    assert text.prompt == b"instructions\nsys\nhi"
    items = parse_body(
        "/v1/responses",
        b'{"model":"r","input":[{"role":"user","content":[{"type":"input_text","text":"q"}]}]}',
    )
    assert items.prompt == b"user\nq\n"


def test_responses_without_input_is_rejected():
    assert _error("/v1/responses", b'{"model":"r"}') == (
        "invalid responses request: must have input field"
    )


def test_stream_flag_cache_salt_and_max_tokens_are_read():
    parsed = parse_body(
        "/v1/chat/completions",
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true,'
        b'"cache_salt":"s1","max_completion_tokens":7,"max_tokens":9}',
    )
    assert (parsed.stream, parsed.cache_salt, parsed.max_output_tokens) == (True, "s1", 7)


def test_invalid_json_message_matches_the_reference_text():
    assert _error("/v1/completions", b"no healthy upstream") == (
        "error unmarshaling request bodyMap: invalid character 'o' in literal null (expecting 'u')"
    )


def test_truncated_json_is_unexpected_end():
    assert _error("/v1/completions", b'{"model":"m"').endswith("unexpected end of JSON input")


def test_non_object_json_is_rejected_naming_the_type():
    assert "cannot unmarshal array" in _error("/v1/completions", b"[1,2]")


def test_invalid_utf8_is_a_bad_request_not_a_crash():
    assert "UTF-8" in _error("/v1/completions", b'{"model":"\xff"}')


def test_deeply_nested_json_is_a_bad_request_not_a_crash():
    body = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert _error("/v1/completions", body).startswith("error unmarshaling")


def test_unknown_path_uses_passthrough_by_default_and_keeps_body_untouched():
    parsed = parse_body("/v1/other", b"raw bytes")
    assert (parsed.kind, parsed.body_json, parsed.rewritable) == (
        RequestKind.PASSTHROUGH,
        None,
        False,
    )


def test_unknown_path_without_fallback_parser_is_rejected():
    registry = ParserRegistry.from_types(["openai-parser"])
    assert _error("/v2/other", b"{}", registry) == (
        "no parser registered matching path suffix for: /v2/other"
    )


def test_marshal_sorts_keys_compacts_and_html_escapes_like_go():
    assert marshal({"b": 1, "a": "<x>", "c": [1, 2]}) == b'{"a":"\\u003cx\\u003e","b":1,"c":[1,2]}'


def test_anthropic_messages_prompt_includes_system_and_text_blocks():
    body = {
        "model": "claude-like",
        "system": "be terse",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }
    parsed = parse_body("/v1/messages", json.dumps(body).encode())
    assert (parsed.parser, parsed.kind, parsed.model) == (
        "anthropic-parser",
        RequestKind.CHAT,
        "claude-like",
    )
    assert parsed.prompt == b"system\nbe terse\nuser\nhi\n"
    assert (parsed.stream, parsed.max_output_tokens) == (True, 64)


def test_anthropic_messages_without_messages_is_rejected():
    assert _error("/v1/messages", b'{"model":"m","messages":[]}') == (
        "invalid messages request: must have at least one message"
    )


def test_anthropic_count_tokens_is_forwarded_untouched_and_skips_the_response():
    parsed = parse_body("/v1/messages/count_tokens", b"{not even json")
    assert parsed.body_json is None and parsed.skip_response


def test_vllm_generate_token_ids_are_the_prompt():
    parsed = parse_body(
        "/inference/v1/generate",
        b'{"model":"m","token_ids":[5,6,7],"sampling_params":{"max_tokens":9}}',
    )
    assert parsed.parser == "vllmhttp-parser"
    assert np.frombuffer(parsed.prompt, dtype="<u4").tolist() == [5, 6, 7]
    assert parsed.max_output_tokens == 9


def test_vllm_generate_without_token_ids_is_rejected():
    assert _error("/inference/v1/generate", b'{"model":"m"}') == (
        "invalid generate request: must have non-empty token_ids field"
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m", "prompt": "hi", "n": 1e400}',  # out of float range: inf both ways
        b'{"model": "m", "prompt": "hi", "x": NaN}',  # json accepts, orjson does not
        b'{"model": "m", "prompt": "\\ud800"}',  # lone surrogate
        b'\xef\xbb\xbf{"model": "m", "prompt": "bom"}',
        '{"model": "m", "prompt": "utf16"}'.encode("utf-16"),
        b'{"model": "m", "model": "dup", "prompt": "x"}',
        b'{"model": "m", "prompt": "caf\xc3\xa9", "nested": {"a": [1, 2.5, true, null]}}',
    ],
)
def test_decode_body_gives_what_json_gives_for_edge_cases(body):
    import json

    from igw.errors import InferenceError
    from igw.parsing.openai import decode_body

    try:
        expected = json.loads(body)
    except ValueError:
        expected = None
    if expected is None or not isinstance(expected, dict):
        with pytest.raises(InferenceError):
            decode_body(body)
        return
    got = decode_body(body)
    assert repr(got) == repr(expected)  # repr: NaN != NaN, yet both must be NaN


def test_a_rewritten_body_keeps_integers_beyond_64_bits_exact():
    from igw.parsing.gojson import marshal
    from igw.parsing.openai import decode_body, exact_body_json

    body = b'{"model": "m", "prompt": "hi", "seed": 123456789012345678901234567890}'
    exact = exact_body_json(body, decode_body(body))
    exact["model"] = "other"
    assert b"123456789012345678901234567890" in marshal(exact)
