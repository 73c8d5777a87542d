"""The ext_proc request lifecycle: Envoy messages in, Envoy messages out, pipeline in between.

One ``Stream`` per gRPC stream (= one HTTP request), created by the shared ``Director``. The
behaviour follows the reference picker (REFERENCE 1.2-1.8):

* request headers: kept (lower-cased), ``x-request-id`` generated when absent; no reply yet,
  unless the request has no body (``end_of_stream`` on headers): then a random ready endpoint
  (restricted by the subset / steering header when present) is returned at once;
* request body: chunks buffered up to ``max_body_bytes`` (beyond: 413); at end of stream the
  pipeline runs and igw replies, in order, with the request-headers response
  (``clear_route_cache``, destination header == ``envoy.lb`` metadata, ``Content-Length``,
  re-set client headers) and the body as 62,000-byte ``streamed_response`` chunks;
* request trailers: no reply (the reference ignores them) -- except that trailers arriving
  before the body ended complete the body, so a request never hangs;
* response headers: served-endpoint metadata read, ``x-went-into-resp-headers: true`` and
  ``x-conformance-test-served-endpoint`` set, client-visible headers re-set;
* response body: SSE chunks are echoed one by one (usage parsed, model name reverse
  rewritten); other bodies are buffered and answered at end of stream in 62,000-byte chunks;
* response trailers: the request is finished and an empty trailers response returned.

Deployments that need nothing from response bodies (no model rewrite, token metrics not
wanted) can set Envoy's ``response_body_mode: NONE``: igw then sees the response headers only
and finishes the request when Envoy closes the stream at the end of the HTTP request, saving
one gRPC round trip per response chunk (``mode_override`` cannot do this per request: Envoy
ignores it when the request body mode is FULL_DUPLEX_STREAMED). To keep token metrics and the
outlier signals of the body at about half the CPU, a second ext_proc filter in Envoy's
observability mode streams the response to igw unanswered (``observer.py``): each routing
stream registers its request in ``Director.live`` under ``x-request-id``, the observer joins
it, and the request is finished once both have ended (``Link``).

Errors become the reference's ImmediateResponse (``InferenceError`` with an HTTP status) or,
for codes without one and for protocol violations, a ``StreamError`` that the servicer turns
into a gRPC status. ``Stream.close`` always runs (servicer ``finally``) and finishes the
request, releasing in-flight reservations even when Envoy or the client goes away.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from typing import TYPE_CHECKING, Any

import grpc

from igw.errors import ErrorCode, InferenceError, no_endpoints
from igw.extproc import messages as msgs
from igw.extproc.observer import (
    DEFAULT_MAX_LINK_AGE,
    DEFAULT_MAX_LINKS,
    DEFAULT_OBSERVER_GRACE,
    Link,
    LiveRequests,
    Observer,
    first_token_hook,
)
from igw.parsing import request_path
from igw.pipeline import Decision, Pipeline, Request
from igw.stages.parse import SUBSET_KEY, apply_headers

if TYPE_CHECKING:
    from igw.datastore import Pool
    from igw.metrics import Metrics
    from igw.stages.protocols import ObjectiveLookup

log = logging.getLogger("igw.extproc")

DESTINATION_NAMESPACE = msgs.LB_NAMESPACE
DESTINATION_KEY = "x-gateway-destination-endpoint"
SCORES_KEY = "x-gateway-destination-endpoint-scores"
SERVED_KEY = msgs.SERVED_KEY
REQUEST_ID_HEADER = "x-request-id"
WENT_INTO_RESP_HEADERS = "x-went-into-resp-headers"
SERVED_ECHO_HEADER = "x-conformance-test-served-endpoint"
DEFAULT_MAX_BODY_BYTES = 64 << 20

# Headers igw owns: never re-emitted from the client's request (REFERENCE 1.3).
SYSTEM_OWNED_HEADERS = frozenset(
    {
        "x-llm-d-inference-fairness-id",
        "x-gateway-inference-fairness-id",
        "x-llm-d-inference-objective",
        "x-gateway-inference-objective",
        "x-llm-d-model-name-rewrite",
        "x-gateway-model-name-rewrite",
        SUBSET_KEY,
        "x-llm-d-slo-ttft-ms",
        "x-slo-ttft-ms",
        "x-llm-d-slo-tpot-ms",
        "x-slo-tpot-ms",
        "x-llm-d-video-fps",
        "x-llm-d-video-duration-seconds",
        "x-llm-d-video-resolution",
        DESTINATION_KEY,
        SERVED_KEY,
        "x-llm-d-request-dropped-reason",
        "content-length",
    }
)


OBSERVE_UNTIL = ("end", "first-token")


class StreamError(Exception):
    """Ends the gRPC stream with ``code`` (Envoy then applies its failure mode)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Director:
    """Shared, per-server state: the pipeline, the pool and the options every stream uses."""

    def __init__(
        self,
        pipeline: Pipeline,
        pool: Pool,
        *,
        metrics: Metrics | None = None,
        objectives: ObjectiveLookup | None = None,
        emit_endpoint_scores: bool = False,
        use_subset_metadata: bool = True,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        rng: random.Random | None = None,
        max_live_requests: int = DEFAULT_MAX_LINKS,
        max_live_age: float = DEFAULT_MAX_LINK_AGE,
        observer_grace: float = DEFAULT_OBSERVER_GRACE,
        observe_until: str = "end",
    ) -> None:
        if observe_until not in OBSERVE_UNTIL:
            raise ValueError(
                f"observe_until: expected one of {', '.join(OBSERVE_UNTIL)}, got {observe_until!r}"
            )
        self.pipeline = pipeline
        self.pool = pool
        self.metrics = metrics
        self.objectives = objectives
        self.emit_endpoint_scores = emit_endpoint_scores
        self.use_subset_metadata = use_subset_metadata
        self.max_body_bytes = max_body_bytes
        self.rng = rng or random.Random()
        self.open_streams = 0
        # Routing streams by request id, for observer streams to join (``observer.py``).
        self.live = LiveRequests(max_live_requests, max_live_age)
        self.observer_grace = observer_grace
        # "first-token": observers close their stream after the first response chunk (see
        # ``observer.py``): TTFT, calibration and the prefill gate's release without reading
        # the rest; token counts and response sizes are then not recorded.
        self.observe_until = observe_until
        # ``--usage-metrics=false`` removes the usage stage: observers then skip parsing too.
        self.usage_enabled = any(s.name == "usage" for s in pipeline.response_stages)
        self._first_token = first_token_hook(pipeline)

    def stream(self) -> Stream:
        return Stream(self)

    def observer(self) -> Observer:
        """State for a stream whose messages carry ``observability_mode`` (never answered)."""
        return Observer(self)

    def finish(self, request: Request, *, failed: bool) -> None:
        """``Pipeline.finish`` (release, metrics, outlier report); never raises."""
        try:
            self.pipeline.finish(request, failed=failed)
        except Exception:  # accounting must never break the stream
            log.exception("finishing request %s failed", request.request_id)

    def observe_first_token(self, decision: Decision, ttft_s: float) -> None:
        if self._first_token is not None:
            try:
                self._first_token(decision, ttft_s)
            except Exception:
                log.exception("first-token observation failed")

    def call_later(self, delay: float, callback: Any) -> bool:
        """Schedule ``callback``; False when no event loop runs (then nothing can wait)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        loop.call_later(delay, callback)
        return True


class Stream:
    """One ext_proc stream's state machine."""

    __slots__ = (
        "_body_chunks",
        "_body_size",
        "_resp_buffer",
        "_resp_buffered",
        "_resp_chunks_seen",
        "_resp_streaming",
        "d",
        "done",
        "link",
        "request",
        "request_complete",
        "response_complete",
        "response_started",
        "scheduled",
    )

    def __init__(self, director: Director) -> None:
        self.d = director
        self.request: Request | None = None
        self._body_chunks: list[bytes] = []
        self._body_size = 0
        self.request_complete = False  # request-phase replies sent
        self.scheduled = False  # the pipeline must be finished
        self._resp_streaming = False
        self._resp_buffer: list[bytes] = []
        self._resp_buffered = 0
        self._resp_chunks_seen = False
        self.response_complete = False
        self.response_started = False
        self.done = False  # the servicer ends the stream after sending the replies
        self.link: Link | None = None  # shared with an observer stream of the same request
        director.open_streams += 1

    # ---------------------------------------------------------------- dispatch
    async def handle(self, message: msgs.ProcessingRequest) -> list[msgs.ProcessingResponse]:
        """Replies to one Envoy message (possibly none). Raises ``StreamError``."""
        replies = self.handle_now(message)
        if replies is not None:
            return replies
        try:
            if message.WhichOneof("request") == "request_body":
                return await self._request_body(message)
            return await self._request_trailers(message)
        except InferenceError as error:
            return self._error_reply(error)

    def handle_now(self, message: msgs.ProcessingRequest) -> list[msgs.ProcessingResponse] | None:
        """``handle`` for the messages that never wait; None for the request body and
        trailers, which may (flow control, the prefill gate): ``handle`` those. Lets a transport
        answer the streamed response chunks without a coroutine each."""
        kind = message.WhichOneof("request")
        try:
            if kind == "response_body":
                return self._response_body(message.response_body)
            if kind in ("request_body", "request_trailers"):
                return None
            if kind == "request_headers":
                return self._request_headers(message)
            if kind == "response_headers":
                return self._response_headers(message)
            if kind == "response_trailers":
                self._finish(failed=False)
                return [msgs.trailers_response("response")]
        except InferenceError as error:
            return self._error_reply(error)
        raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, "ProcessingRequest has no request")

    def close(self, *, broken: bool) -> None:
        """The stream ended (normally, by cancellation or by error): finish the request.

        A clean half-close by Envoy after the response headers is a normal end: with
        ``response_body_mode: NONE`` Envoy sends no body and closes the stream when the HTTP
        request completes, so the in-flight reservation lasts exactly as long as the request.
        A cancelled or broken stream, or one that ends before any response, is a failure.
        """
        self.d.open_streams -= 1
        link = self.link
        if link is not None:
            self.d.live.discard(link)
            if link.routing_ended:
                return  # verdict given; the request ends with its observer
        request = self.request
        if request is not None and request.finished_at is None and self._holds_decision():
            # Envoy half-closes cleanly after the response only when it sends no response
            # body (response_body_mode NONE); body chunks without end_of_stream mean a break.
            clean = self.response_started and not broken and not self._resp_chunks_seen
            complete = self.response_complete or clean or self.request.attrs.get("skip_response")
            if not complete:
                # Envoy ended the stream early: the client may have gone, or the upstream;
                # the picker cannot tell, so the endpoint is not blamed (nor credited).
                self.request.attrs["outcome_unknown"] = True
            self._finish(failed=broken or not complete)

    # ---------------------------------------------------------------- request phase
    def _request_headers(self, message: msgs.ProcessingRequest) -> list[msgs.ProcessingResponse]:
        if self.request is not None:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, "request headers received twice")
        http = message.request_headers
        headers = msgs.header_map_to_dict(http.headers)
        request_id = headers.get(REQUEST_ID_HEADER)
        if not request_id:
            request_id = str(uuid.uuid4())
            headers[REQUEST_ID_HEADER] = request_id
        request = Request(
            request_id=request_id,
            path=request_path(headers),
            headers=headers,
            metadata=msgs.metadata_to_dict(message.metadata_context),
        )
        self.request = request
        self.link = self.d.live.add(self.d, request)
        if not http.end_of_stream:
            return []  # the reply waits for the body (REFERENCE 1.2)
        return self._headers_only(request)

    def _headers_only(self, request: Request) -> list[msgs.ProcessingResponse]:
        """A request without a body: a random ready endpoint, no scheduling (as the reference)."""
        apply_headers(request, self.d.objectives, use_subset_metadata=self.d.use_subset_metadata)
        pool = self.d.pool
        endpoints = pool.endpoints()
        if not endpoints:
            raise InferenceError(ErrorCode.INTERNAL, "no pods available in datastore")
        if request.subset is not None:
            mask = pool.candidate_mask(request.subset)
            endpoints = [e for e in endpoints if e.id < len(mask) and mask[e.id]]
            if not endpoints:
                raise no_endpoints()
        ready = pool.ready_endpoints()
        ready_ids = {e.id for e in ready}
        choices = [e for e in endpoints if e.id in ready_ids] or endpoints
        chosen = self.d.rng.choice(choices)
        request.decision = Decision(pool=pool, endpoints=[chosen], reserved=False)
        self.scheduled = True
        self.request_complete = True
        return [self._headers_reply(request, content_length=None)]

    async def _request_body(self, message: msgs.ProcessingRequest) -> list[msgs.ProcessingResponse]:
        request = self.request
        if request is None:
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT, "request body received before request headers"
            )
        if self.request_complete:
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT, "request body received after end of stream"
            )
        body = message.request_body
        chunk = body.body
        if chunk:
            self._body_size += len(chunk)
            if self._body_size > self.d.max_body_bytes:
                self._body_chunks = []
                raise InferenceError(
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"request body exceeds the limit of {self.d.max_body_bytes} bytes",
                )
            self._body_chunks.append(chunk)
        if not body.end_of_stream:
            return []
        self._merge_metadata(message)
        return await self._run_request()

    async def _request_trailers(
        self, message: msgs.ProcessingRequest
    ) -> list[msgs.ProcessingResponse]:
        if self.request is None or self.request_complete:
            return []  # ignored, as the reference does
        replies = await self._run_request()
        if replies and replies[0].WhichOneof("response") == "immediate_response":
            return replies
        return [*replies, msgs.trailers_response("request")]

    def _merge_metadata(self, message: msgs.ProcessingRequest) -> None:
        if message.HasField("metadata_context") and self.request is not None:
            self.request.metadata.update(msgs.metadata_to_dict(message.metadata_context))

    async def _run_request(self) -> list[msgs.ProcessingResponse]:
        request = self.request
        assert request is not None
        if request.finished_at is not None:
            # A response message ended this request before its body was complete (Envoy
            # never does that): scheduling now would reserve an endpoint nothing releases.
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT, "request body received after the response ended"
            )
        chunks = self._body_chunks
        request.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._body_chunks = []
        self.request_complete = True
        if self.d.emit_endpoint_scores:
            request.attrs["with_scores"] = True
        started = time.perf_counter()
        await self.d.pipeline.run(request)
        self.scheduled = True
        elapsed = time.perf_counter() - started
        if self.d.metrics is not None:
            self.d.metrics.record_request_processing(elapsed)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "request %s model %r -> %r priority %d routed to %s in %.2f ms",
                request.request_id, request.incoming_model, request.target_model,
                request.priority, request.decision.destination_header() if request.decision
                else "-", elapsed * 1e3,
            )  # fmt: skip
        body = request.upstream_body
        replies = [self._headers_reply(request, content_length=len(body))]
        replies.extend(msgs.body_responses(body, phase="request"))
        if request.attrs.get("skip_response"):
            # Nothing to do in the response phase: end the stream after these replies and
            # Envoy continues without sending the response (the reference's behaviour).
            self.done = True
        return replies

    def _headers_reply(
        self, request: Request, *, content_length: int | None
    ) -> msgs.ProcessingResponse:
        decision = request.decision
        assert decision is not None
        destination = decision.destination_header()
        headers: list[tuple[str, str]] = [(DESTINATION_KEY, destination)]
        if content_length:
            headers.append(("Content-Length", str(content_length)))
        headers.extend(
            (name, value)
            for name, value in request.headers.items()
            if name not in SYSTEM_OWNED_HEADERS
        )
        lb: dict[str, Any] = {DESTINATION_KEY: destination}
        if self.d.emit_endpoint_scores and decision.scores:
            scores = decision.scores.get("total") or next(iter(decision.scores.values()))
            lb[SCORES_KEY] = {address: float(score) for address, score in scores.items()}
        return msgs.request_headers_response(headers, {DESTINATION_NAMESPACE: lb})

    # ---------------------------------------------------------------- response phase
    def _response_headers(self, message: msgs.ProcessingRequest) -> list[msgs.ProcessingResponse]:
        request = self.request
        if request is None:  # response-only stream (Envoy skipped the request phase)
            request = self.request = Request(request_id=str(uuid.uuid4()))
        headers = msgs.header_map_to_dict(message.response_headers.headers)
        served = msgs.served_endpoint(msgs.metadata_to_dict(message.metadata_context))
        if served:
            request.served_endpoint = served
        status_text = headers.get(":status") or headers.get("status") or "200"
        status = int(status_text) if status_text.isdigit() else 0
        self._resp_streaming = "text/event-stream" in headers.get("content-type", "").lower()
        self.d.pipeline.response_started(request, status, headers)
        out: list[tuple[str, str]] = [(WENT_INTO_RESP_HEADERS, "true")]
        if served:
            out.append((SERVED_ECHO_HEADER, served))
        out.extend(
            (name, value) for name, value in headers.items() if name not in SYSTEM_OWNED_HEADERS
        )
        self.response_started = True
        if message.response_headers.end_of_stream:
            self._finish(failed=False)
        return [msgs.response_headers_response(out)]

    def _response_body(self, body: Any) -> list[msgs.ProcessingResponse]:
        request = self.request
        if request is None:
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT, "response body received before response headers"
            )
        chunk, eos = body.body, body.end_of_stream
        self._resp_chunks_seen = True
        if self._resp_streaming:
            out = self.d.pipeline.response_chunk(request, chunk, eos)
            if eos:
                self._finish(failed=False)
            return [msgs.body_response(out, eos, phase="response")]
        if chunk:
            self._resp_buffer.append(chunk)
            self._resp_buffered += len(chunk)
        if not eos:
            if self._resp_buffered > self.d.max_body_bytes:
                # Too big to hold: pass what we have through and stream the rest.
                self._resp_streaming = True
                whole = b"".join(self._resp_buffer)
                self._resp_buffer = []
                out = self.d.pipeline.response_chunk(request, whole, False)
                return [msgs.body_response(out, False, phase="response")]
            return []
        whole = b"".join(self._resp_buffer)
        self._resp_buffer = []
        out = self.d.pipeline.response_chunk(request, whole, True)
        self._finish(failed=False)
        return msgs.body_responses(out, phase="response")

    # ---------------------------------------------------------------- endings
    def _holds_decision(self) -> bool:
        """The request was scheduled, or is between its pick and the end of the pipeline
        (waiting at the prefill gate, or a later stage refused it): its reservation must be
        released whatever ends the stream."""
        request = self.request
        if request is None:
            return False
        return self.scheduled or (request.decision is not None and request.decision.reserved)

    def _finish(self, *, failed: bool) -> None:
        if not failed:
            self.response_complete = True
        request = self.request
        if request is None or request.finished_at is not None:
            return
        if self.link is not None:
            self.link.routing_done(failed=failed)  # waits for an attached observer, if any
        else:
            self.d.finish(request, failed=failed)

    def _error_reply(self, error: InferenceError) -> list[msgs.ProcessingResponse]:
        request = self.request
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "request %s refused: %s",
                request.request_id if request is not None else "-",
                error.body_text(),
            )
        if self.d.metrics is not None and request is not None:
            self.d.metrics.record_error(request, error.code.label)
        if request is not None and self._holds_decision():
            self._finish(failed=True)
        self.done = True
        if error.http_status is None:
            raise StreamError(grpc.StatusCode.UNKNOWN, error.body_text())
        return [msgs.immediate_response(error)]
