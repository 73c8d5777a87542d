"""Response stages that only observe run after the bytes are handed to the client; stages
that may change the bytes still run before. Usage, accounting and ``finish`` stay exact."""

from __future__ import annotations

import asyncio
import json
import logging

from tests.gateway.recording_stage import Recorder

from igw.gateway.proxy import Answer, Forwarder
from igw.pipeline import Decision, Pipeline, Request, observes_only
from igw.stages.account import AccountStage, ReverseRewriteStage, UsageStage

COMPLETION = {"model": "sim-model", "prompt": "Once upon a time", "max_tokens": 4}


class Upper:
    """A stage that changes the bytes (and does not say it only observes)."""

    name = "upper"

    def __init__(self, events: list | None = None) -> None:
        self.events = events if events is not None else []

    def on_headers(self, request, status, headers) -> None:
        self.events.append((self.name, "headers", status))

    def on_chunk(self, request, chunk, end_of_stream) -> bytes:
        self.events.append((self.name, "chunk", chunk, end_of_stream))
        return chunk.upper()

    def on_finish(self, request) -> None:
        self.events.append((self.name, "finish"))


class Exploding(Recorder):
    def on_chunk(self, request, chunk, end_of_stream) -> bytes:
        raise RuntimeError("observer bug")


# ------------------------------------------------------------------------ the pipeline


def test_a_stage_is_taken_to_change_bytes_unless_it_says_it_only_observes():
    events: list = []
    assert not observes_only(Upper())
    assert not observes_only(ReverseRewriteStage())
    assert observes_only(Recorder("r", events))
    assert observes_only(UsageStage()) and observes_only(AccountStage())


def test_relay_chunk_changes_the_bytes_now_and_queues_the_observers():
    events: list = []
    pipeline = Pipeline([], [Recorder("before", events), Upper(events)])
    request = Request("r")
    pipeline.relay_started(request, 200, {})
    assert pipeline.relay_chunk(request, b"abc", True) == b"ABC"
    assert events == [("upper", "headers", 200), ("upper", "chunk", b"abc", True)]
    pipeline.observe(request)
    assert events[2:] == [("before", "headers", 200), ("before", "chunk", b"abc", True)]


def test_each_observer_sees_the_bytes_of_its_place_in_the_order():
    events: list = []
    pipeline = Pipeline([], [Recorder("before", events), Upper(), Recorder("after", events)])
    request = Request("r")
    pipeline.relay_started(request, 200, {})
    pipeline.relay_chunk(request, b"ab", False)
    pipeline.relay_chunk(request, b"cd", True)
    pipeline.observe(request)
    chunks = [(name, chunk) for name, kind, *rest in events if kind == "chunk"
              for chunk in rest[:1]]  # fmt: skip
    assert chunks == [("before", b"ab"), ("after", b"AB"), ("before", b"cd"), ("after", b"CD")]


def test_observers_are_not_run_twice():
    events: list = []
    pipeline = Pipeline([], [Recorder("obs", events)])
    request = Request("r")
    pipeline.relay_started(request, 200, {})
    pipeline.relay_chunk(request, b"x", True)
    pipeline.observe(request)
    pipeline.observe(request)
    pipeline.finish(request)
    pipeline.finish(request)
    assert [e[1] for e in events] == ["headers", "chunk", "finish"]


def test_finish_runs_what_is_still_queued_before_any_on_finish():
    events: list = []
    pipeline = Pipeline([], [Recorder("a", events), Upper(events), Recorder("b", events)])
    request = Request("r")
    pipeline.relay_started(request, 200, {})
    pipeline.relay_chunk(request, b"x", True)
    events.clear()
    pipeline.finish(request)  # the front end never called observe (e.g. the client left)
    assert events == [
        ("a", "headers", 200), ("b", "headers", 200),
        ("a", "chunk", b"x", True), ("b", "chunk", b"X", True),
        ("a", "finish"), ("upper", "finish"), ("b", "finish"),
    ]  # fmt: skip


def test_an_observer_that_raises_is_logged_and_the_rest_still_run(caplog):
    events: list = []
    pipeline = Pipeline([], [Exploding("bad", events), Recorder("good", events)])
    request = Request("r")
    pipeline.relay_started(request, 200, {})
    pipeline.relay_chunk(request, b"x", True)
    with caplog.at_level(logging.ERROR, logger="igw.pipeline"):
        pipeline.finish(request)
    assert ("good", "chunk", b"x", True) in events
    assert ("good", "finish") in events and ("bad", "finish") in events
    assert "bad failed while observing" in caplog.text


