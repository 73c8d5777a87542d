"""guard.out: deny and PII rules on the answer, chunk by chunk, as one response stage.

Three shapes of response body:

* **Server-sent events** (``text/event-stream``): complete lines are processed as they
  arrive (a line cut by a chunk boundary waits for its end, which a client could not use
  anyway). Each ``data:`` JSON event's text strings (``igw.guard.text``) are scanned as one
  running text: the last ``window`` characters of text already seen are kept and scanned
  together with the new text, so a match split across chunks or events is still found.
  ``redact`` rewrites the JSON string content of the event, so event framing stays intact.
* **One whole body** (the usual non-streamed answer): decoded as JSON, its text strings
  scanned and rewritten; a blocked body becomes an OpenAI-style error object.
* **Anything else** (other content types, or a large body relayed in pieces): scanned as
  text with the same window; redaction rewrites the text.

A block cannot unsend bytes. On a stream it ends the answer early: the event that completed
the match is dropped, an SSE error event (``code: content_policy_violation``) is sent in its
place, and every later byte from the replica is swallowed. Text before the match (and the
part of a match already sent in earlier chunks) has reached the client. Likewise a
redaction of a match that began in an earlier chunk only replaces the part not yet sent.
The status line and headers are already out by then, so a blocked answer keeps its status.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
from typing import Any

from igw.guard.decisions import DecisionLog
from igw.guard.rules import Rule, RuleSet
from igw.guard.text import walk_response
from igw.pipeline import RESPONSE_BLOCKED_ATTR, Request

STAGE = "guard.out"
STATE_KEY = "guard.out"
ERROR_CODE = "content_policy_violation"


def block_message(rule: str) -> str:
    return f"response blocked by content policy: {rule}"


def error_object(rule: str) -> dict[str, Any]:
    return {"error": {"message": block_message(rule), "type": "invalid_request_error",
                      "param": None, "code": ERROR_CODE}}  # fmt: skip


def sse_block_event(rule: str) -> bytes:
    """The last event of a stream cut by the guard (the client sees why it ended)."""
    return b"data: " + json.dumps(error_object(rule)).encode() + b"\n\n"


class _Blocked(Exception):
    def __init__(self, rule: Rule) -> None:
        super().__init__(rule.name)
        self.rule = rule


@dataclasses.dataclass(slots=True)
class _State:
    sse: bool
    tail: str = ""  # the last ``window`` characters of response text already scanned
    pending: bytes = b""  # SSE: an incomplete line waiting for its end
    seen_chunk: bool = False
    blocked: str | None = None
    redacted: list[str] = dataclasses.field(default_factory=list)
    decoder: Any = None  # raw text: incremental UTF-8 decoder across chunk boundaries


class ResponseGuard:
    """The guard.out response stage (``igw.pipeline.ResponseStage``)."""

    name = STAGE

    def __init__(self, rules: RuleSet, *, window: int = 256, decisions: DecisionLog) -> None:
        self.rules = rules
        self.window = window
        self.decisions = decisions

    # -------------------------------------------------------------- ResponseStage
    def on_headers(self, request: Request, status: int, headers: dict[str, str]) -> None:
        content_type = ""
        for name, value in headers.items():
            if name.lower() == "content-type":
                content_type = value
                break
        request.attrs[STATE_KEY] = _State(sse="text/event-stream" in content_type)

    def on_chunk(self, request: Request, chunk: bytes, end_of_stream: bool) -> bytes:
        state = request.attrs.get(STATE_KEY)
        if state is None:  # no headers seen (some front ends): trust the request's stream flag
            state = request.attrs[STATE_KEY] = _State(sse=request.stream)
        if state.blocked is not None:
            return b""  # the answer was cut: swallow the rest
        first = not state.seen_chunk
        state.seen_chunk = True
        if state.sse:
            return self._sse(request, state, chunk, end_of_stream)
        if first and end_of_stream:
            return self._whole(request, state, chunk)
        return self._raw(request, state, chunk, end_of_stream)

    def on_finish(self, request: Request) -> None:
        state = request.attrs.pop(STATE_KEY, None)
        if state is not None and state.redacted:
            self.decisions.record(request, stage=STAGE, action="redact", rules=state.redacted)

    # -------------------------------------------------------------- scanning
    def _scan(self, state: _State, text: str) -> str:
        """``text`` (new) scanned after ``state.tail``; returns it redacted (the same object
        when nothing was replaced); raises ``_Blocked``."""
        if not text:
            return text
        joined = state.tail + text if state.tail else text
        start = len(joined) - len(text)
        rule = self.rules.first_block(joined, start)
        if rule is not None:
            raise _Blocked(rule)
        out = text
        if self.rules.redact:
            redacted, names = self.rules.redact_text(joined, start)
            if names:
                out = redacted
                state.redacted.extend(n for n in names if n not in state.redacted)
        if self.window:
            state.tail = joined[-self.window :]
        return out

    def _block(self, request: Request, state: _State, rule: Rule, data: bytes) -> None:
        state.blocked = rule.name
        request.attrs[RESPONSE_BLOCKED_ATTR] = rule.name
        self.decisions.record(request, stage=STAGE, action="block", rules=rule.name, data=data)

    # -------------------------------------------------------------- SSE
    def _sse(self, request: Request, state: _State, chunk: bytes, eos: bool) -> bytes:
        data = state.pending + chunk if state.pending else chunk
        cut = len(data) if eos else data.rfind(b"\n") + 1
        state.pending = data[cut:]
        if cut == 0:
            return b""
        lines = data[:cut].split(b"\n")
        out: list[bytes] = []
        for line in lines:
            try:
                out.append(self._sse_line(state, line))
            except _Blocked as exc:
                self._block(request, state, exc.rule, line)
                kept = b"\n".join(out) + b"\n" if out else b""
                if not kept.endswith(b"\n\n"):
                    # End the event the kept lines (or an earlier chunk's lines) belong to,
                    # so the error is an event of its own; an extra blank line is harmless.
                    kept += b"\n"
                return kept + sse_block_event(exc.rule.name)
        return b"\n".join(out)

    def _sse_line(self, state: _State, line: bytes) -> bytes:
        if not line.startswith(b"data:"):
            return line
        payload = line[5:].strip()
        if not payload or payload == b"[DONE]":
            return line
        try:
            event = json.loads(payload)
        except ValueError:
            text = payload.decode("utf-8", "replace")
            new = self._scan(state, text)
            return line if new is text else b"data: " + new.encode()
        changed = False

        def visit(text: str) -> str:
            nonlocal changed
            new = self._scan(state, text)
            changed = changed or new is not text
            return new

        walk_response(event, visit)
        if not changed:
            return line
        return b"data: " + json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()

    # -------------------------------------------------------------- whole body
    def _whole(self, request: Request, state: _State, body: bytes) -> bytes:
        try:
            doc = json.loads(body)
        except ValueError:
            return self._raw(request, state, body, True)
        changed = False

        def visit(text: str) -> str:
            nonlocal changed
            state.tail = ""  # separate strings of one document: no cross-string matches
            new = self._scan(state, text)
            changed = changed or new is not text
            return new

        try:
            walk_response(doc, visit)
        except _Blocked as exc:
            self._block(request, state, exc.rule, body)
            return json.dumps(error_object(exc.rule.name)).encode()
        if not changed:
            return body
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()

    # -------------------------------------------------------------- raw text
    def _raw(self, request: Request, state: _State, chunk: bytes, eos: bool) -> bytes:
        if state.decoder is None:
            state.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        text = state.decoder.decode(chunk, final=eos)
        try:
            new = self._scan(state, text)
        except _Blocked as exc:
            self._block(request, state, exc.rule, chunk)
            return b""
        if not self.rules.redact:
            return chunk  # nothing can change: the original bytes, split UTF-8 included
        # Once redaction is on, the decoded text is what goes out (a sequence split by the
        # chunk boundary is emitted whole with the next chunk; invalid UTF-8 becomes U+FFFD).
        return new.encode()
