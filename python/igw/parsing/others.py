"""The reference's other request parsers: Anthropic Messages and vLLM's token-in generate API.

* ``anthropic-parser`` claims ``messages`` and ``messages/count_tokens``. A Messages body
  needs at least one message; its prompt for prefix hashing is ``system`` then every message
  as ``role\\ntext\\n`` (text blocks only, as for chat completions). ``count_tokens`` bodies
  are forwarded untouched and the response phase is skipped (nothing to account).
* ``vllmhttp-parser`` claims ``inference/v1/generate``: ``token_ids`` (non-empty) is the
  prompt, hashed as little-endian uint32 bytes like token-id completions; ``max_tokens`` sits
  under ``sampling_params``.

Messages follow the reference parsers' wording.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from igw.errors import bad_request
from igw.parsing import gojson
from igw.parsing.openai import BYTES_PER_TOKEN, ParsedBody, _content_text
from igw.parsing.paths import match_suffix
from igw.pipeline import RequestKind

ANTHROPIC_PARSER = "anthropic-parser"
VLLMHTTP_PARSER = "vllmhttp-parser"
ANTHROPIC_PATHS = ("messages", "messages/count_tokens")
VLLMHTTP_PATHS = ("inference/v1/generate",)
_INFINITY = float("inf")


def _decode(body: bytes, prefix: str) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise bad_request(prefix + gojson.describe(exc)) from None
    except (UnicodeDecodeError, RecursionError) as exc:
        raise bad_request(prefix + type(exc).__name__) from None
    if not isinstance(value, dict):
        raise bad_request(
            prefix + f"json: cannot unmarshal {gojson.go_type_name(value)} into Go value of "
            "type map[string]interface {}"
        )
    return value


def parse_anthropic(path: str, body: bytes) -> ParsedBody:
    if match_suffix(path, "messages/count_tokens"):
        parsed = ParsedBody(parser=ANTHROPIC_PARSER, api="messages/count_tokens",
                            kind=RequestKind.PASSTHROUGH)  # fmt: skip
        parsed.skip_response = True
        return parsed
    if not match_suffix(path, "messages"):
        raise bad_request(f"unsupported API endpoint: {path}")
    data = _decode(body, "error unmarshaling request body: ")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("invalid messages request: must have at least one message")
    chunks: list[str] = []
    system = _content_text(data.get("system"))
    if system:
        chunks.append(f"system\n{system}\n")
    for message in messages:
        if not isinstance(message, dict):
            raise bad_request("error parsing messages request: a message must be an object")
        text = _content_text(message.get("content"))
        if text is None:
            raise bad_request("error parsing messages request: content format not supported")
        chunks.append(f"{message.get('role') or ''}\n{text}\n")
    prompt = "".join(chunks).encode("utf-8", "surrogatepass")
    parsed = ParsedBody(
        parser=ANTHROPIC_PARSER,
        api="messages",
        kind=RequestKind.CHAT,
        body_json=data,
        prompt=prompt,
        prompt_tokens_estimate=(len(prompt) + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN,
    )
    _common(parsed, data, data)
    return parsed


def parse_vllm_generate(path: str, body: bytes) -> ParsedBody:
    if not match_suffix(path, "inference/v1/generate"):
        raise bad_request(f"unsupported path: {path}")
    data = _decode(body, "")
    ids = data.get("token_ids")
    message = "invalid generate request: must have non-empty token_ids field"
    if not isinstance(ids, list) or not ids:
        raise bad_request(message)
    if not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= 0xFFFFFFFF for i in ids
    ):
        raise bad_request("invalid generate request: token_ids must be non-negative integers")
    parsed = ParsedBody(
        parser=VLLMHTTP_PARSER,
        api="inference/v1/generate",
        kind=RequestKind.COMPLETIONS,
        body_json=data,
        prompt=np.asarray(ids, dtype="<u4").tobytes(),
        prompt_tokens_estimate=len(ids),
    )
    params = data.get("sampling_params")
    _common(parsed, data, params if isinstance(params, dict) else {})
    return parsed


def _common(parsed: ParsedBody, data: dict[str, Any], limits: dict[str, Any]) -> None:
    model = data.get("model")
    if isinstance(model, str):
        parsed.model = model
    parsed.stream = data.get("stream") is True
    salt = data.get("cache_salt")
    if isinstance(salt, str):
        parsed.cache_salt = salt
    value = limits.get("max_tokens")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < _INFINITY:
        parsed.max_output_tokens = int(value)  # (json reads 1e400 as inf: no count)
