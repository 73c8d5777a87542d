"""Observer streams: Envoy's ext_proc ``observability_mode`` ("send and go"), read, never answered.

Why: a gRPC round trip per streamed response chunk costs about twice the CPU of receiving the
chunk alone, and Envoy ignores per-request ``mode_override`` under FULL_DUPLEX_STREAMED. So a
deployment can run two ext_proc filters against igw (``deploy/envoy/envoy-observe.yaml``):
``igw-route`` (request phase + response headers, ``response_body_mode: NONE``) and, after it,
``igw-observe`` with ``observability_mode: true``, which streams the response to igw and never
waits. Envoy marks those messages ``observability_mode``; igw must not reply to any of them,
errors included (a reply would be a protocol violation Envoy does not expect).

An ``Observer`` reads one such stream. It finds the routing stream's ``Request`` through the
``x-request-id`` that ``igw-route`` set (``LiveRequests``, a bounded map), parses usage with the
same ``UsageParser`` the single-stream path uses, and hands its findings to the shared ``Link``.
The ``Link`` finishes the request (``Pipeline.finish``: reservation released, metrics recorded
once) when the routing stream has ended and the observer is done, in whichever order they
end. An observer with an unknown id (routing stream on another replica or already gone, or no
``igw-route`` at all) records what it saw on a request of its own, labelled with the response
body's ``model``.

What an observer can tell the outlier detector: a 5xx status (through ``response_status``) and
an SSE stream that ends without its terminal event (``[DONE]``, ``response.completed``, ...),
which marks ``upstream_error``; a stream that breaks before the end is "outcome unknown" as on
the routing path (the client may have gone).
"""

from __future__ import annotations

import collections
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from igw.extproc import messages as msgs
from igw.parsing import UsageParser, request_path
from igw.pipeline import Decision, Request
from igw.stages.parse import apply_headers

if TYPE_CHECKING:
    from igw.extproc.director import Director

log = logging.getLogger("igw.extproc")

REQUEST_ID_HEADER = "x-request-id"
DESTINATION_HEADER = "x-gateway-destination-endpoint"
EVENT_STREAM = "text/event-stream"
DEFAULT_MAX_LINKS = 65_536  # routing streams waiting for their observer
DEFAULT_MAX_LINK_AGE = 600.0  # seconds a routing stream stays findable by its observer
DEFAULT_OBSERVER_GRACE = 10.0  # seconds a finished routing stream waits for its observer
# Last events of the SSE dialects igw parses (OpenAI, Responses API, Anthropic); one regex
# pass per chunk costs half of five ``in`` probes.
_TERMINAL = re.compile(rb"\[DONE\]|response\.(?:completed|incomplete|failed)|message_stop")
_TAIL = len(b"response.incomplete") - 1  # the longest marker, cut by a chunk boundary
MODEL_SCAN_BYTES = 8192  # where a response names its model (first event / top of the body)
_MODEL = re.compile(rb'"model"\s*:\s*("(?:[^"\\]|\\.){0,512}")')


class Link:
    """One request seen by a routing stream and (maybe) an observer: finishes it once.

    ``routing_failed`` is None until the routing stream gave its verdict; ``watching`` is True
    while an attached observer has not ended. The request is finished when both are settled.
    """

    __slots__ = ("born", "director", "observer_failed", "request", "routing_failed", "watching")

    def __init__(self, director: Director, request: Request, born: float) -> None:
        self.director = director
        self.request = request
        self.born = born
        self.watching = False
        self.routing_failed: bool | None = None
        self.observer_failed = False

    @property
    def routing_ended(self) -> bool:
        return self.routing_failed is not None

    def routing_done(self, *, failed: bool) -> None:
        """The routing stream's verdict (the first one counts); finish unless an observer runs."""
        if self.routing_failed is not None:
            return
        self.routing_failed = failed
        self.director.live.discard(self)
        # The observer's end (usage, [DONE]) may still be on its way: wait for it, bounded.
        if self.watching and self.director.call_later(self.director.observer_grace, self._expire):
            return
        self.director.finish(self.request, failed=failed or self.observer_failed)

    def observer_done(self, observed: Observed) -> None:
        self.watching = False
        if self.request.finished_at is not None:
            return
        observed.apply(self.request)
        self.observer_failed = observed.failed
        if self.routing_failed is not None:
            self.director.finish(self.request, failed=self.routing_failed or observed.failed)

    def observer_gone(self) -> None:
        """The observer stopped interpreting (internal error): finish on routing's word."""
        self.watching = False
        if self.routing_failed is not None and self.request.finished_at is None:
            self.director.finish(self.request, failed=self.routing_failed)

    def _expire(self) -> None:
        if self.watching and self.request.finished_at is None:
            log.debug("request %s: observer did not end in time", self.request.request_id)
            self.watching = False
            self.director.finish(self.request, failed=bool(self.routing_failed))


