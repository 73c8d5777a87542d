"""Parser resolution by longest path suffix (REFERENCE 1.7)."""

from __future__ import annotations

import pytest

from igw.parsing import ParserRegistry, match_suffix, request_path
from igw.parsing.openai import api_for_path


def test_request_path_prefers_path_then_original_then_forwarded_and_drops_query():
    assert request_path({":path": "/v1/chat/completions?x=1", "x-original-path": "/a"}) == (
        "/v1/chat/completions"
    )
    assert request_path({"x-original-path": "/a", "x-forwarded-path": "/b"}) == "/a"
    assert request_path({"x-forwarded-path": "/b"}) == "/b"
    assert request_path({}) == "/v1/completions"


def test_match_suffix_requires_a_segment_boundary():
    assert match_suffix("/v1/chat/completions/", "completions")
    assert match_suffix("/v1/chat/completions", "/chat/completions/")
    assert not match_suffix("/v1/xcompletions", "completions")


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/v1/chat/completions", "chat/completions"),
        ("/v1/chat/completions/render", "chat/completions"),
        ("/v1/completions", "completions"),
        ("/v1/projects/p/locations/l/endpoints/openapi/chat/completions", "chat/completions"),
        ("/v1/embeddings", "embeddings"),
        ("/v1/responses", "responses"),
        ("/v1/conversations", "conversations"),
        ("/v1/images/generations", "images/generations"),
        ("/unknown", "completions"),
    ],
)
def test_api_for_path(path, api):
    assert api_for_path(path) == api


def test_registry_stops_at_fallback_parser():
    registry = ParserRegistry.from_types(["passthrough-parser", "openai-parser"])
    assert registry.resolve("/v1/completions") == "passthrough-parser"


def test_registry_rejects_unknown_parser_types_by_name():
    with pytest.raises(ValueError, match="vertexai-parser"):
        ParserRegistry.from_types(["vertexai-parser"])


def test_resolve_cache_is_bounded_and_gives_the_uncached_answer(monkeypatch) -> None:
    from igw.parsing import paths

    monkeypatch.setattr(paths, "MAX_CACHED_PATHS", 3)
    registry = paths.ParserRegistry.from_types()
    for i in range(10):
        assert registry.resolve(f"/v{i}/chat/completions") == paths.OPENAI_PARSER
        assert registry.resolve(f"/v{i}/messages") == paths.ANTHROPIC_PARSER
        assert len(registry.resolved) <= 3
    assert registry.resolve("/v1/chat/completions") == registry._resolve("/v1/chat/completions")
