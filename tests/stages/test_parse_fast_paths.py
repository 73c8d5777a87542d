"""The parse and route stages' shortcuts give what their general paths give.

* ParseStage writes the OpenAI parser's fields straight into the request (``read_openai``'s
  tuple); every other parser goes through ``ParsedBody``. Both must fill the request exactly
  as ``parse_body``'s ``ParsedBody`` says.
* ``apply_headers`` and the route stage skip their header lookups when the request names none
  of the headers they read; every such header must still be seen.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from igw.errors import InferenceError
from igw.parsing import parse_body
from igw.pipeline import Request
from igw.stages import ParseStage, RouteStage, apply_headers
from igw.stages.parse import FAIRNESS_HEADERS, OBJECTIVE_HEADERS, TEST_SELECTION_HEADER
from igw.stages.route import REWRITE_HEADERS

CASES = [
    ("/v1/completions", {"model": "m", "prompt": "hello", "max_tokens": 5, "stream": True}),
    ("/v1/completions", {"model": "m", "prompt": ["a", "b"], "cache_salt": "s", "max_tokens": 2.0}),
    ("/v1/completions", {"model": 7, "prompt": [1, 2, 3], "max_tokens": True, "stream": 1}),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                              "max_completion_tokens": -1, "max_tokens": 9}),
    ("/v1/embeddings", {"model": "m", "input": "text", "max_tokens": 3}),
    ("/v1/responses", {"model": "m", "input": "x", "instructions": "be", "max_output_tokens": 4}),
    ("/v1/conversations", {"items": [{"type": "message", "content": "c"}], "cache_salt": 5}),
    ("/v1/images/generations", {"model": "m", "prompt": "a cat", "cache_salt": "s2"}),
    ("/v1/messages", {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": 8, "stream": True}),
    ("/v1/messages/count_tokens", {"model": "m"}),
    ("/inference/v1/generate", {"model": "m", "token_ids": [1, 2],
                                "sampling_params": {"max_tokens": 3}}),
    ("/v1/other", {"model": "m"}),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body"), CASES)
def test_the_stage_fills_the_request_as_the_parsed_body_says(path, body):
    raw = json.dumps(body).encode()
    parsed = parse_body(path, raw)
    request = Request("r", path=path, body=raw)
    ParseStage().apply(request)
    got = {
        "kind": request.kind,
        "body_json": request.body_json,
        "model": request.incoming_model,
        "prompt": request.prompt,
        "prompt_tokens_estimate": request.prompt_tokens_estimate,
        "stream": request.stream,
        "cache_salt": request.cache_salt,
        "parser": request.attrs["parser"],
        "api": request.attrs["api"],
        "max_output_tokens": request.attrs.get("max_output_tokens"),
        "skip_response": request.attrs.get("skip_response", False),
    }
    want = dataclasses.asdict(parsed)
    want["kind"] = parsed.kind  # asdict keeps enums, but say what is compared
    assert got == want


def test_a_non_string_cache_salt_is_refused_where_the_api_checks_it():
    body = {"model": "m", "prompt": "p", "cache_salt": 5}
    request = Request("r", path="/v1/completions", body=json.dumps(body).encode())
    with pytest.raises(InferenceError, match="invalid completions request: must have prompt"):
        ParseStage().apply(request)


def test_a_non_string_cache_salt_is_ignored_where_the_api_does_not_check_it():
    body = {"model": "m", "items": [{"content": "c"}], "cache_salt": 5}
    request = Request("r", path="/v1/conversations", body=json.dumps(body).encode())
    ParseStage().apply(request)
    assert (request.cache_salt, request.prompt) == ("", b"\nc\n")


def _header_fields(request: Request) -> tuple:
    return (request.objective, request.priority, request.fairness_id, request.subset)


class Objectives:
    def priority(self, name: str) -> int | None:
        return {"gold": 10}.get(name)


@pytest.mark.parametrize("use_metadata", [True, False])
@pytest.mark.parametrize(
    "metadata",
    [{}, {"envoy.lb.subset_hint": {"x-gateway-destination-endpoint-subset": "1.2.3.4:80"}}],
)
def test_no_read_header_gives_what_the_general_path_gives(metadata, use_metadata):
    # an empty objective header changes nothing but sends apply_headers the general way
    results = []
    for headers in ({"host": "h"}, {"host": "h", OBJECTIVE_HEADERS[0]: ""}):
        request = Request("r", headers=headers, metadata=dict(metadata))
        request.fairness_id, request.subset = "stale", ["stale"]
        apply_headers(request, Objectives(), use_subset_metadata=use_metadata)
        results.append(_header_fields(request))
    assert results[0] == results[1]


@pytest.mark.parametrize(
    "name", [*OBJECTIVE_HEADERS, *FAIRNESS_HEADERS, TEST_SELECTION_HEADER]
)
def test_each_header_apply_headers_reads_is_seen(name):
    plain = Request("r")
    apply_headers(plain, Objectives())
    named = Request("r", headers={name: "gold"})
    apply_headers(named, Objectives())
    assert _header_fields(named) != _header_fields(plain)


@pytest.mark.parametrize("name", REWRITE_HEADERS)
def test_each_rewrite_header_is_seen_by_the_route_stage(name):
    request = Request("r", headers={name: "other"}, body=b'{"model":"m","prompt":"p"}')
    ParseStage().apply(request)
    RouteStage().apply(request)
    assert request.target_model == "other"
    assert json.loads(request.out_body)["model"] == "other"


def test_the_stage_resolves_each_path_right_while_the_path_cache_fills_and_empties(
    monkeypatch,
):
    from igw.parsing import paths

    monkeypatch.setattr(paths, "MAX_CACHED_PATHS", 2)
    stage = ParseStage()
    body = json.dumps({"model": "m", "prompt": "p", "messages": [{"content": "c"}]}).encode()
    cases = [("/v1/completions", "openai-parser"), ("/v1/messages", "anthropic-parser"),
             ("/v2/chat/completions", "openai-parser"), ("/x/y", "passthrough-parser")]  # fmt: skip
    for _ in range(3):
        for path, parser in cases:
            request = Request("r", path=path, body=body)
            stage.apply(request)
            assert request.attrs["parser"] == parser
    assert len(stage.parsers.resolved) <= 2
