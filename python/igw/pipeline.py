"""One request pipeline for both front ends.

The ext_proc service and the standalone HTTP gateway each turn their protocol into a
``Request``, run it through the same ordered stages, and turn the result (a ``Decision`` or
an ``InferenceError``) back into their protocol. Stages know nothing about Envoy or HTTP.

Request phase (``Pipeline.run``), in order:
    parse -> admit -> guard.in -> route -> flow control -> schedule
then the front end forwards to ``request.decision.endpoints`` and feeds the response
phase (``Pipeline.response_started`` / ``response_chunk`` / ``finish``): guard.out, account.

Two kinds of response stage. One that may change the bytes (guard.out redacts or cuts, the
reverse model rewrite) must run before the bytes go to the client. One that only reads them
(usage parsing, accounting) says so with ``observe_only = True``: a front end that relays
the answer uses ``relay_started`` / ``relay_chunk``, which run the byte-changing stages at
once and queue the observers' calls, and runs the queue with ``observe`` once the bytes are
handed to the client socket, so the observers' CPU is off the client's latency. Each observer
still sees, in order, exactly the bytes it would have seen at its place in the stage list.
``finish`` runs whatever is still queued before any ``on_finish``, so nothing observed is lost
when a front end never calls ``observe`` (a client gone mid-write, an error).

``finish`` is idempotent and must run exactly once per scheduled request in effect, whatever
happens (normal end, upstream error, client gone, stream broken): it releases the in-flight
counters the scheduler reserved, so a leak here would slowly skew every later decision.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from igw.datastore import Endpoint, Pool


log = logging.getLogger("igw.pipeline")

# request.attrs key a response stage sets when it has ended the answer by policy (igw.guard's
# guard.out): the front end stops reading the replica, whose generation nobody will see.
RESPONSE_BLOCKED_ATTR = "guard.blocked"


class RequestKind(enum.Enum):
    COMPLETIONS = "completions"
    CHAT = "chat/completions"
    EMBEDDINGS = "embeddings"
    RESPONSES = "responses"
    CONVERSATIONS = "conversations"
    IMAGES = "images/generations"
    PASSTHROUGH = "passthrough"


@dataclasses.dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    total_tokens: int = 0

    def merge(self, other: Usage) -> None:
        """Later non-zero fields win (streams may split usage across chunks)."""
        for field in dataclasses.fields(self):
            value = getattr(other, field.name)
            if value:
                setattr(self, field.name, value)


@dataclasses.dataclass(slots=True)
class Decision:
    """What the schedule stage chose."""

    pool: Pool
    endpoints: list[Endpoint]  # ranked: primary first, then fallbacks
    uncached_tokens: int = 0  # charged to the primary's in-flight tokens
    reserved: bool = True  # in-flight counters were incremented and must be released
    matched_blocks: int = 0  # the primary's prefix match, in blocks
    total_blocks: int = 0
    scores: dict[str, dict[str, float]] | None = None  # plugin -> address -> score
    profile: str = "default"

    @property
    def primary(self) -> Endpoint:
        return self.endpoints[0]

    def destination_header(self) -> str:
        """The value of ``x-gateway-destination-endpoint`` (comma-separated, no spaces)."""
        return ",".join(e.address for e in self.endpoints)


@dataclasses.dataclass(slots=True)
class Request:
    """Everything the pipeline knows about one inference request."""

    request_id: str
    path: str = "/v1/completions"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)  # lower-cased names
    body: bytes = b""
    received_at: float = dataclasses.field(default_factory=time.monotonic)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)  # filter_metadata etc.

    # parse
    kind: RequestKind = RequestKind.PASSTHROUGH
    body_json: dict[str, Any] | None = None
    incoming_model: str = ""
    target_model: str = ""
    prompt: bytes = b""  # the text hashed for prefix matching
    prompt_tokens_estimate: int = 0
    stream: bool = False
    objective: str | None = None
    priority: int = 0
    fairness_id: str = "default-flow"
    cache_salt: str = ""
    lora: str | None = None  # adapter name when the target model is a LoRA adapter
    subset: list[str] | None = None  # allowed "ip[:port]" (subset hint / test header)

    # route
    pool_name: str = ""
    rewrite_rule: str | None = None

    # schedule
    decision: Decision | None = None

    # forward
    out_body: bytes | None = None  # body to send upstream; None = unchanged ``body``

    # response / account
    response_status: int = 0
    response_streaming: bool = False
    served_endpoint: str | None = None
    usage: Usage = dataclasses.field(default_factory=Usage)
    first_byte_at: float | None = None
    finished_at: float | None = None
    failed: bool = False
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)  # plugin scratch space
    # observer calls queued by Pipeline.relay_started / relay_chunk, run by observe / finish,
    # and the plan (which stages run before the write) chosen for this response
    observations: list[tuple[Any, ...]] | None = dataclasses.field(default=None, repr=False)
    relay_plan: Any = dataclasses.field(default=None, repr=False)
    # bookkeeping a stage left for after the request is on its way (``later``); None: the
    # front end runs nothing later, so ``later`` runs the call at once
    after_send: list[tuple[Any, tuple[Any, ...]]] | None = dataclasses.field(
        default=None, repr=False
    )

    @property
    def upstream_body(self) -> bytes:
        return self.body if self.out_body is None else self.out_body

    def later(self, call: Any, *args: Any) -> None:
        """Run ``call(*args)`` once the request has been sent on its way (``sent``), or now
        when the front end does not defer (``after_send`` is None).

        Why: measured at concurrency 1 on the 2-core VM, 100 us of work before a proxy
        writes the request upstream added ~100 us to every request, the same work right
        after the write ~35 us: the replica then computes while the gateway does its
        bookkeeping. Stages put here what the forwarding does not need (the scheduled
        metrics, the engine's timing records, the prefix index's record of the prompt)."""
        queued = self.after_send
        if queued is None:
            call(*args)
        else:
            queued.append((call, args))

    def sent(self) -> None:
        """The request is on its way: run what ``later`` queued, in order, once. Also run by
        ``Pipeline.finish`` (a request that was never sent still gets its bookkeeping)."""
        queued = self.after_send
        if queued:
            self.after_send = []
            for call, args in queued:
                try:
                    call(*args)
                except Exception:  # bookkeeping must not fail a request already sent
                    log.exception("request %s: deferred %r failed", self.request_id, call)

    def header(self, *names: str) -> str | None:
        """First present header among ``names`` (new name first, then legacy aliases)."""
        for name in names:
            value = self.headers.get(name)
            if value is not None:
                return value
        return None


@runtime_checkable
class Stage(Protocol):
    """One step of the request phase. Raise ``InferenceError`` to stop with a status."""

    name: str

    async def process(self, request: Request) -> None: ...


@runtime_checkable
class ResponseStage(Protocol):
    """Sees the response: headers once, then every body chunk, then the end exactly once.

    A stage may also set a class attribute ``observe_only = True``: it promises that
    ``on_chunk`` returns its input unchanged (the return value is then ignored) and that it
    needs to see the response only after the client has it. The pipeline may then run its
    ``on_headers`` / ``on_chunk`` after the bytes are written (see ``Pipeline.relay_chunk``).
    Without the attribute a stage is taken to change the bytes and always runs first.
    A stage that changes bytes only for some requests may also have a method
    ``changes_bytes(request) -> bool``, asked before the response's head is seen: when it
    answers False (the reverse model rewrite of a request that was not rewritten) the stage
    is run as an observer for that response.

    A stage whose ``on_headers`` / ``on_chunk`` do nothing whenever it runs as an observer
    (one that only hears the finish, or one that only rewrites bytes) may say so with a
    class attribute ``reads_response = False``: the relaying front ends then leave it out of
    the response's observers (two calls fewer per answer); its ``on_finish`` still runs, and
    the all-at-once path (``response_started`` / ``response_chunk``) still calls it.
    """

    name: str

    def on_headers(self, request: Request, status: int, headers: dict[str, str]) -> None: ...

    def on_chunk(self, request: Request, chunk: bytes, end_of_stream: bool) -> bytes: ...

    def on_finish(self, request: Request) -> None: ...


def observes_only(stage: object) -> bool:
    """Whether ``stage`` declared that it only reads the response (``observe_only``)."""
    return getattr(stage, "observe_only", False) is True


def reads_response(stage: object) -> bool:
    """Whether ``stage`` must see the head and chunks when it runs as an observer (it did
    not declare ``reads_response = False``)."""
    return getattr(stage, "reads_response", True) is not False


# (segments, head observers, head changers): each segment is (observers, changer or None)
RelayPlan = tuple[
    tuple[tuple[tuple["ResponseStage", ...], "ResponseStage | None"], ...],
    tuple["ResponseStage", ...],
    tuple["ResponseStage", ...],
]


def _plan_of(stages: list[ResponseStage], observer: Any) -> RelayPlan:
    """Cut ``stages`` into segments ``(observers, changer)``: the observers of a segment see
    the bytes as the changers before them left them. ``observer(stage)`` says which is which;
    an observer that does not read the response (``reads_response``) is left out."""
    segments = []
    observers: list[ResponseStage] = []
    for stage in stages:
        if not observer(stage):
            segments.append((tuple(observers), stage))
            observers = []
        elif reads_response(stage):
            observers.append(stage)
    if observers:
        segments.append((tuple(observers), None))
    return (
        tuple(segments),
        tuple(stage for stage in stages if observer(stage) and reads_response(stage)),
        tuple(stage for stage in stages if not observer(stage)),
    )


def _observer_failed(request: Request, stage: object) -> None:
    log.exception(
        "request %s: response stage %s failed while observing",
        request.request_id, getattr(stage, "name", stage),
    )  # fmt: skip


class Pipeline:
    """Runs the configured stages in order; the order comes from config, not code."""

    def __init__(
        self, stages: list[Stage], response_stages: list[ResponseStage] | None = None
    ) -> None:
        self.stages = list(stages)
        self.response_stages = list(response_stages or [])
        self._planned: list[ResponseStage] | None = None
        self._plan: RelayPlan = ((), (), ())
        # every stage as an observer: for a response no byte-changing stage will touch (each
        # says so through ``changes_bytes(request)``); None when one cannot say
        self._quiet_plan: RelayPlan | None = None
        self._stepped: list[Stage] | None = None
        self._step_list: list[tuple[Stage, Any]] = []

    async def run(self, request: Request) -> Request:
        return await self.run_from(request, self.advance(request))

    def advance(self, request: Request) -> int:
        """Run the stages that can finish at once (``process_now``), in order, up to the
        first that must wait; returns its index (``len(stages)``: all done). A front end
        then awaits ``run_from`` only when that is not the end: the usual request costs no
        coroutine at all."""
        steps = self._steps()
        for index, (_, now) in enumerate(steps):
            if now is None or not now(request):
                return index
        return len(steps)

    async def run_from(self, request: Request, index: int) -> Request:
        """The stages from ``index`` on (``advance`` ran the ones before)."""
        steps = self._steps()
        if index < len(steps):
            await steps[index][0].process(request)  # process_now declined: it waits
            for stage, now in steps[index + 1 :]:
                if now is None or not now(request):
                    await stage.process(request)
        return request

    def _steps(self) -> list[tuple[Stage, Any]]:
        """``(stage, its process_now or None)`` per stage, rebuilt when ``stages`` changed.

        A stage whose work usually needs no wait may offer ``process_now(request) -> bool``:
        True when its work is done; False when it must wait, and then ``process`` is awaited
        next to finish it (``process_now`` may have begun: the schedule stage has picked and
        ``process`` only waits at the prefill gate; the parse stage has done nothing and
        ``process`` decodes in a thread). The usual request then costs no coroutine per stage
        (four on the standalone gateway's path)."""
        stages = self.stages
        if stages != self._stepped:
            self._step_list = [(stage, getattr(stage, "process_now", None)) for stage in stages]
            self._stepped = list(stages)
        return self._step_list

    # -- the response, all stages at once (the ext_proc front ends) ------------------------
    def response_started(self, request: Request, status: int, headers: dict[str, str]) -> None:
        request.response_status = status
        for stage in self.response_stages:
            stage.on_headers(request, status, headers)

    def response_chunk(self, request: Request, chunk: bytes, end_of_stream: bool) -> bytes:
        if request.first_byte_at is None and chunk:
            request.first_byte_at = time.monotonic()
        for stage in self.response_stages:
            chunk = stage.on_chunk(request, chunk, end_of_stream)
        return chunk

    # -- the response, observers after the write (the standalone gateway) -----------------
    def _relay_plan(self, request: Request) -> RelayPlan:
        """The plan for ``request``'s response. Rebuilt when ``response_stages`` changed
        (``FlowControlService.attach`` appends to it, tests replace stages)."""
        stages = self.response_stages
        if stages != self._planned:
            self._plan = _plan_of(stages, observes_only)
            changers = self._plan[2]
            quiet = bool(changers) and all(
                callable(getattr(stage, "changes_bytes", None)) for stage in changers
            )
            self._quiet_plan = _plan_of(stages, lambda _stage: True) if quiet else None
            self._planned = list(stages)
        if self._quiet_plan is not None:
            for changer in self._plan[2]:
                if changer.changes_bytes(request):  # type: ignore[attr-defined]
                    return self._plan
            return self._quiet_plan  # e.g. no model rewrite and no other changer
        return self._plan

    def relay_started(self, request: Request, status: int, headers: dict[str, str]) -> None:
        """``response_started`` for a front end that relays the answer: the stages that may
        change this response's bytes see the head now, the others' calls are queued for
        ``observe``. A stage that may change bytes in general but says it will not for this
        request (``changes_bytes(request)`` false) is run as an observer for it."""
        request.response_status = status
        plan = request.relay_plan = self._relay_plan(request)
        _, observers, changers = plan
        # the observers see the head together (the changers' on_headers do not change it)
        if observers:
            entry = (observers, False, status, headers)
            queued = request.observations
            if queued is None:
                request.observations = [entry]
            else:
                queued.append(entry)
        for changer in changers:
            changer.on_headers(request, status, headers)

    def relay_chunk(self, request: Request, chunk: bytes, end_of_stream: bool) -> bytes:
        """The bytes to send for ``chunk``: the byte-changing stages run now; each observer's
        ``on_chunk`` is queued with the bytes it would have seen. Call ``observe`` once the
        result has been handed to the client."""
        if request.first_byte_at is None and chunk:
            request.first_byte_at = time.monotonic()
        queued = request.observations
        if queued is None:
            queued = request.observations = []
        plan = request.relay_plan  # fixed by relay_started for the rest of this response
        if plan is None:
            plan = request.relay_plan = self._relay_plan(request)
        for observers, changer in plan[0]:
            if observers:
                queued.append((observers, True, chunk, end_of_stream))
            if changer is not None:
                chunk = changer.on_chunk(request, chunk, end_of_stream)
        return chunk

    def observe(self, request: Request) -> None:
        """Run the observer calls queued by ``relay_started`` / ``relay_chunk``, in order.

        An observer that raises is logged and skipped: the bytes are already with the client
        and the other observers (accounting) must still see them."""
        queued = request.observations
        if not queued:
            return
        request.observations = None
        for observers, is_chunk, first, second in queued:
            if is_chunk:
                for stage in observers:
                    try:
                        stage.on_chunk(request, first, second)
                    except Exception:
                        _observer_failed(request, stage)
            else:
                for stage in observers:
                    try:
                        stage.on_headers(request, first, second)
                    except Exception:
                        _observer_failed(request, stage)

    def finish(self, request: Request, *, failed: bool = False) -> None:
        """End of the request in every case; safe to call more than once.

        Observer calls still queued run first, so every stage has seen the whole response
        before its ``on_finish``."""
        if request.finished_at is not None:
            return
        request.finished_at = time.monotonic()
        request.failed = request.failed or failed
        if request.after_send:
            request.sent()
        if request.observations:
            self.observe(request)
        for stage in self.response_stages:
            stage.on_finish(request)
