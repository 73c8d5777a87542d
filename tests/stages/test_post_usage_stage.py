"""The usage stage reads a whole JSON answer's usage at on_finish, however it was cut."""

from __future__ import annotations

import json

from igw.pipeline import Request
from igw.stages.account import UsageStage

BODY = json.dumps(
    {"id": "x", "choices": [{"text": "usage"}], "usage": {"prompt_tokens": 9,
     "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}}}
).encode()  # fmt: skip
JSON = {"content-type": "application/json"}


def _run(chunks: list[tuple[bytes, bool]]) -> Request:
    stage, request = UsageStage(), Request("r")
    stage.on_headers(request, 200, JSON)
    for chunk, end in chunks:
        assert stage.on_chunk(request, chunk, end) is chunk
    stage.on_finish(request)
    return request


def _counts(request: Request) -> tuple[int, int, int]:
    usage = request.usage
    return usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens


def test_a_body_in_one_chunk_gives_its_usage() -> None:
    assert _counts(_run([(BODY, True)])) == (9, 2, 4)


def test_a_body_in_several_chunks_gives_its_usage() -> None:
    parts = [(BODY[:10], False), (BODY[10:40], False), (BODY[40:], True)]
    assert _counts(_run(parts)) == (9, 2, 4)


def test_an_empty_chunk_before_the_body_changes_nothing() -> None:
    assert _counts(_run([(b"", False), (BODY, True)])) == (9, 2, 4)


def test_a_body_that_ends_with_an_empty_chunk_gives_its_usage() -> None:
    assert _counts(_run([(BODY, False), (b"", True)])) == (9, 2, 4)


def test_a_body_that_never_ended_gives_no_usage() -> None:
    assert _counts(_run([(BODY, False)])) == (0, 0, 0)


def test_a_streamed_answer_is_read_as_it_goes() -> None:
    stage, request = UsageStage(), Request("r")
    stage.on_headers(request, 200, {"content-type": "text/event-stream"})
    event = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
    stage.on_chunk(request, event, False)
    assert _counts(request) == (3, 1, 0)  # before on_finish
    stage.on_chunk(request, b"data: [DONE]\n\n", True)
    stage.on_finish(request)
    assert _counts(request) == (3, 1, 0)


def test_chunks_without_headers_are_read_as_a_whole_body() -> None:
    stage, request = UsageStage(), Request("r")
    stage.on_chunk(request, BODY, True)
    stage.on_finish(request)
    assert _counts(request) == (9, 2, 4)
