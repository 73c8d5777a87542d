"""A targeted scanner for the Prometheus text exposition format.

A vLLM ``/metrics`` page is 20-60 KB, mostly histogram buckets we never read, and igw may
scrape hundreds of endpoints every 50 ms. A general parser (``prometheus_client.parser``)
decodes and tokenizes every line; this module instead jumps straight to the sample lines of
the few families we need with ``bytes.find`` (a C memchr/two-way search), and parses labels
only for the lines that need them. ``bench/test_datalayer_bench.py`` reports the ratio.

What is checked: a sample line of a wanted family must have a float value and, when it has
labels, a well-formed label set; otherwise ``MetricsParseError`` names the family and the
line. Lines of families we do not need are never looked at, by design.
"""

from __future__ import annotations

import functools
import math
import re

__all__ = [
    "MetricsParseError",
    "Sample",
    "family",
    "has_labels",
    "is_finite",
    "parse_labels",
    "scan",
]

# (raw label text between the braces, or b"" when the series has no labels; value)
Sample = tuple[bytes, float]

# One label pair: name="value" where value may hold \" \\ \n escapes.
_LABEL_RE = re.compile(rb'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)', re.S)
# What may follow a wanted name on its sample line; anything else is a longer name. (A bare
# name at the end of a line or of the page is a sample with its value missing: an error.)
_DELIMITERS = frozenset({b"{", b" ", b"\t", b"\n", b"\r", b""})
_UNESCAPES = {b"\\\\": "\\", b'\\"': '"', b"\\n": "\n"}


class MetricsParseError(ValueError):
    """A wanted sample line is malformed; the message names the family and shows the line."""


def scan(page: bytes, names: frozenset[bytes] | set[bytes]) -> dict[bytes, list[Sample]]:
    """Return the samples of each wanted family name found on the page.

    ``names`` are exact metric names (``b"vllm:num_requests_waiting"``); a family absent
    from the page is absent from the result. ``NaN`` values are returned as NaN; callers
    decide whether that is acceptable.
    """
    found: dict[bytes, list[Sample]] = {}
    for name in names:
        samples = family(page, name)
        if samples:
            found[name] = samples
    return found


def family(page: bytes, name: bytes) -> list[Sample]:
    """The samples of one family (empty when absent).

    The exposition format requires a family's lines to form one group, so after the first
    sample line we read only the lines that follow it, never the rest of the page: a
    present family costs one search up to its position; only an absent one costs a full
    pass (about 7 µs for 40 KB).
    """
    if page.startswith(name):
        pos = 0
    else:
        pos = page.find(b"\n" + name)
        if pos < 0:
            return []
        pos += 1
    samples: list[Sample] = []
    width = len(name)
    size = len(page)
    while True:  # invariant: the line at ``pos`` starts with ``name``
        after = pos + width
        eol = page.find(b"\n", after)
        if eol < 0:
            eol = size
        delimiter = page[after : after + 1]
        if delimiter in _DELIMITERS:
            samples.append(_sample(name, page[after:eol]))
            pos = eol + 1
            if pos < size and page.startswith(name, pos):
                continue
            return samples  # the group ended
        if samples:
            return samples  # a longer name right after our group
        # A longer name sharing our prefix (e.g. ..._created) before our group: search on.
        pos = page.find(b"\n" + name, eol)
        if pos < 0:
            return samples
        pos += 1


def _sample(name: bytes, rest: bytes) -> Sample:
    """Parse ``{labels} value [timestamp]`` (``rest`` starts right after the name)."""
    labels = b""
    if rest[:1] == b"{":
        close = rest.rfind(b"}")  # values and timestamps never contain "}"
        if close < 0:
            raise MetricsParseError(
                f"{name.decode(errors='replace')}: unterminated label set in "
                f'{_show(name, rest)}; expected name{{label="value",...}} value'
            )
        labels = rest[1:close]
        rest = rest[close + 1 :]
    fields = rest.split()
    if not fields or len(fields) > 2:
        raise MetricsParseError(
            f"{name.decode(errors='replace')}: expected 'value [timestamp]' after the name in "
            f"{_show(name, rest)}"
        )
    try:
        value = float(fields[0])
    except ValueError:
        raise MetricsParseError(
            f"{name.decode(errors='replace')}: value {fields[0][:40]!r} is not a number in "
            f"{_show(name, rest)}"
        ) from None
    return labels, value


def _show(name: bytes, rest: bytes) -> str:
    text = (name + rest).decode(errors="replace")
    return repr(text if len(text) <= 120 else text[:117] + "...")


@functools.lru_cache(maxsize=4096)
def parse_labels(raw: bytes) -> dict[str, str]:
    """Parse the text between a sample's braces into a dict (escapes resolved).

    Cached: info gauges (cache config, LoRA state) repeat the same label text on every
    scrape, and parsing it costs ~10 µs. Callers must not mutate the returned dict.
    """
    labels: dict[str, str] = {}
    pos = 0
    size = len(raw)
    while pos < size:
        match = _LABEL_RE.match(raw, pos)
        if match is None:
            if not raw[pos:].strip(b" \t,"):
                break  # trailing comma / whitespace is allowed
            raise MetricsParseError(
                f"malformed label set {raw[:120].decode(errors='replace')!r}: expected "
                f'name="value" pairs separated by commas'
            )
        value = match.group(2)
        if b"\\" in value:
            value = re.sub(rb"\\[\\\"n]", lambda m: _UNESCAPES[m.group(0)].encode(), value)
        labels[match.group(1).decode()] = value.decode(errors="replace")
        pos = match.end()
    return labels


def has_labels(raw: bytes, wanted: tuple[tuple[str, str], ...]) -> bool:
    """True when the raw label text holds every ``(name, value)`` pair of ``wanted``.

    Fast path: a plain substring test per pair, confirmed by a full parse only on a hit (so a
    value that merely contains the text does not match).
    """
    for key, value in wanted:
        if f'{key}="{value}"'.encode() not in raw:
            return False
    labels = parse_labels(raw)
    return all(labels.get(key) == value for key, value in wanted)


def is_finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))
