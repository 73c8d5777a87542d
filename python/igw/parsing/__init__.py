"""Request-body parsing (OpenAI formats), response usage parsing, reverse model rewrite.

``parse_body(path, body, registry)`` is the one entry point both front ends use: it resolves
the parser by path suffix and parses the body once.
"""

from __future__ import annotations

from igw.parsing.openai import (
    OpenAIFields,
    ParsedBody,
    decode_body,
    parse_openai,
    parse_passthrough,
    read_openai,
)
from igw.parsing.others import parse_anthropic, parse_vllm_generate
from igw.parsing.paths import (
    ANTHROPIC_PARSER,
    DEFAULT_PARSERS,
    OPENAI_PARSER,
    PASSTHROUGH_PARSER,
    VLLMHTTP_PARSER,
    ParserRegistry,
    match_suffix,
    request_path,
)
from igw.parsing.rewrite import ReverseRewriter, reverse_rewriter
from igw.parsing.usage import UsageParser, usage_from_body, usage_from_mapping

__all__ = [
    "ANTHROPIC_PARSER",
    "DEFAULT_PARSERS",
    "OPENAI_PARSER",
    "PASSTHROUGH_PARSER",
    "VLLMHTTP_PARSER",
    "OpenAIFields",
    "ParsedBody",
    "ParserRegistry",
    "ReverseRewriter",
    "UsageParser",
    "decode_body",
    "match_suffix",
    "parse_anthropic",
    "parse_body",
    "parse_openai",
    "parse_passthrough",
    "parse_vllm_generate",
    "parse_with",
    "read_openai",
    "request_path",
    "reverse_rewriter",
    "usage_from_body",
    "usage_from_mapping",
]

_DEFAULT_REGISTRY = ParserRegistry.from_types(DEFAULT_PARSERS)


def parse_body(path: str, body: bytes, registry: ParserRegistry | None = None) -> ParsedBody:
    """Parse ``body`` with the parser that claims ``path``; raises a 400 ``InferenceError``."""
    return parse_with((registry or _DEFAULT_REGISTRY).resolve(path), path, body)


def parse_with(parser: str, path: str, body: bytes) -> ParsedBody:
    """Parse ``body`` with the parser type ``parser`` (what a registry resolved ``path`` to)."""
    if parser == OPENAI_PARSER:
        return parse_openai(path, body)
    if parser == ANTHROPIC_PARSER:
        return parse_anthropic(path, body)
    if parser == VLLMHTTP_PARSER:
        return parse_vllm_generate(path, body)
    return parse_passthrough(body)