def test_a_stage_appended_after_construction_is_planned():
    events: list = []
    pipeline = Pipeline([], [Upper()])
    request = Request("r")
    pipeline.relay_started(request, 200, {})
    pipeline.relay_chunk(request, b"x", True)
    pipeline.response_stages.append(Recorder("late", events))
    request = Request("r2")
    pipeline.relay_started(request, 200, {})
    pipeline.relay_chunk(request, b"y", True)
    pipeline.finish(request)
    assert ("late", "chunk", b"Y", True) in events


class SometimesUpper(Upper):
    """Changes the bytes only for requests whose id says so, and tells the pipeline."""

    def changes_bytes(self, request) -> bool:
        return request.request_id == "change"


def test_a_stage_that_leaves_this_response_alone_runs_after_the_write():
    events: list = []
    pipeline = Pipeline([], [Recorder("a", events), SometimesUpper(events)])
    request = Request("keep")
    pipeline.relay_started(request, 200, {})
    assert pipeline.relay_chunk(request, b"x", True) == b"x"
    assert events == []  # nothing ran before the write
    pipeline.observe(request)
    assert events == [("a", "headers", 200), ("upper", "headers", 200),
                      ("a", "chunk", b"x", True), ("upper", "chunk", b"x", True)]  # fmt: skip


def test_a_stage_that_will_change_this_response_still_runs_before_the_write():
    events: list = []
    pipeline = Pipeline([], [Recorder("a", events), SometimesUpper(events)])
    request = Request("change")
    pipeline.relay_started(request, 200, {})
    assert pipeline.relay_chunk(request, b"x", True) == b"X"
    assert ("upper", "chunk", b"x", True) in events and ("a", "headers", 200) not in events


def test_the_reverse_rewrite_runs_before_the_write_only_when_the_model_was_rewritten():
    chunk = b'{"model":"served","usage":{"prompt_tokens":3}}'
    stages = [UsageStage(), ReverseRewriteStage(), AccountStage()]
    rewritten = Request("r1", incoming_model="asked", target_model="served")
    pipeline = Pipeline([], stages)
    pipeline.relay_started(rewritten, 200, {"content-type": "application/json"})
    assert pipeline.relay_chunk(rewritten, chunk, True) == chunk.replace(b"served", b"asked")
    same = Request("r2", incoming_model="served", target_model="served")
    pipeline.relay_started(same, 200, {"content-type": "application/json"})
    assert pipeline.relay_chunk(same, chunk, True) is chunk
    for request in (rewritten, same):
        pipeline.finish(request)
        assert request.usage.prompt_tokens == 3 and request.attrs["response_bytes"] > 0


def test_usage_observed_after_the_write_is_counted_at_finish():
    request = Request("r")
    usage = UsageStage()
    pipeline = Pipeline([], [usage, ReverseRewriteStage(), AccountStage()])
    pipeline.relay_started(request, 200, {"content-type": "text/event-stream"})
    first, second = b'data: {"usage":{"prompt_tokens":9,', b'"completion_tokens":2}}\n\n'
    out = pipeline.relay_chunk(request, first, False)
    assert out == first and request.usage.prompt_tokens == 0  # not observed yet
    pipeline.observe(request)
    pipeline.relay_chunk(request, second + b"data: [DONE]\n\n", False)
    pipeline.relay_chunk(request, b"", True)
    pipeline.finish(request)
    assert (request.usage.prompt_tokens, request.usage.completion_tokens) == (9, 2)
    assert request.attrs["response_bytes"] == len(first + second) + len(b"data: [DONE]\n\n")


def test_first_token_time_is_when_the_bytes_came_not_when_observed():
    class Engine:
        def __init__(self) -> None:
            self.ttfts: list[float] = []

        def observe_first_token(self, decision, ttft) -> None:
            self.ttfts.append(ttft)

        def release(self, decision) -> None:
            decision.reserved = False

    engine = Engine()
    request = Request("r", received_at=100.0)
    request.decision = Decision(pool=None, endpoints=[])  # type: ignore[arg-type]
    pipeline = Pipeline([], [AccountStage(engine)])
    pipeline.relay_started(request, 200, {})
    pipeline.relay_chunk(request, b"x", False)
    request.first_byte_at = 100.25  # stamped on arrival (pinned here for the check)
    pipeline.observe(request)
    assert engine.ttfts == [0.25]


# ----------------------------------------------------------------- the forwarder, in order


