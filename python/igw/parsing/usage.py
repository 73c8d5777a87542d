"""Token usage from model-server responses: OpenAI SSE streams and whole JSON bodies.

Streams: every ``data: `` line whose payload mentions ``usage`` is decoded (``[DONE]`` and
lines without usage are skipped without decoding, which keeps a 1,000-chunk stream cheap).
Unlike the reference, a line split across two chunks is reassembled (the unfinished tail of a
chunk is carried into the next). Usage found in several events is merged, later non-zero
fields winning (Anthropic splits it across message_start / message_delta). Shapes understood:
top-level ``usage`` (chat / completions / vLLM), ``response.usage`` of a
``response.completed`` event (Responses API), ``message.usage`` (Anthropic message_start).

Non-streamed bodies are buffered up to a bound and read once at the end. Only the top-level
``usage`` object is needed, so it is looked for from the end of the body (where OpenAI, vLLM,
SGLang and Anthropic put it, at most a few short fields before the closing brace) and only it
and the fields after it are decoded; the choices and texts before it are not. See
``_tail_usage`` for why a text or prompt that contains ``"usage"`` cannot fool the search;
when the search cannot settle it, the whole body is decoded as before.
"""

from __future__ import annotations

import json
import re
from typing import Any

from igw.pipeline import Usage

try:  # optional accelerator; json alone gives the same results
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads = None

MAX_LINE_CARRY = 1 << 20  # longest partial SSE line kept between chunks
MAX_BUFFERED_BODY = 32 << 20  # larger non-streamed bodies are not decoded for usage
# orjson reads an integer literal beyond 64 bits (below -2**63 or from 2**64 on) as a float,
# where json keeps it exact: only a count at least this large can differ between the two.
_INT64_LIMIT = 1 << 63


def _to_int(value: Any) -> int:
    if type(value) is int:  # the usual case, first (bool is not int here)
        return value
    if isinstance(value, bool):
        return 0
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        try:
            return int(float(value))
        except ValueError:
            return 0
    return 0


def _count(value: Any) -> int:
    """A token count as the usage object gives it (absent or not a number: 0)."""
    if type(value) is int:  # the usual case, first (bool is not int here)
        return value
    return 0 if value is None else _to_int(value)


def usage_from_mapping(raw: Any) -> Usage | None:
    """Convert an OpenAI / Responses / Anthropic usage object; None when it is not one."""
    if type(raw) is not dict and not isinstance(raw, dict):
        return None
    # ``in`` and ``[]`` rather than ``get``: no method call per field (this runs per answer);
    # each count is taken as it is when it is an int, else through _count (None, float, str)
    prompt = raw["prompt_tokens"] if "prompt_tokens" in raw else None
    if prompt is None:
        prompt = raw["input_tokens"] if "input_tokens" in raw else None
    if type(prompt) is not int:
        prompt = _count(prompt)
    completion = raw["completion_tokens"] if "completion_tokens" in raw else None
    if completion is None:
        completion = raw["output_tokens"] if "output_tokens" in raw else None
    if type(completion) is not int:
        completion = _count(completion)
    total = raw["total_tokens"] if "total_tokens" in raw else None
    if type(total) is not int:
        total = _count(total)
    cached = 0
    for name in ("prompt_tokens_details", "input_tokens_details"):
        if name in raw:
            details = raw[name]
            if details is not None and isinstance(details, dict) and "cached_tokens" in details:
                cached = _to_int(details["cached_tokens"])
    if cached == 0 and "cache_read_input_tokens" in raw:
        cached = _count(raw["cache_read_input_tokens"])
    return Usage(prompt, completion, cached, total)


def _usage_in_event(event: Any) -> Usage | None:
    if not isinstance(event, dict):
        return None
    usage = event.get("usage")
    if usage is not None:
        return usage_from_mapping(usage)
    response = event.get("response")
    if event.get("type") == "response.completed" and isinstance(response, dict):
        return usage_from_mapping(response.get("usage"))
    message = event.get("message")
    if isinstance(message, dict) and message.get("usage") is not None:
        return usage_from_mapping(message["usage"])
    return None


def _event_usage(payload: bytes) -> Usage | None:
    """The usage in one SSE event's JSON; raises ``ValueError`` / ``RecursionError`` when
    ``json`` cannot decode it. orjson decodes first (~4x faster than json on a usage event):
    it accepts a subset of what json does, to the same values but for integers beyond 64
    bits, so its answer stands unless a count is that large."""
    if _fast_loads is not None:
        try:
            event = _fast_loads(payload)
        except ValueError:
            pass  # json accepts more (NaN, lone surrogates, ...): let it decide
        else:
            found = _usage_in_event(event)
            if found is None or not _maybe_rounded(found):
                return found
    return _usage_in_event(json.loads(payload))


def _maybe_rounded(usage: Usage) -> bool:
    low, high = -_INT64_LIMIT, _INT64_LIMIT
    return not (
        low < usage.prompt_tokens < high
        and low < usage.completion_tokens < high
        and low < usage.cached_tokens < high
        and low < usage.total_tokens < high
    )


def _decoded(data: bytes) -> Any:
    """``data`` decoded, or None when it is not JSON. orjson first (a subset of what json
    accepts, to the same values, ~4x faster); json decides what orjson refuses (NaN, lone
    surrogates, ...)."""
    if _fast_loads is not None:
        try:
            return _fast_loads(data)
        except ValueError:
            pass
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def usage_from_body(body: bytes) -> Usage | None:
    """Usage of a whole non-streamed JSON response (top-level ``usage``); None if absent."""
    if len(body) >= MIN_SEARCHED_BODY:
        found = _tail_usage(body)
        if found is not None:
            return found
    if body.rfind(b"usage") < 0:  # from the end, where usage is: ~2x faster than ``in``
        return None
    data = _decoded(body)
    if type(data) is dict:
        usage = data.get("usage")
        if usage is not None:  # the usual shape, as _usage_in_event reads it first
            return usage_from_mapping(usage)
    return _usage_in_event(data)


