"""A response stage that says ``reads_response = False`` is left out of a relayed response's
observers (its on_headers / on_chunk are not called), while its on_finish still runs and
the all-at-once path still calls everything. The reverse model rewrite says so: a response
it does not rewrite costs it no calls."""

from __future__ import annotations

from tests.gateway.recording_stage import Recorder

from igw.pipeline import Pipeline, Request
from igw.stages.account import AccountStage, ReverseRewriteStage, UsageStage

BODY = b'{"model":"served","usage":{"prompt_tokens":3,"completion_tokens":1}}'


class FinishOnly(Recorder):
    """An observer that needs only the finish."""

    reads_response = False


class CountingRewrite(ReverseRewriteStage):
    """The reverse rewrite, counting the calls it gets."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_headers(self, request, status, headers) -> None:
        self.calls.append("headers")
        return super().on_headers(request, status, headers)

    def on_chunk(self, request, chunk, end_of_stream) -> bytes:
        self.calls.append("chunk")
        return super().on_chunk(request, chunk, end_of_stream)

    def on_finish(self, request) -> None:
        self.calls.append("finish")
        super().on_finish(request)


def _relay(pipeline: Pipeline, request: Request, body: bytes = BODY) -> bytes:
    pipeline.relay_started(request, 200, {"content-type": "application/json"})
    out = pipeline.relay_chunk(request, body, True)
    pipeline.finish(request)
    return out


def test_a_stage_that_reads_no_response_hears_only_the_finish_of_a_relayed_one():
    events: list = []
    pipeline = Pipeline([], [Recorder("a", events), FinishOnly("quiet", events)])
    _relay(pipeline, Request("r"))
    assert [e for e in events if e[0] == "quiet"] == [("quiet", "finish")]
    assert ("a", "headers", 200) in events and ("a", "chunk", BODY, True) in events


def test_a_stage_that_reads_no_response_still_sees_it_all_at_once():
    events: list = []
    pipeline = Pipeline([], [FinishOnly("quiet", events)])
    request = Request("r")
    pipeline.response_started(request, 200, {})
    pipeline.response_chunk(request, b"x", True)
    pipeline.finish(request)
    assert events == [("quiet", "headers", 200), ("quiet", "chunk", b"x", True),
                      ("quiet", "finish")]  # fmt: skip


def test_the_reverse_rewrite_gets_no_call_but_the_finish_for_a_response_it_keeps():
    rewrite = CountingRewrite()
    pipeline = Pipeline([], [UsageStage(), rewrite, AccountStage()])
    request = Request("r", incoming_model="served", target_model="served")
    assert _relay(pipeline, request) is BODY
    assert rewrite.calls == ["finish"]
    assert request.usage.prompt_tokens == 3 and request.attrs["response_bytes"] == len(BODY)


def test_the_reverse_rewrite_still_rewrites_before_the_write():
    rewrite = CountingRewrite()
    pipeline = Pipeline([], [UsageStage(), rewrite, AccountStage()])
    request = Request("r", incoming_model="asked", target_model="served")
    assert _relay(pipeline, request) == BODY.replace(b"served", b"asked")
    assert rewrite.calls == ["headers", "chunk", "finish"]
    assert request.usage.prompt_tokens == 3


def test_observers_after_a_left_out_stage_still_see_the_bytes_in_order():
    events: list = []
    rewrite = CountingRewrite()
    pipeline = Pipeline([], [Recorder("a", events), rewrite, Recorder("b", events)])
    request = Request("r")  # no model rewrite: every stage observes
    pipeline.relay_started(request, 200, {})
    pipeline.relay_chunk(request, b"one", False)
    pipeline.relay_chunk(request, b"two", True)
    pipeline.finish(request)
    assert events == [
        ("a", "headers", 200), ("b", "headers", 200),
        ("a", "chunk", b"one", False), ("b", "chunk", b"one", False),
        ("a", "chunk", b"two", True), ("b", "chunk", b"two", True),
        ("a", "finish"), ("b", "finish"),
    ]  # fmt: skip
    assert rewrite.calls == ["finish"]
