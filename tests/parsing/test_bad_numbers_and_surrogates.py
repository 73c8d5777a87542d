"""Bodies json accepts but whose values used to crash the request path with a 500: an output
limit json reads as infinity (``1e400``, ``Infinity``), and a lone surrogate in a body whose
model is rewritten. The limit is then not a usable count (as a negative one), and the
rewritten body carries U+FFFD for the surrogate, as Go's decoder makes it. A content part whose
"type" is a list or an object is not a text part (it was looked up in a set)."""

from __future__ import annotations

import json

import pytest

from igw.parsing import parse_body
from igw.pipeline import Request
from igw.stages import ParseStage, RouteStage


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", b'{"model":"m","prompt":"p","max_tokens":1E400}'),
        ("/v1/chat/completions", b'{"model":"m","messages":[{"role":"user","content":"c"}],'
                                 b'"max_completion_tokens":Infinity,"max_tokens":-1e999}'),
        ("/v1/responses", b'{"model":"m","input":"i","max_output_tokens":1e999}'),
        ("/v1/messages", b'{"model":"m","messages":[{"role":"user","content":"c"}],'
                         b'"max_tokens":Infinity}'),
        ("/inference/v1/generate", b'{"model":"m","token_ids":[1],'
                                   b'"sampling_params":{"max_tokens":1e400}}'),
    ],
)  # fmt: skip
def test_an_infinite_output_limit_is_no_count(path, body):
    assert parse_body(path, body).max_output_tokens is None


def test_a_finite_limit_after_an_infinite_one_is_taken():
    body = b'{"model":"m","messages":[{"content":"c"}],"max_completion_tokens":1e400,'
    body += b'"max_tokens":7}'
    assert parse_body("/v1/chat/completions", body).max_output_tokens == 7


@pytest.mark.parametrize(
    "prompt", [b'"a\\ud800b"', b'"a\xed\xa0\x80b"'], ids=["escaped", "raw-bytes"]
)
def test_a_rewritten_body_with_a_lone_surrogate_carries_a_replacement_character(prompt):
    body = b'{"model":"m","prompt":' + prompt + b"}"
    request = Request("r", headers={"x-llm-d-model-name-rewrite": "t"}, body=body)
    ParseStage().apply(request)
    RouteStage().apply(request)
    assert request.out_body == '{"model":"t","prompt":"a\ufffdb"}'.encode()
    assert request.prompt == "a\ud800b".encode("utf-8", "surrogatepass")  # hashing unchanged


@pytest.mark.parametrize("kind", [["text"], {"t": 1}], ids=["list", "object"])
def test_a_content_part_whose_type_is_a_list_or_object_is_no_text_part(kind):
    items = [{"type": "text", "text": "a"}, {"type": kind, "text": "b"}]
    body = json.dumps({"items": [{"role": "user", "content": items}]}).encode()
    assert parse_body("/v1/conversations", body).prompt == b"user\na\n"
    chat = json.dumps({"model": "m", "messages": [{"role": "user", "content": items}]}).encode()
    assert parse_body("/v1/chat/completions", chat).prompt == b"user\na\n"
