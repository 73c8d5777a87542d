"""Go-style descriptions of JSON syntax errors, and Go-style JSON writing (``marshal``).

The reference picker answers a broken body with ``error unmarshaling request bodyMap: <Go's
encoding/json error>``, and operators (and the reference's own integration tests) match on
that text. Python's decoder reports the same position with different words, so this module
rewrites the common cases into Go's wording; anything unusual falls back to Python's message,
which still names line and column.
"""

from __future__ import annotations

import json
import re

try:  # optional accelerator for marshal; json alone gives the same bytes
    from orjson import OPT_SORT_KEYS as _SORT_KEYS
    from orjson import dumps as _fast_dumps
except ImportError:  # pragma: no cover - depends on the environment
    _fast_dumps = None
    _SORT_KEYS = 0

_LITERALS = {"t": "true", "f": "false", "n": "null"}


def _fast_writer_agrees() -> tuple[bool, bool]:
    """(strings and integers, everyday floats): whether this orjson writes them as ``json``
    does. Checked once at import on probes (every ASCII character, the shortest-repr edge
    cases), so another orjson version that writes differently only loses the fast path."""
    if _fast_dumps is None:
        return False, False
    text = "".join(map(chr, range(128))) + "\u00e9\u2028\uffff\U0001f600"
    plain = [text, 0, -1, 2**63, -(2**63), 2**64 - 1, True, None, [], {}]
    floats = [0.0, -0.0, 0.1, 0.7, 1.0, -2.5, 1e-4, 1.5e-4, 0.30000000000000004,
              123.456, 1e15, 9999999999999998.0, 123456789012345.67]  # fmt: skip
    def same(value: object) -> bool:
        return _fast_dumps(value) == json.dumps(value, ensure_ascii=False).encode()
    return all(map(same, plain)), all(map(same, floats))


_WRITES_PLAIN, _WRITES_FLOATS = _fast_writer_agrees()
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _quote_char(ch: str) -> str:
    """Go's ``quoteChar``: 'x', with quotes and backslashes escaped, control bytes as \\xNN."""
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    if ch < " " or ch == "\x7f":
        return f"'\\x{ord(ch):02x}'"
    return f"'{ch}'"


def _in_literal(text: str, pos: int) -> str | None:
    """If ``text[pos]`` starts a mistyped true/false/null, describe it the way Go does."""
    literal = _LITERALS.get(text[pos]) if pos < len(text) else None
    if literal is None:
        return None
    for offset, expected in enumerate(literal):
        index = pos + offset
        if index >= len(text):
            return "unexpected end of JSON input"
        if text[index] != expected:
            return (
                f"invalid character {_quote_char(text[index])} in literal {literal} "
                f"(expecting {_quote_char(expected)})"
            )
    return None


def describe(error: json.JSONDecodeError) -> str:
    """Describe a ``JSONDecodeError`` in Go ``encoding/json`` words where the case is known."""
    text, pos = error.doc, error.pos
    if not text.strip() or pos >= len(text.rstrip()):
        return "unexpected end of JSON input"
    ch = text[pos]
    msg = error.msg
    if msg.startswith("Expecting value"):
        return _in_literal(text, pos) or (
            f"invalid character {_quote_char(ch)} looking for beginning of value"
        )
    if msg.startswith("Extra data"):
        return f"invalid character {_quote_char(ch)} after top-level value"
    if msg.startswith("Expecting property name"):
        return f"invalid character {_quote_char(ch)} looking for beginning of object key string"
    if msg.startswith("Expecting ':'"):
        return f"invalid character {_quote_char(ch)} after object key"
    if msg.startswith("Expecting ','"):
        where = "array element" if _innermost_is_array(text, pos) else "object key:value pair"
        return f"invalid character {_quote_char(ch)} after {where}"
    return f"{msg} at line {error.lineno} column {error.colno}"


def _innermost_is_array(text: str, pos: int) -> bool:
    """Whether the innermost open container before ``pos`` is an array (ignores strings)."""
    stack: list[str] = []
    in_string = escaped = False
    for ch in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append(ch)
        elif ch in "]}" and stack:
            stack.pop()
    return bool(stack) and stack[-1] == "["


def go_type_name(value: object) -> str:
    """The JSON type word Go uses in "cannot unmarshal <type> into ..."."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if value is None:
        return "null"
    return "object"


def fast_codec_exact(value: object) -> bool:
    """True when orjson's decode of ``value`` and its encoding of it match ``json``'s: every
    float in it is 0 or has 1e-4 <= |f| < 1e16 (a walk of the containers).

    Why: floats are where the two codecs differ. orjson decodes an integer beyond 64 bits
    to a float (|f| >= 2**63) and writes floats outside that range in its own notation
    (``1e-5`` as ``0.00001``); inside it both write the same shortest repr (checked on
    ~2M floats), which covers the usual temperature / top_p / penalties.
    """
    stack = [value]
    pop, push = stack.pop, stack.extend
    while stack:
        item = pop()
        cls = item.__class__
        if cls is dict:
            push(item.values())
        elif cls is list:
            push(item)
        elif cls is float and not (_WRITES_FLOATS and (1e-4 <= abs(item) < 1e16 or not item)):
            return False
    return True


def marshal(value: object, *, plain: bool | None = None) -> bytes:
    """Serialize like Go's ``json.Marshal`` of a map: keys sorted, compact, HTML-escaped.

    Used only when the body really changed (model rewrite); unchanged bodies go out as the
    original bytes. ``plain`` says whether ``fast_codec_exact(value)`` holds (None: find
    out). A plain value is written by orjson, ~40x faster than ``json`` on a 16 KB prompt
    (json escapes strings one character at a time) and byte-identical to it there: same
    escapes for every code point, keys in code-point order, same integers and floats.
    What orjson refuses (an integer beyond 64 bits, a lone surrogate, deep nesting) and
    any other value go through ``json`` as before.
    """
    if _WRITES_PLAIN and (fast_codec_exact(value) if plain is None else plain):
        try:
            data = _fast_dumps(value, option=_SORT_KEYS)
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            pass
        else:
            if b"<" in data or b">" in data or b"&" in data:
                data = data.replace(b"<", b"\\u003c").replace(b">", b"\\u003e")
                data = data.replace(b"&", b"\\u0026")
            # U+2028, U+2029 (E2 80 A8/A9): a multi-byte search costs ~11 us on 16 KB, the
            # one-byte one (memchr) ~0.25, so the two run only when an E2 byte is there
            if b"\xe2" in data and (b"\xe2\x80\xa8" in data or b"\xe2\x80\xa9" in data):
                data = data.replace(b"\xe2\x80\xa8", b"\\u2028")
                data = data.replace(b"\xe2\x80\xa9", b"\\u2029")
            return data
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if "<" in text or ">" in text or "&" in text:
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    if "\u2028" in text or "\u2029" in text:
        text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    try:
        return text.encode()
    except UnicodeEncodeError:
        # a lone surrogate (an escaped one, or invalid UTF-8 json let through): Go's decoder
        # makes each such character U+FFFD, so the rewritten body is valid UTF-8 as Go's is
        return _LONE_SURROGATE.sub("\ufffd", text).encode()