class LiveRequests:
    """Routing streams an observer may still attach to, by request id; bounded in count and age.

    A link leaves when an observer takes it or when its routing stream ends, so with one filter
    deployed (routing only, or observers only) the map stays empty between requests. The bounds
    only matter for routing streams that stay open long: the oldest beyond ``max_entries`` or
    ``max_age`` seconds are forgotten (their requests still finish through their own stream; a
    late observer then records on its own).
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_LINKS,
        max_age: float = DEFAULT_MAX_LINK_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or max_age <= 0:
            raise ValueError("LiveRequests: max_entries must be >= 1 and max_age > 0")
        self.max_entries = max_entries
        self.max_age = max_age
        self.clock = clock
        self._links: collections.OrderedDict[str, Link] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._links)

    def add(self, director: Director, request: Request) -> Link:
        """A link for ``request``; findable unless another live request holds the same id."""
        now = self.clock()
        links = self._links
        horizon = now - self.max_age
        while links:
            oldest = next(iter(links.values()))
            if oldest.born >= horizon:
                break
            links.popitem(last=False)
        link = Link(director, request, now)
        if request.request_id in links:
            log.debug("request id %s is already live; not findable twice", request.request_id)
            return link
        links[request.request_id] = link
        if len(links) > self.max_entries:
            links.popitem(last=False)
        return link

    def take(self, request_id: str) -> Link | None:
        link = self._links.pop(request_id, None)
        if link is not None and self.clock() - link.born > self.max_age:
            return None
        return link

    def discard(self, link: Link) -> None:
        key = link.request.request_id
        if self._links.get(key) is link:
            del self._links[key]


class Observed:
    """What an observer saw of one response (cheap per chunk: byte count, usage scan, marker)."""

    __slots__ = ("bytes", "ended", "eos", "first_byte_at", "head", "headers", "model",
                 "parser", "partial", "served", "status", "streaming", "tail",
                 "terminated")  # fmt: skip

    def __init__(self) -> None:
        self.headers: dict[str, str] | None = None
        self.status = 0
        self.streaming = False
        self.served: str | None = None
        self.parser: UsageParser | None = None
        self.bytes = 0
        self.first_byte_at: float | None = None
        self.terminated = False
        self.tail = b""
        self.model: str | None = None
        self.head = b""  # the response's first bytes, while looking for its model
        self.eos = False  # the response ended (body end_of_stream, trailers, headers-only)
        self.ended = False
        self.partial = False  # igw stopped reading by choice (``observe_until="first-token"``)

    def chunk(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        if self.streaming and not self.terminated:
            joined = self.tail + chunk if self.tail else chunk
            if _TERMINAL.search(joined) is not None:
                self.terminated = True
            self.tail = joined[-_TAIL:]

    @property
    def truncated(self) -> bool:
        """An SSE response that ended without its last event (the upstream cut it short)."""
        return self.eos and self.streaming and self.status < 400 and not self.terminated

    @property
    def failed(self) -> bool:
        """The stream broke after the response started: the request did not complete."""
        return self.headers is not None and not self.eos and not self.partial

    def apply(self, request: Request) -> None:
        """Merge what was seen into the routing stream's request (its own findings win)."""
        if self.parser is not None and self.parser.usage is not None:
            request.usage.merge(self.parser.usage)
        if request.first_byte_at is None:
            request.first_byte_at = self.first_byte_at
        attrs = request.attrs
        if self.partial:
            attrs["response_size_unknown"] = True  # only the first chunk was read
        elif not attrs.get("response_bytes"):
            attrs["response_bytes"] = self.bytes
        if not request.response_status and self.status:
            request.response_status = self.status
        if self.served and not request.served_endpoint:
            request.served_endpoint = self.served
        if self.truncated:
            attrs["upstream_error"] = True
        if self.failed:
            attrs["outcome_unknown"] = True