class _FakeUpstream:
    """An upstream response whose chunks are already in hand."""

    def __init__(self, chunks: list[bytes], content_type: str) -> None:
        self.status = 200
        self.headers = {"content-type": content_type}
        self.loop = asyncio.get_running_loop()
        self._chunks = list(chunks)
        self.released = False

    @property
    def complete(self) -> bool:
        return not self._chunks

    @property
    def has_data(self) -> bool:
        return bool(self._chunks)

    def chunk_now(self) -> bytes | None:
        return None  # as if nothing were buffered: the forwarder awaits readany()

    async def readany(self) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""

    def whole_body(self) -> bytes | None:
        return None  # as if still arriving: the forwarder awaits read()

    async def read(self) -> bytes:
        data, self._chunks = b"".join(self._chunks), []
        return data

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        pass


class _FakePool:
    def __init__(self, upstream: _FakeUpstream) -> None:
        self.upstream = upstream

    async def post(self, host, port, path, headers, body, early=None, sent=None):
        if sent is not None:
            sent()
        return self.upstream

    async def close(self) -> None:
        pass


class _Stream:
    def __init__(self, events: list) -> None:
        self.events = events

    async def prepare(self, _request) -> None:
        pass

    async def write(self, data: bytes) -> None:
        self.events.append(("client", "write", data))

    async def write_eof(self, data: bytes = b"") -> None:
        self.events.append(("client", "eof", data))


class _HttpRequest:
    path_qs = "/v1/completions"

    def __init__(self, events: list) -> None:
        self.events = events

    def stream_response(self, status, headers, *, defer_head):
        return _Stream(self.events)


def _forwarder(stages: list, upstream: _FakeUpstream) -> Forwarder:
    forwarder = Forwarder(Pipeline([], stages))
    forwarder.upstream = _FakePool(upstream)  # type: ignore[assignment]
    return forwarder


def _scheduled() -> Request:
    from igw import datastore

    pool = datastore.Pool("p")
    endpoint = pool.upsert("127.0.0.1:9")
    return Request("r", decision=Decision(pool=pool, endpoints=[endpoint], reserved=False))


async def test_a_streamed_chunk_is_observed_only_after_it_was_written():
    events: list = []
    upstream = _FakeUpstream([b"data: a\n\n", b"data: b\n\n"], "text/event-stream")
    forwarder = _forwarder([Upper(), Recorder("obs", events)], upstream)
    request = _scheduled()
    await forwarder.forward(_HttpRequest(events), request)
    await asyncio.sleep(0)  # finish runs right after
    order = [(who, kind) for who, kind, *_ in events]
    assert order.index(("client", "write")) < order.index(("obs", "chunk"))
    assert ("client", "write", b"DATA: A\n\n") in events  # changed before it was sent
    assert ("obs", "chunk", b"DATA: B\n\n", False) in events  # the last one: at finish
    assert order[-1] == ("obs", "finish") and upstream.released


async def test_a_whole_answer_is_observed_after_forward_returns_it():
    events: list = []
    upstream = _FakeUpstream([b'{"text":"hello"}'], "application/json")
    forwarder = _forwarder([Upper(), Recorder("obs", events)], upstream)
    answer = await forwarder.forward(_HttpRequest(events), _scheduled())
    assert isinstance(answer, Answer) and answer.body == b'{"TEXT":"HELLO"}'
    assert not [e for e in events if e[0] == "obs"]  # nothing observed before the write
    await asyncio.sleep(0)
    assert [e[1] for e in events if e[0] == "obs"] == ["headers", "chunk", "finish"]


# ------------------------------------------------------------------- through the gateway


async def test_observers_after_the_write_still_count_usage_end_to_end(
    replicas, make_gateway, client
):
    events: list = []
    gw = await make_gateway(replicas[:1])
    pipeline = gw.gateway.pipeline
    pipeline.response_stages.insert(-1, Recorder("obs", events))
    async with client.post(gw.url + "/v1/completions", json=COMPLETION) as response:
        body = await response.read()
    await asyncio.sleep(0.05)
    seen = b"".join(e[2] for e in events if e[1] == "chunk")
    assert seen == body and json.loads(body)["usage"]["prompt_tokens"] == 5
    assert events[-1] == ("obs", "finish") and gw.engine.released == 1


async def test_a_byte_changing_stage_changes_what_the_client_gets(replicas, make_gateway, client):
    gw = await make_gateway(replicas[:1])
    gw.gateway.pipeline.response_stages.insert(-1, Upper())
    async with client.post(gw.url + "/v1/completions", json=COMPLETION) as response:
        body = await response.read()
        assert int(response.headers["content-length"]) == len(body)
    assert b'"HELLO"' in body
    async with client.post(gw.url + "/v1/completions", json={**COMPLETION, "stream": True}) as r:
        text = await r.read()
    assert b'"T0"' in text and b"[DONE]" in text
    assert gw.engine.released == 2