# Below this size decoding the whole body with orjson costs about what the search does
# (measured: even around 600-800 bytes; at 2 KB 2.4 us vs 3.8 us, at 10 KB 2.4 vs 9.6).
MIN_SEARCHED_BODY = 768
MAX_TAIL_CANDIDATES = 4  # '"usage"' matches tried from the end before decoding everything
_KEY = b'"usage"'
_KEY_COLON = re.compile(rb'"usage"[ \t\n\r]*:')  # the key and its colon (JSON whitespace)


def _tail_usage(body: bytes) -> Usage | None:
    """The top-level usage found from the end of ``body`` without decoding what comes before
    it, or None when this search cannot tell (then the whole body is decoded).

    How: for the last ``"usage":`` key, ``{"usage":`` + the rest of the body is decoded. It
    decodes as one object only if the key's value and the members after it are complete and
    the body's last ``}`` closes the object holding the key: then that object is the body's
    top-level object, and the decoded usage is the one a decode of the whole body gives (a
    later duplicate key would be in the decoded part too). A nested ``usage`` (in a choice, a
    tool call) leaves braces unbalanced, fails to decode, and the match before it is tried.

    Why a ``"usage"`` inside a text cannot fool it: in valid JSON a quote inside a string is
    escaped (preceded by an odd number of backslashes), so an unescaped ``"usage"`` opens a
    string (a closing quote cannot be followed by ``u``); followed by ``:`` it is a key. The
    part before the key is not validated: a malformed body with a well-formed top-level usage
    at its end counts that usage, where decoding the whole body counted none.
    """
    at = len(body)
    for _ in range(MAX_TAIL_CANDIDATES):
        at = body.rfind(_KEY, 0, at)
        if at <= 0:
            return None
        if body[at - 1] == 0x5C:  # a backslash: escaped unless it is itself escaped
            escapes = 1
            while at > escapes and body[at - 1 - escapes] == 0x5C:
                escapes += 1
            if escapes % 2:
                continue  # inside a string
        key = _KEY_COLON.match(body, at)
        if key is None:
            continue  # "usage" is a value here
        payload = b'{"usage":' + body[key.end() :]
        event = _decoded(payload)
        if event is None:
            continue
        usage = event.get("usage") if type(event) is dict else None
        if type(usage) is not dict:
            return None  # null or another type: the other shapes may apply, decode it all
        found = usage_from_mapping(usage)
        if found is not None and _maybe_rounded(found):
            found = usage_from_mapping(json.loads(payload)["usage"])
        return found
    return None


class UsageParser:
    """Feeds on response chunks; ``usage`` holds what was found so far (or None)."""

    __slots__ = ("_buffer", "_carry", "buffered", "streaming", "usage")

    def __init__(self, streaming: bool) -> None:
        self.streaming = streaming
        self.usage: Usage | None = None
        self._carry = b""
        self._buffer: list[bytes] = []
        self.buffered = 0  # bytes of a whole (non-streamed) body kept so far

    def _add(self, found: Usage | None) -> None:
        if found is None:
            return
        if self.usage is None:
            self.usage = found
        else:
            self.usage.merge(found)

    def feed(self, chunk: bytes, end_of_stream: bool) -> None:
        if self.streaming:
            self._feed_stream(chunk, end_of_stream)
            return
        if self.buffered <= MAX_BUFFERED_BODY and chunk:
            self._buffer.append(chunk)
            self.buffered += len(chunk)
        if end_of_stream:
            if self.buffered <= MAX_BUFFERED_BODY:
                self._add(usage_from_body(b"".join(self._buffer)))
            self._buffer = []

    def _feed_stream(self, chunk: bytes, end_of_stream: bool) -> None:
        # Every line is tried as it stands (the reference's behaviour: most chunks hold whole
        # events). A line cut by the chunk boundary is also retried joined with the start of
        # the next chunk when that start is not a new field; merging is idempotent, so a line
        # that parsed both ways counts once.
        carry = self._carry
        self._carry = b""
        if carry and chunk and not chunk.startswith((b"data:", b"event:", b"id:", b":", b"\n")):
            cut = chunk.find(b"\n")
            joined = carry + (chunk if cut < 0 else chunk[:cut])
            if cut < 0 and not end_of_stream:
                self._carry = joined if len(joined) <= MAX_LINE_CARRY else b""
                return
            self._scan(joined)
            chunk = b"" if cut < 0 else chunk[cut + 1 :]
        if not end_of_stream and chunk and not chunk.endswith(b"\n"):
            tail = chunk[chunk.rfind(b"\n") + 1 :]
            self._carry = tail if len(tail) <= MAX_LINE_CARRY else b""
        self._scan(chunk)

    def _scan(self, data: bytes) -> None:
        # Only the lines that mention usage are looked at: each is found from a match
        # (no split of the whole chunk into lines: most events of a stream carry none).
        at = data.find(b"usage")
        while at >= 0:
            start = data.rfind(b"\n", 0, at) + 1
            end = data.find(b"\n", at)
            if end < 0:
                end = len(data)
            if data.startswith(b"data:", start):
                payload = data[start + 5 : end].strip()
                if payload != b"[DONE]":
                    try:
                        found = _event_usage(payload)
                    except (ValueError, RecursionError):
                        found = None
                    self._add(found)
            at = data.find(b"usage", end)