class Observer:
    """One observability-mode stream. ``handle`` never returns a reply and never raises for
    what Envoy sent; ``close`` always runs (servicer ``finally``)."""

    __slots__ = ("d", "link", "request", "seen")

    def __init__(self, director: Director) -> None:
        self.d = director
        self.link: Link | None = None
        self.request: Request | None = None  # the routing stream's, or the observer's own
        self.seen = Observed()
        director.open_streams += 1

    def handle(self, message: msgs.ProcessingRequest) -> None:
        if self.seen.ended:
            return
        kind = message.WhichOneof("request")
        if kind == "response_body":
            self._body(message.response_body.body, message.response_body.end_of_stream)
        elif kind == "request_headers":
            self._request_headers(message)
        elif kind == "response_headers":
            self._response_headers(message)
        elif kind == "response_trailers":
            self._end(eos=True)
        # request body / trailers (not configured for observers) carry nothing igw needs

    def close(self, *, broken: bool) -> None:
        self.d.open_streams -= 1
        if not self.seen.ended:
            self._end(eos=False)

    def give_up(self) -> None:
        """Ignore the rest of the stream (after an unexpected error), releasing the request."""
        if self.seen.ended:
            return
        self.seen.ended = True
        if self.link is not None:
            self.link.observer_gone()

    # ---------------------------------------------------------------- messages
    def _request_headers(self, message: msgs.ProcessingRequest) -> None:
        if self.request is not None:
            return
        headers = msgs.header_map_to_dict(message.request_headers.headers)
        request_id = headers.get(REQUEST_ID_HEADER, "")
        link = self.d.live.take(request_id) if request_id else None
        if link is not None and link.request.finished_at is None and not link.routing_ended:
            link.watching = True
            self.link = link
            self.request = link.request
            return
        if link is not None:  # routing already finished it: nothing left to add
            self.seen.ended = True
            return
        request = Request(
            request_id=request_id or str(uuid.uuid4()),
            path=request_path(headers),
            headers=headers,
            metadata=msgs.metadata_to_dict(message.metadata_context),
        )
        apply_headers(request, self.d.objectives, use_subset_metadata=self.d.use_subset_metadata)
        self.request = request

    def _response_headers(self, message: msgs.ProcessingRequest) -> None:
        seen = self.seen
        if seen.headers is not None:
            return
        headers = msgs.header_map_to_dict(message.response_headers.headers)
        seen.headers = headers
        status_text = headers.get(":status") or headers.get("status") or "200"
        seen.status = int(status_text) if status_text.isdigit() else 0
        request = self.request
        seen.streaming = EVENT_STREAM in headers.get("content-type", "").lower() or bool(
            request is not None and request.stream
        )
        if self.d.usage_enabled:
            seen.parser = UsageParser(seen.streaming)
        if message.HasField("metadata_context"):
            seen.served = msgs.served_endpoint(msgs.metadata_to_dict(message.metadata_context))
        if message.response_headers.end_of_stream:
            self._end(eos=True)

    def _body(self, chunk: bytes, eos: bool) -> None:
        seen = self.seen
        if seen.headers is None:
            return  # a body before the headers: nothing to interpret it with
        if chunk:
            if seen.first_byte_at is None:
                seen.first_byte_at = time.monotonic()
                self._first_token()
            seen.chunk(chunk)
            if seen.model is None and self.link is None:
                self._find_model(chunk)
        if seen.parser is not None:
            seen.parser.feed(chunk, eos)
        if eos:
            self._end(eos=True)
        elif chunk and self.d.observe_until == "first-token":
            seen.partial = True  # the first token is all this deployment reads
            self._end(eos=False)

    @property
    def finished_early(self) -> bool:
        """igw needs no more of this stream: the servicer ends it (Envoy then stops sending)."""
        return self.seen.partial

    def _first_token(self) -> None:
        """Prefill is over: the scheduler's in-flight tokens and TTFT calibration hear it now."""
        request = self.request
        if self.link is None or request is None or request.decision is None:
            return
        if request.attrs.get("first_token_seen"):
            return
        request.attrs["first_token_seen"] = True
        self.d.observe_first_token(request.decision, time.monotonic() - request.received_at)

    def _find_model(self, chunk: bytes) -> None:
        """The first ``"model": "..."`` of the response (its first event, or the top of the
        JSON body), for an observer that has no routing stream to take the name from."""
        seen = self.seen
        seen.head += chunk[: MODEL_SCAN_BYTES - len(seen.head)]
        match = _MODEL.search(seen.head)
        if match is not None:
            try:
                value = json.loads(match.group(1))
            except ValueError:
                value = None
            seen.model = value if isinstance(value, str) else ""
        elif len(seen.head) >= MODEL_SCAN_BYTES:
            seen.model = ""  # not near the top: give up, the request keeps an empty label
        if seen.model is not None:
            seen.head = b""

    # ---------------------------------------------------------------- end
    def _end(self, *, eos: bool) -> None:
        seen = self.seen
        seen.ended = True
        seen.eos = eos
        if self.link is not None:
            self.link.observer_done(seen)
        elif self.request is not None or seen.headers is not None:
            self._record_alone()

    def _record_alone(self) -> None:
        """No routing stream to join: record what this stream saw on a request of its own."""
        seen = self.seen
        if seen.headers is None:
            return
        usage = seen.parser.usage if seen.parser is not None else None
        if not seen.model and usage is None and seen.status < 500:
            return  # nothing to label, count or blame (e.g. a count_tokens answer)
        request = self.request or Request(request_id=str(uuid.uuid4()))
        request.incoming_model = request.target_model = seen.model or ""
        served = seen.served or (request.headers.get(DESTINATION_HEADER) or "").split(",")[0]
        endpoint = self.d.pool.by_address(served.strip()) if served else None
        if endpoint is not None:
            request.decision = Decision(pool=self.d.pool, endpoints=[endpoint], reserved=False)
        try:
            self.d.pipeline.response_started(request, seen.status, seen.headers)
        except Exception:  # metrics must never break a stream
            log.exception("observer: response start of %s failed", request.request_id)
        seen.apply(request)
        self.d.finish(request, failed=seen.failed)


def first_token_hook(pipeline: Any) -> Callable[[Decision, float], None] | None:
    """The engine's ``observe_first_token``, found through the pipeline's account stage."""
    for stage in pipeline.response_stages:
        engine = getattr(stage, "engine", None) if stage.name == "account" else None
        hook = getattr(engine, "observe_first_token", None)
        if hook is not None:
            return hook
    return None
