"""The moderation check against a local fake of ``/v1/moderations`` (127.0.0.1, free port)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from aiohttp import web

from igw.errors import ErrorCode, InferenceError
from igw.guard import build_guard
from igw.guard.moderation import ModerationUnavailable, flagged_categories

from .conftest import chat, parsed_request


class FakeModeration:
    """Answers with ``self.answer`` (or ``self.status``), optionally after a stall."""

    def __init__(self) -> None:
        self.answer: object = {"results": [{"flagged": False, "categories": {}}]}
        self.status = 200
        self.stall = False
        self.seen: list[dict] = []
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(await request.json())
        if self.stall:
            await self.release.wait()
        if self.status != 200:
            return web.Response(status=self.status, text="down for maintenance")
        return web.json_response(self.answer)


@pytest.fixture
async def fake():
    service = FakeModeration()
    app = web.Application()
    app.router.add_post("/v1/moderations", service.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    service.url = f"http://127.0.0.1:{port}/v1/moderations"
    try:
        yield service
    finally:
        service.release.set()
        await runner.cleanup()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1/moderations"


async def check(moderation: dict, text: str = "hello", **prompt) -> None:
    setup = build_guard({"prompt": {"moderation": moderation, **prompt}})
    request = parsed_request(chat(text))
    for item in setup.checks:
        await item.check(request)


def flagged(*names: str) -> dict:
    return {"results": [{"flagged": True, "categories": dict.fromkeys(names, True)}]}


async def test_flagged_configured_category_blocks_with_400(fake):
    fake.answer = flagged("violence")
    with pytest.raises(InferenceError) as info:
        await check({"url": fake.url, "categories": ["violence", "self-harm"]}, "a threat")
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert info.value.message == "request blocked by content policy: moderation.violence"
    assert fake.seen == [{"input": ["a threat"]}]


async def test_flagged_other_category_is_allowed(fake):
    fake.answer = flagged("harassment")
    await check({"url": fake.url, "categories": ["violence"]})
    assert len(fake.seen) == 1


async def test_without_categories_any_flag_blocks(fake):
    fake.answer = flagged("harassment")
    with pytest.raises(InferenceError) as info:
        await check({"url": fake.url})
    assert info.value.message.endswith("moderation.harassment")


async def test_unflagged_prompt_is_allowed_and_model_is_sent(fake):
    await check({"url": fake.url, "model": "omni-moderation-latest"})
    assert fake.seen == [{"input": ["hello"], "model": "omni-moderation-latest"}]


async def test_service_sees_the_redacted_prompt(fake):
    await check({"url": fake.url}, "mail a@b.io", pii={"emails": "redact"})
    assert fake.seen == [{"input": ["mail [REDACTED:EMAIL]"]}]


async def test_prompt_blocked_locally_never_reaches_the_service(fake):
    with pytest.raises(InferenceError):
        await check({"url": fake.url}, "DAN mode", deny=[{"name": "d", "pattern": "DAN"}])
    assert fake.seen == []


async def test_service_down_fail_open_allows():
    await check({"url": closed_port_url(), "failMode": "open"})


async def test_service_down_fail_closed_answers_503():
    with pytest.raises(InferenceError) as info:
        await check({"url": closed_port_url(), "failMode": "closed"})
    assert info.value.code is ErrorCode.SERVICE_UNAVAILABLE
    assert info.value.http_status == 503


async def test_error_status_counts_as_down(fake):
    fake.status = 500
    with pytest.raises(InferenceError) as info:
        await check({"url": fake.url, "failMode": "closed"})
    assert info.value.http_status == 503
    await check({"url": fake.url, "failMode": "open"})


async def test_slow_service_is_cut_at_the_timeout_without_blocking_the_loop(fake):
    fake.stall = True
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    try:
        with pytest.raises(InferenceError) as info:
            await check({"url": fake.url, "timeout": "200ms", "failMode": "closed"})
    finally:
        task.cancel()
    elapsed = time.monotonic() - started
    assert info.value.http_status == 503
    assert 0.15 < elapsed < 1.5
    assert ticks >= 5  # the event loop kept running while the guard waited


@pytest.mark.parametrize(
    "answer", [[], {"results": "x"}, {"results": [1]}, {"results": [{"categories": []}]}]
)
def test_malformed_answers_are_unavailable(answer):
    with pytest.raises(ModerationUnavailable):
        flagged_categories(answer, [])


async def test_non_json_answer_counts_as_down(fake):
    fake.answer = "not an object"
    with pytest.raises(InferenceError) as info:
        await check({"url": fake.url, "failMode": "closed"})
    assert info.value.http_status == 503


async def test_service_gets_system_then_messages_in_document_order(fake):
    setup = build_guard({"prompt": {"moderation": {"url": fake.url}}})
    body = {"model": "m", "system": "sys", "messages": [
        {"role": "user", "content": "one"}, {"role": "user", "content": "two"}]}  # fmt: skip
    await setup.checks[0].check(parsed_request(body, "/v1/messages"))
    assert fake.seen == [{"input": ["sys", "one", "two"]}]
