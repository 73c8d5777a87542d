"""The HTTP face of one simulated replica: vLLM's OpenAI-compatible routes on aiohttp.

Handlers turn the body into an engine ``Seq`` (``igw.sim.jobs``) and wait on an
``asyncio.Event`` that the replica's engine task sets when the request has new tokens (every
step for a stream, or every ``stream_interval`` tokens; only at the end otherwise); a stream
then writes every new token's SSE event in one ``write``. No handler sleeps or polls, so
hundreds of concurrent streams cost at most one wake-up per step each.

Extensions a real vLLM does not have (all under ``x-sim-``): non-streamed responses carry
the model-time latencies ``x-sim-ttft-ms``, ``x-sim-queue-ms`` and ``x-sim-e2e-ms`` (what
the simulated GPU took, before ``--speed``), and ``x-sim-replica`` names the replica.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web

from igw.sim import jobs, protocol, text
from igw.sim.metrics import CONTENT_TYPE
from igw.sim.model import Seq
from igw.sim.protocol import ChatRequest, CompletionRequest, RequestError

if TYPE_CHECKING:
    from igw.sim.replica import SimReplica

log = logging.getLogger("igw.sim")

MAX_BODY_BYTES = 64 * 1024 * 1024
ADMIN_PREFIX = "/sim/"  # simulator-only routes; they answer even while the replica is down
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def json_error(status: int, message: str, param: str | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=protocol.error_body(status, message, param),
        content_type="application/json",
    )


class _Waiter:
    """Engine -> handler wake-up for one request.

    A stream wakes for its first token, then every ``interval`` tokens (``stream_interval``,
    default 1 = every token, as vLLM), at the end, and when a fault cuts it; a non-streamed
    request wakes only at the end or at its fault point.
    """

    __slots__ = ("event", "failed", "interval", "stream", "until", "woken_at")

    def __init__(self, stream: bool, until: int, interval: int = 1) -> None:
        self.event = asyncio.Event()
        self.stream = stream
        self.until = until  # tokens after which the request ends (its target or fault point)
        self.interval = interval
        self.woken_at = 0  # tokens produced at the last wake-up
        self.failed = False  # the engine broke (a bug): answer 500 / cut the stream

    def on_progress(self, seq: Seq) -> None:
        n = seq.output
        if seq.finished or n >= self.until:
            self.event.set()
        elif self.stream and (n == 1 or n - self.woken_at >= self.interval):
            self.woken_at = n
            self.event.set()

    def on_error(self, seq: Seq) -> None:
        self.failed = True
        self.event.set()


class Handlers:
    """Route handlers of one replica (bound methods; no app-level state)."""

    def __init__(self, replica: SimReplica) -> None:
        self.replica = replica

    # -------------------------------------------------------------------------- plumbing

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        if self.replica.faults.down and not request.path.startswith(ADMIN_PREFIX):
            return json_error(503, "simulated replica is down")
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return json_error(exc.status, exc.reason)

    # ------------------------------------------------------------------------ admin

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(dataclasses.asdict(self.replica.faults))

    async def set_faults(self, request: web.Request) -> web.Response:
        """Change fault switches of a running replica: ``{"down": true, ...}`` (only the
        fields given change). Lets a benchmark driving ``igw sim`` as a separate process
        inject faults mid-run; answers even while the replica is ``down``."""
        try:
            data = protocol.decode(await request.read())
        except RequestError as exc:
            return json_error(exc.status, exc.message)
        faults = self.replica.faults
        known = {f.name for f in dataclasses.fields(faults)}
        unknown = sorted(set(data) - known)
        if unknown:
            return json_error(400, f"unknown fault field(s) {unknown}; known: {sorted(known)}")
        for name in ("down", "fail"):
            if name in data and not isinstance(data[name], bool):
                return json_error(400, f"{name}: expected true or false", name)
        trial = dataclasses.replace(faults)
        try:
            for name, value in data.items():
                setattr(trial, name, value)
        except ValueError as exc:
            return json_error(400, str(exc))
        for name, value in data.items():  # all valid: apply together
            setattr(faults, name, value)
        return web.json_response(dataclasses.asdict(faults))

    # ------------------------------------------------------------------------ small routes

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        from igw import __version__

        return web.json_response({"version": f"igw-sim {__version__}"})

    async def metrics(self, request: web.Request) -> web.Response:
        body = self.replica.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def models(self, request: web.Request) -> web.Response:
        replica = self.replica
        created = int(time.time())
        base = replica.models[0]
        card = {
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "max_model_len": replica.params.max_model_len,
        }
        data = [{"id": m, "root": base, "parent": None, **card} for m in replica.models]
        data += [
            {"id": name, "root": f"/adapters/{name}", "parent": base, **card}
            for name in replica.loras
        ]
        return web.json_response({"object": "list", "data": data})

    async def load_lora(self, request: web.Request) -> web.Response:
        """vLLM's runtime adapter loading: ``{"lora_name": ..., "lora_path": ...}``."""
        name = await self._lora_name(request)
        replica = self.replica
        if name in replica.loras or name in replica.models:
            return json_error(
                400, f"The lora adapter '{name}' has already been loaded.", "lora_name"
            )
        replica.loras.append(name)
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def unload_lora(self, request: web.Request) -> web.Response:
        name = await self._lora_name(request)
        if name not in self.replica.loras:
            return json_error(404, f"The lora adapter '{name}' cannot be found.", "lora_name")
        self.replica.loras.remove(name)
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    async def _lora_name(self, request: web.Request) -> str:
        try:
            data = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise web.HTTPBadRequest(reason=f"Invalid JSON body: {exc}") from None
        name = data.get("lora_name") if isinstance(data, dict) else None
        if not isinstance(name, str) or not name:
            raise web.HTTPBadRequest(reason="lora_name: expected a non-empty string")
        return name

    async def tokenize(self, request: web.Request) -> web.Response:
        """vLLM's ``/tokenize``: ``{"prompt": ...}`` or ``{"messages": [...]}`` -> ids.

        The ids are pseudo-tokens (``text.pseudo_token_ids``): the count is what the
        engine charges for the prompt, and equal text always gives equal ids.
        """
        raw = await request.read()
        params = self.replica.params
        try:
            data = protocol.decode(raw)
            chat = "messages" in data
            req = protocol.validate(ChatRequest if chat else CompletionRequest, data)
            jobs.resolve_model(self.replica, req.model)
            if chat:
                prompt = jobs.chat_prompt(req)
                ids = text.pseudo_token_ids(prompt, params.bytes_per_token)
            elif isinstance(req.prompt, list) and req.prompt and isinstance(req.prompt[0], int):
                ids = list(req.prompt)
            else:
                prompt, _ = jobs.completion_prompt(req.prompt, params.bytes_per_token)
                ids = text.pseudo_token_ids(prompt, params.bytes_per_token)
        except RequestError as exc:
            return json_error(exc.status, exc.message, exc.param)
        return web.json_response(
            {
                "count": len(ids),
                "max_model_len": params.max_model_len,
                "tokens": ids,
                "token_strs": None,
            }
        )

    # ------------------------------------------------------------------------- generation

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        replica = self.replica
        try:
            job = jobs.prepare(replica, await request.read(), chat)
        except RequestError as exc:
            return json_error(exc.status, exc.message, exc.param)
        if replica.faults.fail:
            return json_error(500, "simulated failure: this replica fails every request")
        seq = job.seq
        until = job.break_after if job.break_after is not None else seq.target
        waiter = _Waiter(job.stream, until, replica.stream_interval)
        seq.listener = waiter
        replica.submit(seq)
        try:
            if job.stream:
                return await self._stream(request, job, waiter)
            return await self._complete(job, waiter)
        finally:
            if not seq.finished:
                replica.abort(seq)

    async def _complete(self, job: jobs.Job, waiter: _Waiter) -> web.Response:
        seq = job.seq
        await waiter.event.wait()
        if waiter.failed:
            return json_error(500, "simulator engine error; see the server log")
        if job.break_after is not None and not seq.finished:
            return json_error(500, f"simulated error after {seq.output} tokens")
        body = {
            "id": job.rid,
            "object": "chat.completion" if job.chat else "text_completion",
            "created": job.created,
            "model": job.model,
            "choices": [jobs.choice(job, text.filler(job.start_word, 0, seq.output))],
            "usage": jobs.usage(job),
        }
        arrival = seq.arrival
        headers = {
            "x-sim-replica": str(self.replica.index),
            "x-sim-ttft-ms": f"{(seq.first_token_at or arrival) - arrival:.3f}",
            "x-sim-queue-ms": f"{(seq.scheduled_at or arrival) - arrival:.3f}",
            "x-sim-e2e-ms": f"{(seq.finished_at or arrival) - arrival:.3f}",
        }
        return web.Response(
            body=json.dumps(body).encode(), content_type="application/json", headers=headers
        )

    async def _stream(
        self, request: web.Request, job: jobs.Job, waiter: _Waiter
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={**SSE_HEADERS, "x-sim-replica": str(self.replica.index)})
        try:
            await resp.prepare(request)
            await self._stream_events(request, resp, job, waiter)
        except ConnectionError as exc:
            # The client (usually a gateway dropping its upstream request) went away while
            # we wrote: routine for a server, so no ERROR and no traceback. The caller
            # aborts the unfinished sequence.
            log.debug("replica %d: client left request %s: %s", self.replica.index, job.rid, exc)
        return resp

    async def _stream_events(
        self, request: web.Request, resp: web.StreamResponse, job: jobs.Job, waiter: _Waiter
    ) -> None:
        seq = job.seq
        head = (
            f'data: {{"id":"{job.rid}","object":"'
            f'{"chat.completion.chunk" if job.chat else "text_completion"}",'
            f'"created":{job.created},"model":{json.dumps(job.model)},"choices":[{{"index":0,'
        )
        # vLLM sends a chat stream's role delta with the first token, not before it, so a
        # client timing the first event still measures the prefill.
        role = ""
        if job.chat:
            role = (
                head + '"delta":{"role":"assistant","content":""},"logprobs":null,'
                '"finish_reason":null}]}\n\n'
            )
            open_text, mid = '"delta":{"content":', '},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            open_text, mid = (
                '"text":',
                ',"logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n',
            )
        stop = job.break_after if job.break_after is not None else seq.target
        words = text.WORDS_JSON
        n_words = len(words)
        sent = 0
        while True:
            await waiter.event.wait()
            waiter.event.clear()
            if waiter.failed:
                _cut(request)
                return
            upto = min(seq.output, stop)
            if job.continuous_usage:  # vLLM's continuous_usage_stats: usage on every chunk
                parts = [
                    head
                    + open_text
                    + words[(job.start_word + i) % n_words]
                    + mid[: -len("}\n\n")]
                    + ',"usage":'
                    + jobs.usage_text(job, i + 1)
                    + "}\n\n"
                    for i in range(sent, upto)
                ]
            else:
                parts = [
                    head + open_text + words[(job.start_word + i) % n_words] + mid
                    for i in range(sent, upto)
                ]
            if role and parts:
                parts.insert(0, role)
                role = ""
            sent = upto
            if job.break_after is not None and sent >= stop:
                tail = self._break(job)
                await resp.write(("".join(parts) + tail).encode())
                if tail:  # "event" mode: vLLM's way, an error object then [DONE]
                    await resp.write_eof()
                else:
                    _cut(request)
                return
            if seq.finished:
                if parts:
                    parts[-1] = parts[-1].replace(
                        '"finish_reason":null', f'"finish_reason":"{seq.finish_reason}"'
                    )
                if job.usage_chunk:
                    parts.append(
                        head[: head.index('"choices"')]
                        + '"choices":[],"usage":'
                        + json.dumps(jobs.usage(job))
                        + "}\n\n"
                    )
                parts.append("data: [DONE]\n\n")
                await resp.write("".join(parts).encode())
                await resp.write_eof()
                return
            if parts:
                await resp.write("".join(parts).encode())

    def _break(self, job: jobs.Job) -> str:
        """The tail of a stream that breaks: an error event (``event`` mode) or nothing."""
        if self.replica.faults.error_mode != "event":
            return ""
        err = protocol.error_body(500, f"simulated error after {job.break_after} tokens")
        return "data: " + err.decode() + "\n\ndata: [DONE]\n\n"


def _cut(request: web.Request) -> None:
    """End a response abruptly: close the connection mid-body (no final chunk)."""
    transport = request.transport
    if transport is not None:
        transport.close()


def build_app(replica: SimReplica) -> web.Application:
    handlers = Handlers(replica)
    app = web.Application(middlewares=[handlers.middleware], client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/v1/completions", handlers.completions)
    app.router.add_post("/v1/chat/completions", handlers.chat_completions)
    app.router.add_get("/v1/models", handlers.models)
    app.router.add_get("/health", handlers.health)
    app.router.add_get("/version", handlers.version)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_post("/tokenize", handlers.tokenize)
    app.router.add_get(ADMIN_PREFIX + "faults", handlers.get_faults)
    app.router.add_post(ADMIN_PREFIX + "faults", handlers.set_faults)
    app.router.add_post("/v1/load_lora_adapter", handlers.load_lora)
    app.router.add_post("/v1/unload_lora_adapter", handlers.unload_lora)
    return app
