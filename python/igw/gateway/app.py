"""The standalone gateway's HTTP front end: OpenAI requests in, the pipeline, the proxy out.

This is the thin adapter of DESIGN.md: it turns an HTTP request into a ``pipeline.Request``,
runs ``Pipeline.run`` (parse, admit, guard, route, flow control, schedule), hands the decision
to the ``Forwarder`` and answers every failure with an OpenAI-style JSON error. It knows
nothing about scoring, parsing or metrics names.

Protection against slow or hostile clients:
* headers: aiohttp closes a connection whose request head has not arrived within the
  keep-alive timeout (its timer runs from connection start or the last response and is not
  extended by trickling bytes), so ``idle_timeout`` bounds both idle keep-alive and slow heads;
* body: read under ``body_timeout``; a client that trickles its body gets 408 and is closed;
* size: ``client_max_size`` (413), checked against Content-Length before reading.
Handlers are cancelled when the client disconnects (``handler_cancellation``); the forwarder's
``finally`` then releases the in-flight reservation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence

from aiohttp import web

from igw.busypoll import make_poller, poke_of
from igw.errors import InferenceError
from igw.gateway.errors import error_response, inference_error_response
from igw.gateway.proxy import REQUEST_ID_HEADER, Answer, Forwarder
from igw.pipeline import Pipeline, Request
from igw.stages import active_stages

try:  # Python 3.11+
    from asyncio import timeout as _timeout
except ImportError:  # pragma: no cover - Python 3.10 (aiohttp depends on async-timeout there)
    from async_timeout import timeout as _timeout  # type: ignore[no-redef]

log = logging.getLogger("igw.gateway")

INFERENCE_PATHS = (
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/responses",
)


@dataclasses.dataclass(slots=True)
class Limits:
    """Bounds on what one client may cost the gateway."""

    client_max_size: int = 32 * 1024 * 1024  # bytes of request body (413 beyond)
    body_timeout: float = 30.0  # seconds to receive the whole body (408 beyond)
    idle_timeout: float = 30.0  # seconds for a request head / between keep-alive requests
    connect_timeout: float = 5.0  # upstream TCP connect
    upstream_read_timeout: float = 600.0  # upstream silence (between stream chunks too)
    max_attempts: int = 3  # ranked endpoints tried when one cannot be reached
    lean_client: bool | None = None  # httptools upstream client (None: when importable)
    # "httptools" (igw.gateway.fastfront: about half aiohttp's HTTP cost per request),
    # "aiohttp", or "auto": httptools when importable (it is a dependency), else aiohttp.
    frontend: str = "auto"
    # microseconds the loop keeps polling after each read instead of sleeping (0: off);
    # igw.busypoll says when that pays
    busy_poll_us: float = 0.0


# Request ids: 32 hex digits like a uuid4's, a random per-process half and a counter (unique
# within the process, and across processes with overwhelming odds) at a fraction of uuid4's
# cost (one urandom call per process instead of per request).
# The counter starts below 2**32 and counts requests, so its 16 hex digits never overflow;
# format(n, "016x") costs ~0.25 us against ~0.6 for an f-string with a mask and a format spec
# (timeit), and it runs before the request is written upstream (its x-request-id).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(4), "big"))


def new_request_id() -> str:
    return _ID_PREFIX + format(next(_ID_COUNTER), "016x")


FRONTENDS = ("auto", "httptools", "aiohttp")


def resolve_frontend(name: str) -> str:
    """The front end ``name`` means: ``auto`` is httptools when it can be imported."""
    if name not in FRONTENDS:
        raise ValueError(f"frontend: expected one of {', '.join(FRONTENDS)}, got {name!r}")
    if name == "auto":
        from igw.gateway.upstream import httptools

        return "aiohttp" if httptools is None else "httptools"
    return name


ModelsProvider = Callable[[], Sequence[str]]
ReadyCheck = Callable[[], bool]


class Gateway:
    """Owns the aiohttp application, the upstream sessions and the request handler."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        models: ModelsProvider,
        ready: ReadyCheck = lambda: True,
        metrics_text: Callable[[], bytes] | None = None,
        on_error: Callable[[Request, InferenceError], None] | None = None,
        report_failure: Callable | None = None,
        mirror: Callable[[Request], None] | None = None,
        limits: Limits | None = None,
        authorize: Callable[[Mapping[str, str]], None] | None = None,
    ) -> None:
        # Stages configured to do nothing (an admit / guard.in seam with no checks) are left
        # out: each costs a coroutine and an await on every request's critical path.
        pipeline.stages[:] = active_stages(pipeline.stages)
        self.pipeline = pipeline
        # raises InferenceError (401) for a caller the access: section does not know
        self.authorize = authorize
        self.limits = limits or Limits()
        self.models = models
        self.ready = ready
        self.metrics_text = metrics_text
        self.on_error = on_error
        self.mirror = mirror
        self.poller = make_poller(self.limits.busy_poll_us)  # None: busy polling is off
        # called by the fast front end's and the lean client's read callbacks (None: off)
        self.poke = poke_of(self.poller)
        self.forwarder = Forwarder(
            pipeline,
            connect_timeout=self.limits.connect_timeout,
            read_timeout=self.limits.upstream_read_timeout,
            report_failure=report_failure,
            max_attempts=self.limits.max_attempts,
            lean=self.limits.lean_client,
            on_read=self.poke,
        )
        self._runner: web.AppRunner | None = None
        self._front = None  # igw.gateway.fastfront.FastFront with frontend="httptools"
        self.port: int | None = None

    # -- application ------------------------------------------------------------------
    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.client_max_size)
        for path in INFERENCE_PATHS:
            app.router.add_post(path, self.handle_inference)
        app.router.add_get("/v1/models", self.handle_models)
        app.router.add_get("/health", self.handle_health)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_route("*", "/{tail:.*}", self.handle_unknown)
        app.on_cleanup.append(self._cleanup)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on ``host:port`` (0 = a free port); returns the bound port."""
        frontend = resolve_frontend(self.limits.frontend)
        if self.poke is not None and frontend == "aiohttp" and not self.forwarder.lean:
            log.warning(
                "busy polling is on but has nothing to keep it going: only the httptools "
                "front end and upstream client report their reads to it"
            )
        if frontend == "httptools":
            from igw.gateway.fastfront import FastFront

            self._front = FastFront(self)
            self.port = await self._front.start(host, port)
            return self.port
        self._runner = web.AppRunner(
            self.build_app(),
            access_log=None,
            handler_cancellation=True,
            keepalive_timeout=self.limits.idle_timeout,
            lingering_time=1.0,  # after an early answer (408/413) drain the unread body briefly
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=1024)
        await site.start()
        server = site._server  # the bound socket is the only way to learn port 0's choice
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def stop(self) -> None:
        if self._front is not None:
            front, self._front = self._front, None
            await front.stop()
            await self.forwarder.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _cleanup(self, _app: web.Application) -> None:
        await self.forwarder.close()

    # -- handlers ---------------------------------------------------------------------
    async def handle_inference(self, http_request: web.Request) -> web.StreamResponse:
        limits = self.limits
        length = http_request.content_length
        if length is not None and length > limits.client_max_size:
            return _too_large(limits.client_max_size)
        try:
            if http_request.content.is_eof():  # all of it arrived with the head: no timer
                body = await http_request.read()
            else:
                async with _timeout(limits.body_timeout):
                    body = await http_request.read()
        except web.HTTPRequestEntityTooLarge:
            return _too_large(limits.client_max_size)
        except asyncio.TimeoutError:
            response = error_response(
                408,
                f"request body not received within {limits.body_timeout:g}s",
                code="body_timeout",
            )
            response.force_close()  # the rest of the body is never read
            return response
        headers = {name.lower(): value for name, value in http_request.headers.items()}
        response = await self.serve(http_request, http_request.path, headers, body)
        return response.to_aiohttp() if isinstance(response, Answer) else response

    async def serve(self, http_request, path: str, headers: dict[str, str], body: bytes):
        """Pipeline and forward one inference request (headers with lower-case names).

        ``http_request`` is the front end's request object: aiohttp's, or ``FastRequest``.
        """
        request = Request(  # received_at: its default factory, time.monotonic
            request_id=headers.get(REQUEST_ID_HEADER) or new_request_id(),
            path=path,
            headers=headers,
            body=body,
        )
        # stages' bookkeeping waits until the request is written upstream (Request.later):
        # the forwarder runs it then, Pipeline.finish at the latest
        request.after_send = []
        pipeline = self.pipeline
        try:
            index = pipeline.advance(request)
            if index < len(pipeline.stages):
                await pipeline.run_from(request, index)
        except InferenceError as err:
            self._not_sent(request)  # a stage after schedule refused: undo it
            if self.on_error is not None:
                self.on_error(request, err)
            return inference_error_response(err)
        except Exception:
            # A bug in a stage must not leak a reservation nor answer in non-OpenAI form.
            log.exception("request %s: pipeline failed", request.request_id)
            self._not_sent(request)
            return error_response(500, "internal error in the gateway", code="internal_error")
        except BaseException:  # cancelled: the client went away during flow control
            self._not_sent(request)
            raise
        if self.mirror is not None:
            try:
                self.mirror(request)
            except Exception:  # a shadow copy must never cost the real request
                log.exception("request %s: mirroring failed", request.request_id)
        return await self.forwarder.forward(http_request, request)

    def _not_sent(self, request: Request) -> None:
        """The pipeline stopped the request before it was sent: undo a scheduled one
        (``finish``), and run what stages left for later either way (a failed pick's
        timing, say)."""
        if request.decision is not None:
            self.pipeline.finish(request, failed=True)
        else:
            request.sent()

    async def handle_models(self, request: web.Request) -> web.Response:
        return self.models_response(request.headers)

    def models_response(self, headers: Mapping[str, str]) -> web.Response:
        """``GET /v1/models``: the models igw routes, to callers the access: section admits."""
        if self.authorize is not None:
            try:
                self.authorize(headers)
            except InferenceError as err:
                return inference_error_response(err)
        created = int(time.time())
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "igw"}
            for name in sorted(set(self.models()))
        ]
        return web.json_response({"object": "list", "data": data})

    async def handle_health(self, _request: web.Request) -> web.Response:
        if self.ready():
            return web.json_response({"status": "ok"})
        return error_response(503, "no ready endpoints yet", code="not_ready")

    async def handle_metrics(self, _request: web.Request) -> web.Response:
        text = self.metrics_text() if self.metrics_text is not None else b""
        return web.Response(body=text, content_type="text/plain", charset="utf-8")

    async def handle_unknown(self, request: web.Request) -> web.Response:
        return self.unknown_response(request.method, request.path)

    @staticmethod
    def unknown_response(method: str, path: str) -> web.Response:
        if path in INFERENCE_PATHS:
            return error_response(
                405, f"{method} is not allowed on {path}; use POST", code="method_not_allowed"
            )
        return error_response(
            404,
            f"unknown path {path}; the gateway serves "
            + ", ".join((*INFERENCE_PATHS, "/v1/models", "/health", "/metrics")),
            code="unknown_path",
        )


def _too_large(limit: int) -> web.Response:
    return error_response(
        413, f"request body exceeds the limit of {limit} bytes", code="request_too_large"
    )
