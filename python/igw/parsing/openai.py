"""OpenAI-format request bodies: model, prompt text for prefix hashing, stream flag, cache salt.

The body is decoded exactly once (``json.loads``) and the decoded object is kept on the
request, so a later model rewrite edits it in place and re-serializes only then; an unchanged
body is forwarded as the original bytes.

The prompt handed to prefix hashing is bytes:
* completions / embeddings: the string, or the strings joined by a space (as the reference's
  ``PlainText``), or, for token-id prompts, the ids as little-endian uint32 bytes: at the
  default estimate of 4 bytes per token a hash block then covers exactly ``block_tokens`` ids;
* chat completions: every message in order as ``role\\ntext\\n``, where the text of a list
  content is its text parts joined by a space (images and audio parts contribute nothing);
* responses: ``instructions`` (when a string), then ``input`` as a string or its items as
  ``role\\ntext\\n``;
* conversations: the items as for responses; images/generations: the prompt.

Validation errors use the reference parser's messages (clients and tests match on them).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import numpy as np

from igw.errors import bad_request
from igw.parsing import gojson
from igw.parsing.paths import OPENAI_PARSER, match_suffix
from igw.pipeline import RequestKind

try:  # optional accelerator; json alone gives the same results
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads = None

BYTES_PER_TOKEN = 4  # the reference's tokenizer-free estimate

# API name -> pipeline kind (conversations and images have no kind of their own yet).
_API_KINDS = {
    "chat/completions": RequestKind.CHAT,
    "completions": RequestKind.COMPLETIONS,
    "embeddings": RequestKind.EMBEDDINGS,
    "responses": RequestKind.RESPONSES,
    "conversations": RequestKind.CONVERSATIONS,
    "images/generations": RequestKind.IMAGES,
}

_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})


@dataclasses.dataclass(slots=True)
class ParsedBody:
    """What a parser read out of a request body."""

    parser: str
    api: str  # "chat/completions", "completions", ... or "" for passthrough
    kind: RequestKind
    body_json: dict[str, Any] | None = None
    model: str = ""
    prompt: bytes = b""
    prompt_tokens_estimate: int = 0
    stream: bool = False
    cache_salt: str = ""
    max_output_tokens: int | None = None
    skip_response: bool = False  # the response phase has nothing to do (e.g. count_tokens)

    @property
    def rewritable(self) -> bool:
        """Whether the model name can be rewritten (a JSON body we decoded)."""
        return self.body_json is not None


@functools.lru_cache(maxsize=1024)  # paths repeat; clients choose them, so bounded
def api_for_path(path: str) -> str:
    """The OpenAI API a path addresses (the reference's order; default completions)."""
    for api in ("conversations", "responses"):
        if match_suffix(path, api):
            return api
    if match_suffix(path, "chat/completions") or match_suffix(path, "chat/completions/render"):
        return "chat/completions"
    if match_suffix(path, "completions") or match_suffix(path, "completions/render"):
        return "completions"
    for api in ("embeddings", "images/generations"):
        if match_suffix(path, api):
            return api
    return "completions"


def decode_body(body: bytes) -> dict[str, Any]:
    """``json.loads`` the body into an object, with the reference's error messages."""
    prefix = "error unmarshaling request bodyMap: "
    if _fast_loads is not None:
        # orjson accepts a subset of what json accepts (strict RFC 8259 UTF-8, 64-bit ints,
        # depth 1024) and decodes it to the same objects, ~4x faster on a 16 KB prompt; for
        # anything else json below decides, so results and error messages are unchanged.
        try:
            value = _fast_loads(body)
        except ValueError:
            pass
        else:
            if isinstance(value, dict):
                return value
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise bad_request(prefix + gojson.describe(exc)) from None
    except UnicodeDecodeError as exc:
        raise bad_request(prefix + f"body is not valid UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise bad_request(prefix + "exceeded max depth") from None
    if not isinstance(value, dict):
        raise bad_request(
            prefix + f"json: cannot unmarshal {gojson.go_type_name(value)} into Go value of "
            "type map[string]interface {}"
        )
    return value


def exact_body_json(body: bytes, decoded: dict[str, Any]) -> dict[str, Any]:
    """The body decoded by ``json`` itself, for re-serializing it: the fast decoder turns
    integers beyond 64 bits into floats (as Go's decoder does), which a re-encoded body must
    not show. ``decoded`` is returned when the fast decoder is not in use."""
    if _fast_loads is None:
        return decoded
    value = json.loads(body)
    return value if isinstance(value, dict) else decoded


def parse_openai(path: str, body: bytes) -> ParsedBody:
    """Parse an OpenAI-format body for ``path``; raises a 400 ``InferenceError`` when invalid."""
    data = decode_body(body)
    api = api_for_path(path)
    prompt, estimate = _PROMPT_BUILDERS[api](data)
    get = data.get
    model = get("model")
    salt = get("cache_salt")
    return ParsedBody(  # positional: the field order of ParsedBody
        OPENAI_PARSER,
        api,
        _API_KINDS[api],
        data,
        model if isinstance(model, str) else "",
        prompt,
        estimate,
        get("stream") is True,
        salt if isinstance(salt, str) else "",
        _max_output_tokens(api, data),
    )


def parse_passthrough(body: bytes) -> ParsedBody:
    """The fallback parser: nothing is read; the body goes upstream untouched."""
    return ParsedBody(parser="passthrough-parser", api="", kind=RequestKind.PASSTHROUGH)


# ------------------------------------------------------------------------ prompt builders


def _text_estimate(text: str) -> tuple[bytes, int]:
    data = text.encode("utf-8", "surrogatepass")
    return data, (len(data) + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN


def _string_or_array(value: Any, what: str, message: str) -> tuple[bytes, int]:
    """A prompt/input that may be a string, a list of strings or a list of token ids."""
    if isinstance(value, str):
        if value:
            return _text_estimate(value)
        raise bad_request(message)
    if not isinstance(value, list) or not value:
        raise bad_request(message)
    first = value[0]
    if isinstance(first, str):
        if not all(isinstance(item, str) for item in value):
            raise bad_request(message)
        return _text_estimate(" ".join(value))
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        ids = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise bad_request(message)
            if item != int(item) or not 0 <= item <= 0xFFFFFFFF:
                raise bad_request(message)
            ids.append(int(item))
        return np.asarray(ids, dtype="<u4").tobytes(), len(ids)
    raise bad_request(message)


def _check_salt(data: dict[str, Any], message: str) -> None:
    salt = data.get("cache_salt")
    if salt is not None and not isinstance(salt, str):
        raise bad_request(message)


def _completions(data: dict[str, Any]) -> tuple[bytes, int]:
    message = "invalid completions request: must have prompt field"
    _check_salt(data, message)
    prompt = data.get("prompt")
    if type(prompt) is str and prompt:  # the usual case, without the general path's calls
        encoded = prompt.encode("utf-8", "surrogatepass")
        return encoded, (len(encoded) + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN
    return _string_or_array(prompt, "prompt", message)


def _embeddings(data: dict[str, Any]) -> tuple[bytes, int]:
    message = "invalid embeddings request: must have input field"
    _check_salt(data, message)
    return _string_or_array(data.get("input"), "input", message)


def _content_text(content: Any) -> str | None:
    """Plain text of a message content: a string, or the text parts of a list; None = invalid."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if not isinstance(block, dict):
                return None
            if block.get("type") in _TEXT_PART_TYPES and isinstance(block.get("text"), str):
                parts.append(block["text"])
        return " ".join(parts)
    return None


def _messages_prompt(items: list[Any], message: str, *, strict: bool) -> bytes:
    chunks: list[str] = []
    for item in items:
        if not isinstance(item, dict):
            if strict:
                raise bad_request(message)
            continue
        role = item.get("role")
        if role is not None and not isinstance(role, str):
            if strict:
                raise bad_request(message)
            role = None
        text = _content_text(item.get("content"))
        if text is None:
            if strict:
                raise bad_request(message)
            text = ""
        chunks.append(f"{role or item.get('type') or ''}\n{text}\n")
    return "".join(chunks).encode("utf-8", "surrogatepass")


def _chat(data: dict[str, Any]) -> tuple[bytes, int]:
    message = "invalid chat completions request: must have valid messages field"
    _check_salt(data, message)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request(message)
    prompt = _messages_prompt(messages, message, strict=True)
    return prompt, (len(prompt) + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN


def _responses(data: dict[str, Any]) -> tuple[bytes, int]:
    message = "invalid responses request: must have input field"
    _check_salt(data, message)
    value = data.get("input")
    if value is None:
        raise bad_request(message)
    instructions = data.get("instructions")
    head = f"instructions\n{instructions}\n" if isinstance(instructions, str) else ""
    if isinstance(value, str):
        prompt = (head + value).encode("utf-8", "surrogatepass")
    elif isinstance(value, list):
        prompt = head.encode() + _messages_prompt(value, message, strict=False)
    else:
        raise bad_request(message)
    return prompt, (len(prompt) + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN


def _conversations(data: dict[str, Any]) -> tuple[bytes, int]:
    message = "invalid conversations request: must have items field"
    items = data.get("items")
    if not isinstance(items, list) or not items:
        raise bad_request(message)
    prompt = _messages_prompt(items, message, strict=False)
    return prompt, (len(prompt) + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN


def _images(data: dict[str, Any]) -> tuple[bytes, int]:
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise bad_request("invalid images generations request: must have prompt field")
    return _text_estimate(prompt)


_PROMPT_BUILDERS = {
    "completions": _completions,
    "chat/completions": _chat,
    "embeddings": _embeddings,
    "responses": _responses,
    "conversations": _conversations,
    "images/generations": _images,
}


_MAX_OUTPUT_FIELDS = {
    "chat/completions": ("max_completion_tokens", "max_tokens"),
    "completions": ("max_tokens",),
    "responses": ("max_output_tokens",),
}


def _max_output_tokens(api: str, data: dict[str, Any]) -> int | None:
    for name in _MAX_OUTPUT_FIELDS.get(api, ()):
        value = data.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return int(value)
    return None
