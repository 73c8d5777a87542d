"""Which parser handles a request, chosen by the longest matching path suffix.

Mirrors the reference picker's parser registry: the path comes from ``:path``, else
``x-original-path``, else ``x-forwarded-path``, else ``/v1/completions``; the query string
is dropped; every parser claims path suffixes and the longest match wins; a parser that claims
no path is the fallback (and parsers configured after it are never reached). One deliberate
difference: a suffix must match whole path segments (``/v1/chat/completions`` matches
``completions`` and ``chat/completions``, ``/v1/xcompletions`` matches neither), where the
reference compares raw string suffixes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from igw.errors import bad_request

DEFAULT_PATH = "/v1/completions"
MAX_CACHED_PATHS = 1024  # distinct request paths whose resolution is remembered

OPENAI_PARSER = "openai-parser"
ANTHROPIC_PARSER = "anthropic-parser"
VLLMHTTP_PARSER = "vllmhttp-parser"
PASSTHROUGH_PARSER = "passthrough-parser"

# Suffixes the OpenAI parser claims (REFERENCE 1.7).
OPENAI_PATHS = (
    "chat/completions",
    "completions",
    "embeddings",
    "responses",
    "conversations",
    "chat/completions/render",
    "completions/render",
    "images/generations",
)

# Parser types igw implements and the suffixes each claims (empty = fallback).
KNOWN_PARSERS: dict[str, tuple[str, ...]] = {
    OPENAI_PARSER: OPENAI_PATHS,
    ANTHROPIC_PARSER: ("messages", "messages/count_tokens"),
    VLLMHTTP_PARSER: ("inference/v1/generate",),
    PASSTHROUGH_PARSER: (),
}
# The reference's list when the config names no parsers.
DEFAULT_PARSERS = (OPENAI_PARSER, ANTHROPIC_PARSER, VLLMHTTP_PARSER, PASSTHROUGH_PARSER)


def request_path(headers: Mapping[str, str]) -> str:
    """The request path used for parser routing (lower-cased header names, query dropped)."""
    for name in (":path", "x-original-path", "x-forwarded-path"):
        value = headers.get(name)
        if value:
            return value.split("?", 1)[0]
    return DEFAULT_PATH


def match_suffix(path: str, suffix: str) -> bool:
    """True when ``path`` ends with ``suffix`` on a segment boundary (slashes trimmed)."""
    path = path.strip().rstrip("/")
    suffix = suffix.strip().strip("/")
    if not suffix:
        return False
    return path == suffix or path.endswith("/" + suffix)


@dataclasses.dataclass(frozen=True, slots=True)
class ParserRegistry:
    """Ordered parser types; ``resolve(path)`` returns the type name that handles it."""

    entries: tuple[tuple[str, tuple[str, ...]], ...]
    fallback: str | None
    # path -> parser type, so a path's suffixes are compared once, not per request. Paths
    # come from clients: bounded, and emptied when full rather than evicting one by one.
    # Filled only by ``resolve``; the parse stage reads it first (a dict lookup, no call).
    resolved: dict[str, str] = dataclasses.field(
        default_factory=dict, compare=False, repr=False, hash=False
    )

    @classmethod
    def from_types(cls, types: Iterable[str] = DEFAULT_PARSERS) -> ParserRegistry:
        """Build from parser type names; unknown names raise ``ValueError`` naming them."""
        entries: list[tuple[str, tuple[str, ...]]] = []
        fallback: str | None = None
        seen: set[str] = set()
        for type_name in types:
            if type_name not in KNOWN_PARSERS:
                known = ", ".join(sorted(KNOWN_PARSERS))
                raise ValueError(
                    f"parser {type_name!r} is not implemented in igw; expected one of {known}"
                )
            if type_name in seen:
                continue
            seen.add(type_name)
            paths = KNOWN_PARSERS[type_name]
            if not paths:
                fallback = type_name
                break
            entries.append((type_name, tuple(p.strip().strip("/") for p in paths)))
        return cls(tuple(entries), fallback)

    def resolve(self, path: str) -> str:
        """The parser type for ``path``; 400 when nothing matches and there is no fallback."""
        found = self.resolved.get(path)
        if found is not None:
            return found
        found = self._resolve(path)
        if len(self.resolved) >= MAX_CACHED_PATHS:
            self.resolved.clear()
        self.resolved[path] = found
        return found

    def _resolve(self, path: str) -> str:
        best: str | None = None
        best_len = 0
        for type_name, suffixes in self.entries:
            for suffix in suffixes:
                if len(suffix) > best_len and match_suffix(path, suffix):
                    best, best_len = type_name, len(suffix)
        if best is not None:
            return best
        if self.fallback is not None:
            return self.fallback
        raise bad_request(f"no parser registered matching path suffix for: {path}")
