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
from collections.abc import Callable
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
_INFINITY = float("inf")

_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})

# (api, kind, body_json, model, prompt, prompt_tokens_estimate, stream, cache_salt,
#  max_output_tokens): what read_openai returns, in ParsedBody's order from ``api`` on
OpenAIFields = tuple[
    str, RequestKind, dict[str, Any], str, bytes, int, bool, str, "int | None"
]
# (api, kind, prompt builder, cache_salt message or None, output-limit fields)
OpenAIApi = tuple[
    str, RequestKind, Callable[[dict[str, Any]], tuple[bytes, int]], "str | None",
    tuple[str, ...],
]


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


# read_openai's first try: the fast decoder, or (without it) decode_body itself
_first_loads: Callable[[bytes], Any] = _fast_loads if _fast_loads is not None else decode_body


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
    api, kind, data, model, prompt, estimate, stream, salt, limit = read_openai(path, body)
    return ParsedBody(OPENAI_PARSER, api, kind, data, model, prompt, estimate, stream, salt, limit)


def read_openai(path: str, body: bytes) -> OpenAIFields:
    """What ``parse_openai`` reads, as a plain tuple (the field order of ``OpenAIFields``).

    Why a tuple: the parse stage unpacks it straight into the request, so the per-request
    path builds no ``ParsedBody`` to copy field by field: igw's added latency is about its
    CPU per request, so each call, object and copy saved counts. Each body key is read once.
    """
    try:  # the fast decoder first, inline; decode_body decides everything else (see there)
        data = _first_loads(body)
    except ValueError:
        data = None
    if data.__class__ is not dict:
        data = decode_body(body)
    api, kind, build, salt_message, limit_fields = _api_of_path(path)
    get = data.get
    salt = get("cache_salt")
    if salt.__class__ is not str:
        if salt is not None and salt_message is not None:
            raise bad_request(salt_message)
        salt = ""
    prompt, estimate = build(data)
    model = get("model")
    limit = None
    for name in limit_fields:  # the first usable one, as the reference
        value = get(name)
        cls = value.__class__  # JSON values: a bool is not a count
        if cls is int:
            if value >= 0:
                limit = value
                break
        elif cls is float and 0 <= value < _INFINITY:  # json reads 1e400 as inf: no count
            limit = int(value)
            break
    return (
        api,
        kind,
        data,
        model if model.__class__ is str else "",
        prompt,
        estimate,
        get("stream") is True,
        salt,
        limit,
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


# The 400 message of each API's prompt builder; a cache_salt that is not a string gets the
# same one (checked by read_openai before the builder runs, as the reference does).
_COMPLETIONS_MESSAGE = "invalid completions request: must have prompt field"
_EMBEDDINGS_MESSAGE = "invalid embeddings request: must have input field"
_CHAT_MESSAGE = "invalid chat completions request: must have valid messages field"
_RESPONSES_MESSAGE = "invalid responses request: must have input field"


def _completions(data: dict[str, Any]) -> tuple[bytes, int]:
    prompt = data.get("prompt")
    if prompt.__class__ is str and prompt:  # the usual case, without the general path's calls
        encoded = prompt.encode("utf-8", "surrogatepass")
        return encoded, (len(encoded) + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN
    return _string_or_array(prompt, "prompt", _COMPLETIONS_MESSAGE)


def _embeddings(data: dict[str, Any]) -> tuple[bytes, int]:
    return _string_or_array(data.get("input"), "input", _EMBEDDINGS_MESSAGE)


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
            kind, text = block.get("type"), block.get("text")
            # kind may be any JSON value: a list or an object cannot be looked up in a set
            if kind.__class__ is str and kind in _TEXT_PART_TYPES and text.__class__ is str:
                parts.append(text)
        return " ".join(parts)
    return None


def _messages_prompt(items: list[Any], message: str, *, strict: bool) -> bytes:
    # The pieces are joined once: an f-string per message would copy each (long) text once
    # more before the join.
    chunks: list[str] = []
    add = chunks.extend
    for item in items:
        if item.__class__ is not dict:
            if strict:
                raise bad_request(message)
            continue
        get = item.get
        role = get("role")
        if role is not None and role.__class__ is not str:
            if strict:
                raise bad_request(message)
            role = None
        text = get("content")
        if text.__class__ is not str:  # a plain string is its own text
            text = _content_text(text)
            if text is None:
                if strict:
                    raise bad_request(message)
                text = ""
        if not role:
            role = get("type") or ""
            if role.__class__ is not str:
                role = str(role)
        add((role, "\n", text, "\n"))
    return "".join(chunks).encode("utf-8", "surrogatepass")


def _chat(data: dict[str, Any]) -> tuple[bytes, int]:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request(_CHAT_MESSAGE)
    prompt = _messages_prompt(messages, _CHAT_MESSAGE, strict=True)
    return prompt, (len(prompt) + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN


def _responses(data: dict[str, Any]) -> tuple[bytes, int]:
    value = data.get("input")
    if value is None:
        raise bad_request(_RESPONSES_MESSAGE)
    instructions = data.get("instructions")
    head = f"instructions\n{instructions}\n" if isinstance(instructions, str) else ""
    if isinstance(value, str):
        prompt = (head + value).encode("utf-8", "surrogatepass")
    elif isinstance(value, list):
        prompt = head.encode() + _messages_prompt(value, _RESPONSES_MESSAGE, strict=False)
    else:
        raise bad_request(_RESPONSES_MESSAGE)
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


# API -> (name, kind, prompt builder, message for a non-string cache_salt or None when the
# API does not check it, the fields that may bound the output tokens: first usable wins).
_APIS: dict[str, OpenAIApi] = {
    "completions": (
        "completions", RequestKind.COMPLETIONS, _completions, _COMPLETIONS_MESSAGE,
        ("max_tokens",),
    ),
    "chat/completions": (
        "chat/completions", RequestKind.CHAT, _chat, _CHAT_MESSAGE,
        ("max_completion_tokens", "max_tokens"),
    ),
    "embeddings": ("embeddings", RequestKind.EMBEDDINGS, _embeddings, _EMBEDDINGS_MESSAGE, ()),
    "responses": (
        "responses", RequestKind.RESPONSES, _responses, _RESPONSES_MESSAGE,
        ("max_output_tokens",),
    ),
    # conversations and images have no kind of their own yet
    "conversations": ("conversations", RequestKind.CONVERSATIONS, _conversations, None, ()),
    "images/generations": ("images/generations", RequestKind.IMAGES, _images, None, ()),
}  # fmt: skip


@functools.lru_cache(maxsize=1024)  # paths repeat; clients choose them, so bounded
def _api_of_path(path: str) -> OpenAIApi:
    """Everything ``read_openai`` needs to know about ``path``'s API, in one lookup."""
    return _APIS[api_for_path(path)]
