"""Response stages: usage parsing, reverse model rewrite, and the end-of-request accounting.

``AccountStage.on_finish`` is where in-flight reservations are released (``engine.release``),
the running gauge is decremented, latency/size/token metrics are recorded and the data layer
hears whether the endpoint served well (see ``_outcome``). ``Pipeline.finish`` guarantees it
runs once.

``UsageStage`` and ``AccountStage`` only read the response (``observe_only``): the standalone
gateway runs them after the bytes are handed to the client (``Pipeline.relay_chunk``), so
usage parsing and the first-token bookkeeping cost the client no latency. The first-token
time is the one the pipeline stamped when the bytes arrived, not when the stage ran.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from igw.parsing import UsageParser, reverse_rewriter, usage_from_body
from igw.parsing.usage import MAX_BUFFERED_BODY
from igw.pipeline import Request
from igw.stages.protocols import Engine, ResponseReporter

if TYPE_CHECKING:
    from igw.metrics import Metrics

EVENT_STREAM = "text/event-stream"


class UsageStage:
    """Reads token usage out of SSE events or the whole JSON body into ``request.usage``.

    A streamed response is scanned chunk by chunk (the usage event is near its end and the
    chunks are not kept). A whole JSON body is only collected here and read at ``on_finish``
    (``usage_from_body``: only its usage object is decoded when it is large): nothing
    downstream reads the usage before the request ends. A body that comes in one chunk (the
    usual non-streamed answer) is kept as it is, with no parser and no join.
    """

    name = "usage"
    observe_only = True  # reads the chunks, never changes them

    def on_headers(self, request: Request, status: int, headers: dict[str, str]) -> None:
        streaming = request.stream or EVENT_STREAM in headers.get("content-type", "").lower()
        request.response_streaming = streaming
        if streaming:
            request.attrs["usage_parser"] = UsageParser(True)
        # a whole body gets a parser only if it comes in several chunks (see on_chunk)

    def on_chunk(self, request: Request, chunk: bytes, end_of_stream: bool) -> bytes:
        attrs = request.attrs
        parser: UsageParser | None = attrs.get("usage_parser")
        if parser is None:
            if end_of_stream and not request.response_streaming:
                attrs["usage_body"] = chunk  # the whole body in one piece (the usual answer)
                return chunk
            parser = attrs["usage_parser"] = UsageParser(request.response_streaming)
        if parser.streaming:
            parser.feed(chunk, end_of_stream)
            if parser.usage is not None:
                request.usage = parser.usage
        elif end_of_stream and not parser.buffered:
            attrs["usage_body"] = chunk  # the whole body in one piece (the usual answer)
        else:
            parser.feed(chunk, False)
            if end_of_stream:
                attrs["usage_complete"] = True
        return chunk

    def on_finish(self, request: Request) -> None:
        attrs = request.attrs
        body = attrs.get("usage_body")
        if body is not None:
            found = usage_from_body(body) if len(body) <= MAX_BUFFERED_BODY else None
        else:
            parser: UsageParser | None = attrs.get("usage_parser")
            if parser is None or parser.streaming or not attrs.get("usage_complete"):
                return  # streamed (done as it went), or a body that never ended: no usage
            parser.feed(b"", True)
            found = parser.usage
        if found is not None:
            request.usage = found


class ReverseRewriteStage:
    """Puts the client's model name back into responses when igw rewrote it."""

    name = "reverse-rewrite"
    # as an observer (a response it does not rewrite) it has nothing to do: the relaying
    # front ends leave it out of that response (see ``igw.pipeline.ResponseStage``)
    reads_response = False

    def on_headers(self, request: Request, status: int, headers: dict[str, str]) -> None:
        return None

    def changes_bytes(self, request: Request) -> bool:
        """Only when igw rewrote the model (else the pipeline runs this stage after the
        write, as an observer, and nothing waits for it)."""
        target, incoming = request.target_model, request.incoming_model
        return bool(target) and bool(incoming) and target != incoming

    def on_chunk(self, request: Request, chunk: bytes, end_of_stream: bool) -> bytes:
        target = request.target_model
        if target == request.incoming_model or not target:
            return chunk  # nothing was rewritten (the usual case): no lookups
        rewriter = request.attrs.get("reverse_rewriter", False)
        if rewriter is False:
            rewriter = reverse_rewriter(request.target_model, request.incoming_model)
            request.attrs["reverse_rewriter"] = rewriter
        return rewriter.apply(chunk) if rewriter is not None else chunk

    def on_finish(self, request: Request) -> None:
        return None


class AccountStage:
    """Releases the decision's reservation and records the request's metrics, once."""

    name = "account"
    observe_only = True  # counts the chunks, never changes them

    def __init__(
        self,
        engine: Engine | None = None,
        metrics: Metrics | None = None,
        reporter: ResponseReporter | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.reporter = reporter
        # looked up once: an engine without it takes no first-token observations
        self._observe_first_token: Any = getattr(engine, "observe_first_token", None)

    def on_headers(self, request: Request, status: int, headers: dict[str, str]) -> None:
        if status and status != 200 and self.metrics is not None:
            self.metrics.record_error(request, "ModelServerError")

    def on_chunk(self, request: Request, chunk: bytes, end_of_stream: bool) -> bytes:
        attrs = request.attrs
        attrs["response_bytes"] = attrs.get("response_bytes", 0) + len(chunk)
        if chunk and not attrs.get("first_token_seen"):
            attrs["first_token_seen"] = True
            observe = self._observe_first_token
            # A response whose first chunk is also its last (a buffered answer) gets no
            # first-token call: the release at finish ends its prefill the same way, and a
            # buffered answer's first byte says nothing about prefill time (no calibration).
            if observe is not None and request.decision is not None and not end_of_stream:
                # when the bytes came (stamped by the pipeline), not when this stage runs
                arrived = request.first_byte_at or time.monotonic()
                observe(request.decision, arrived - request.received_at)
        return chunk

    def on_finish(self, request: Request) -> None:
        decision = request.decision
        if decision is not None and decision.reserved and self.engine is not None:
            self.engine.release(decision)
        metrics = self.metrics
        if metrics is not None:
            attrs = request.attrs
            running = attrs.pop("running", False)
            if not request.failed and (running or request.response_status):
                size = None if attrs.get("response_size_unknown") else (
                    attrs.get("response_bytes", 0))  # fmt: skip
                metrics.request_finished(request, size, running=running)
            elif running:
                metrics.running_ended(request)
        if self.reporter is not None and decision is not None and decision.endpoints:
            ok = _outcome(request)
            if ok is not None:
                endpoint = decision.endpoints[0]  # the primary (no property call)
                if request.served_endpoint and request.served_endpoint != endpoint.address:
                    endpoint = decision.pool.by_address(request.served_endpoint) or endpoint
                self.reporter.report_response(endpoint, ok)


def _outcome(request: Request) -> bool | None:
    """What the response says about the endpoint: True (served), False (its fault), None.

    A 5xx status or ``attrs["upstream_error"]`` is the endpoint's fault, and so is a failed
    request in general (the standalone gateway marks ``failed`` only for upstream trouble). A
    front end that cannot tell whose fault a failure was sets ``attrs["outcome_unknown"]``
    (the ext_proc service, when Envoy cancels a stream: the client may simply have left);
    such requests are not reported, so client disconnects never demote a healthy replica.
    """
    if request.attrs.get("upstream_error") or request.response_status >= 500:
        return False
    if not request.response_status:
        return None
    if request.failed:
        return None if request.attrs.get("outcome_unknown") else False
    return True
