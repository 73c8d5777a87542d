"""guard.in built-in check: prompt size, deny patterns and PII (block or redact).

Runs after parsing and before routing, so a blocked request never reaches flow control or
the scheduler (no queue slot, no endpoint reserved). A redaction changes what goes
upstream: the decoded body is edited in place (text fields only, see ``igw.guard.text``),
re-serialized as the route stage does for model rewrites (keys sorted, compact), and
becomes ``request.body`` itself so a later model rewrite, which re-decodes ``request.body``,
keeps it. The prefix-hashing prompt is redacted the same way, so replicas are matched on
the text they will actually see.

Bodies the parser did not decode (passthrough) are scanned as raw text: deny and ``block``
rules apply, ``redact`` cannot (the format is unknown) and such bodies go up unchanged.
"""

from __future__ import annotations

import asyncio
import json

from igw.errors import ErrorCode, InferenceError
from igw.guard.decisions import DecisionLog
from igw.guard.rules import RuleSet
from igw.guard.text import prompt_texts, walk_prompt
from igw.parsing.gojson import marshal
from igw.parsing.openai import BYTES_PER_TOKEN
from igw.pipeline import Request

STAGE = "guard.in"
OFFLOAD_CHARS = 64 * 1024  # longer prompts are scanned in a thread (the loop keeps turning)


POLICY_CODE = "content_policy_violation"  # the OpenAI-style error code clients can match on


def blocked(rule: str) -> InferenceError:
    """The client's answer for a prompt refused by ``rule``: 400, and the drop-reason header
    (which the standalone gateway also uses as the error's ``code``)."""
    return InferenceError(
        ErrorCode.BAD_REQUEST, f"request blocked by content policy: {rule}", drop_reason=POLICY_CODE
    )


class PromptCheck:
    """maxChars, deny rules and PII on the prompt text; cheap when nothing matches."""

    name = "guard.prompt"

    def __init__(
        self, rules: RuleSet, *, max_chars: int | None = None, decisions: DecisionLog
    ) -> None:
        self.rules = rules
        self.max_chars = max_chars
        self.decisions = decisions

    async def check(self, request: Request) -> None:
        if len(request.body) > OFFLOAD_CHARS:
            await asyncio.to_thread(self.apply, request)
        else:
            self.apply(request)

    def apply(self, request: Request) -> None:
        """The whole check, synchronously (everything it needs is in memory)."""
        if request.body_json is None:
            self._raw(request)
            return
        texts = prompt_texts(request.body_json)
        if self.max_chars is not None:
            total = sum(len(t) for t in texts)
            if total > self.max_chars:
                self._refuse(request, "maxChars", InferenceError(
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"prompt has {total} characters, more than the content policy allows "
                    f"({self.max_chars})",
                ))  # fmt: skip
        for text in texts:
            rule = self.rules.first_block(text)
            if rule is not None:
                self._refuse(request, rule.name, blocked(rule.name))
        if self.rules.redact and any(self._redacts(t) for t in texts):
            self._redact(request)

    def _redacts(self, text: str) -> bool:
        return any(True for rule in self.rules.redact for _ in rule.matches(text))

    def _raw(self, request: Request) -> None:
        if not request.body:
            return
        text = request.body.decode("utf-8", "replace")
        if self.max_chars is not None and len(text) > self.max_chars:
            self._refuse(request, "maxChars", InferenceError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"body has {len(text)} characters, more than the content policy allows "
                f"({self.max_chars})",
            ))  # fmt: skip
        rule = self.rules.first_block(text)
        if rule is not None:
            self._refuse(request, rule.name, blocked(rule.name))

    def _refuse(self, request: Request, rule: str, error: InferenceError) -> None:
        self.decisions.record(request, stage=STAGE, action="block", rules=rule, data=request.body)
        raise error

    def _redact(self, request: Request) -> None:
        """Rewrite the body's text fields and the prefix prompt; the new body goes upstream."""
        source = request.upstream_body
        body = json.loads(source)  # exact (big integers stay integers), as RouteStage does
        if not isinstance(body, dict):  # pragma: no cover - the parser accepted an object
            return
        names: list[str] = []

        def redact(text: str) -> str:
            new, hit = self.rules.redact_text(text)
            if not hit:
                return text
            names.extend(n for n in hit if n not in names)
            return new

        walk_prompt(body, redact)
        if not names:
            return
        request.body = marshal(body)
        request.out_body = None
        request.body_json = body
        if request.prompt:
            try:
                prompt = request.prompt.decode("utf-8")
            except UnicodeDecodeError:  # token ids, not text: nothing to redact
                prompt = None
            if prompt is not None:
                new_prompt, _ = self.rules.redact_text(prompt)
                request.prompt = new_prompt.encode("utf-8", "surrogatepass")
                request.prompt_tokens_estimate = (
                    len(request.prompt) + BYTES_PER_TOKEN - 1
                ) // BYTES_PER_TOKEN
        request.attrs["guard.redacted"] = names
        self.decisions.record(request, stage=STAGE, action="redact", rules=names, data=source)
