"""guard.in check that asks an external moderation service (OpenAI ``/v1/moderations`` shape).

Request: ``POST url`` with ``{"input": [<prompt text strings>]}`` (plus ``"model"`` when
configured). Answer: ``{"results": [{"flagged": bool, "categories": {name: bool}}]}``. The
prompt is refused (400) when a result flags one of the configured ``categories``, or, with
no categories configured, when any result is ``flagged``.

The call is asynchronous with a hard total timeout, so a slow service costs at most
``timeout`` per request and never stalls the event loop. When the service is down, slow or
answers nonsense, ``failMode: open`` lets the prompt through (logged) and ``closed`` refuses
it with 503. It runs after the built-in prompt check, so redacted text is what is sent.

Each call opens its own short-lived aiohttp session: nothing is left to close when the
gateway stops, at the cost of a new connection per prompt (see docs/guard.md).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from igw.errors import ErrorCode, InferenceError
from igw.guard.config import ModerationSpec
from igw.guard.decisions import DecisionLog
from igw.guard.prompt import STAGE, blocked
from igw.guard.text import prompt_texts
from igw.pipeline import Request


class ModerationUnavailable(Exception):
    """The service could not give a usable answer (down, slow, bad status or body)."""


def flagged_categories(answer: Any, wanted: list[str]) -> list[str]:
    """Category names that block, from a moderation answer; raises when it is malformed."""
    if not isinstance(answer, dict) or not isinstance(answer.get("results"), list):
        raise ModerationUnavailable("answer has no results list")
    hits: list[str] = []
    for result in answer["results"]:
        if not isinstance(result, dict):
            raise ModerationUnavailable("a result is not an object")
        categories = result.get("categories")
        if categories is None:
            categories = {}
        if not isinstance(categories, dict):
            raise ModerationUnavailable("categories is not an object")
        if wanted:
            hits.extend(c for c in wanted if categories.get(c) is True and c not in hits)
        elif result.get("flagged") is True:
            names = [c for c, on in categories.items() if on is True] or ["flagged"]
            hits.extend(c for c in names if c not in hits)
    return hits


class ModerationCheck:
    """Asks the moderation service about the prompt text."""

    name = "guard.moderation"

    def __init__(self, spec: ModerationSpec, *, decisions: DecisionLog) -> None:
        self.url = spec.url
        self.timeout = aiohttp.ClientTimeout(total=spec.timeout)
        self.fail_closed = spec.fail_mode == "closed"
        self.categories = list(spec.categories)
        self.model = spec.model
        self.decisions = decisions

    def _texts(self, request: Request) -> list[str]:
        if request.body_json is not None:
            return [t for t in prompt_texts(request.body_json) if t]
        return [request.body.decode("utf-8", "replace")] if request.body else []

    async def check(self, request: Request) -> None:
        texts = self._texts(request)
        if not texts:
            return
        payload: dict[str, Any] = {"input": texts}
        if self.model:
            payload["model"] = self.model
        try:
            answer = await self._ask(payload)
            hits = flagged_categories(answer, self.categories)
        except ModerationUnavailable as exc:
            self.decisions.record(
                request, stage=STAGE, action="error" if self.fail_closed else "allow",
                rules=f"moderation.unavailable({exc})", data=request.body,
            )  # fmt: skip
            if self.fail_closed:
                raise InferenceError(
                    ErrorCode.SERVICE_UNAVAILABLE,
                    "content moderation service unavailable; request refused",
                ) from None
            return
        if hits:
            rule = "moderation." + ",".join(hits)
            self.decisions.record(request, stage=STAGE, action="block", rules=rule,
                                  data=request.body)  # fmt: skip
            raise blocked(rule)

    async def _ask(self, payload: dict[str, Any]) -> Any:
        try:
            async with (
                aiohttp.ClientSession(timeout=self.timeout) as session,
                session.post(self.url, json=payload) as response,
            ):
                if response.status != 200:
                    raise ModerationUnavailable(f"status {response.status}")
                data = await response.read()
        except asyncio.TimeoutError:  # TimeoutError itself from 3.11 on
            raise ModerationUnavailable("timeout") from None
        except aiohttp.ClientError as exc:
            raise ModerationUnavailable(type(exc).__name__) from None
        try:
            return json.loads(data)
        except ValueError:
            raise ModerationUnavailable("answer is not JSON") from None
