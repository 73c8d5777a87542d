"""Bookkeeping left for after the request is sent (``Request.later`` / ``sent``)."""

from __future__ import annotations

import logging

import pytest

from igw.pipeline import Pipeline, Request


def test_later_runs_at_once_when_the_front_end_does_not_defer() -> None:
    calls: list[int] = []
    request = Request(request_id="r")
    request.later(calls.append, 1)
    assert calls == [1]


def test_later_waits_for_sent_then_runs_in_order_once() -> None:
    calls: list[int] = []
    request = Request(request_id="r")
    request.after_send = []
    request.later(calls.append, 1)
    request.later(calls.append, 2)
    assert calls == []
    request.sent()
    request.sent()
    assert calls == [1, 2]


def test_a_failing_deferred_call_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    def broken() -> None:
        raise RuntimeError("metrics broke")

    request = Request(request_id="r-7")
    request.after_send = []
    request.later(broken)
    request.later(calls.append, "after")
    with caplog.at_level(logging.ERROR, logger="igw.pipeline"):
        request.sent()
    assert calls == ["after"]
    assert "r-7" in caplog.text and "metrics broke" in caplog.text


def test_finish_runs_what_was_left_for_later_before_the_finish_stages() -> None:
    order: list[str] = []

    class Account:
        name = "account"

        def on_headers(self, request, status, headers) -> None:
            return None

        def on_chunk(self, request, chunk, end_of_stream) -> bytes:
            return chunk

        def on_finish(self, request) -> None:
            order.append("finish")

    request = Request(request_id="r")
    request.after_send = []
    request.later(order.append, "scheduled")  # never sent: the upstream was unreachable
    Pipeline([], [Account()]).finish(request, failed=True)
    assert order == ["scheduled", "finish"]


async def test_the_gateway_runs_what_a_refusing_stage_left_for_later() -> None:
    from igw.errors import bad_request
    from igw.gateway.app import Gateway

    calls: list[str] = []

    class PicksThenRefuses:
        name = "refuses"

        async def process(self, request: Request) -> None:
            request.later(calls.append, "pick timing")  # e.g. a failed pick's e2e record
            raise bad_request("no")

    gateway = Gateway(Pipeline([PicksThenRefuses()]), models=lambda: ["m"])
    try:
        answer = await gateway.serve(None, "/v1/completions", {}, b"{}")
    finally:
        await gateway.forwarder.close()
    assert answer.status == 400
    assert calls == ["pick timing"]
