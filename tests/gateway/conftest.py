"""Fixtures for the gateway tests: scriptable fake replicas and a gateway in front of them.

The fake replica is a tiny aiohttp app whose behaviour each test sets (normal answer, a
stream that breaks after N chunks, 503 on everything, a gated stream that waits for the test
before each chunk). The gateway runs the real pipeline stages (``igw.stages``) with a small
round-robin engine so these tests exercise the HTTP adapter, not the scoring.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from igw import datastore
from igw.pipeline import Decision


@dataclasses.dataclass
class ReplicaBehaviour:
    mode: str = "ok"  # ok | fail503 | break_stream | no_done | slow_json | stall_stream
    chunks: int = 3
    break_after: int = 1
    model: str = "sim-model"
    gate: asyncio.Queue | None = None  # when set, each stream chunk waits for a token


class FakeReplica:
    """One OpenAI-compatible fake replica on 127.0.0.1 with scriptable behaviour."""

    def __init__(self) -> None:
        self.behaviour = ReplicaBehaviour()
        self.hits = 0
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.cancelled = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/{api:.*}", self._infer)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({})

    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.behaviour.model, "object": "model"}]}
        )

    async def _infer(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        body = await request.read()
        self.bodies.append(body)
        self.paths.append(request.path_qs)
        self.headers.append(dict(request.headers))
        b = self.behaviour
        if b.mode == "fail503":
            return web.json_response({"error": {"message": "down"}}, status=503)
        data = json.loads(body)
        if not data.get("stream"):
            if b.mode == "slow_json":
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    self.cancelled += 1
                    raise
            return web.json_response(
                {
                    "id": "cmpl-1",
                    "object": "text_completion",
                    "model": data.get("model"),
                    "choices": [{"index": 0, "text": "hello", "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
                }
            )
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        try:
            for i in range(b.chunks):
                if b.gate is not None:
                    await b.gate.get()
                event = {"choices": [{"index": 0, "text": f"t{i}"}], "model": data.get("model")}
                await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                if b.mode == "stall_stream":
                    await asyncio.sleep(30)  # alive but silent
                if b.mode == "break_stream" and i + 1 >= b.break_after:
                    assert request.transport is not None
                    request.transport.abort()  # the replica dies mid-stream
                    return response
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if b.mode != "no_done":
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


class RankingEngine:
    """A fake scheduling engine: ranks endpoints in pool order, rotating the start.

    Counts reservations so tests can check every request released exactly once.
    """

    def __init__(self) -> None:
        self.next = 0
        self.reserved = 0
        self.released = 0

    def schedule(self, request, pool, *, k=None) -> Decision:
        endpoints = pool.endpoints()
        start = self.next % len(endpoints)
        self.next += 1
        ranked = endpoints[start:] + endpoints[:start]
        self.reserved += 1
        return Decision(pool=pool, endpoints=ranked[: k or 3], reserved=True)

    def release(self, decision: Decision) -> None:
        if decision.reserved:
            decision.reserved = False
            self.released += 1


@pytest.fixture
async def replicas() -> AsyncIterator[list[FakeReplica]]:
    fakes = [FakeReplica() for _ in range(3)]
    for fake in fakes:
        await fake.start()
    yield fakes
    for fake in fakes:
        await fake.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclasses.dataclass
class Running:
    gateway: object
    url: str
    engine: RankingEngine
    router: object


@pytest.fixture(params=["lean", "aiohttp", "fastfront"])
async def make_gateway(request):
    """Start a gateway over the given fake replicas (one pool, model ``sim-model``), once
    with each upstream client (the httptools one and the aiohttp fallback) behind aiohttp's
    server, and once behind the httptools front end."""
    from igw.gateway.app import Limits
    from igw.gateway.routing import ModelRouter, PoolRuntime
    from igw.gateway.runtime import build_gateway
    from igw.gateway.upstream import httptools

    lean = request.param != "aiohttp"
    frontend = "httptools" if request.param == "fastfront" else "aiohttp"
    if lean and httptools is None:
        pytest.skip("httptools is not installed")
    started = []

    async def make(replicas, *, limits=None, models=("sim-model",), datalayer=None):
        limits = dataclasses.replace(limits or Limits(), lean_client=lean, frontend=frontend)
        pool = datastore.Pool("default")
        for replica in replicas:
            endpoint = pool.upsert(replica.address)
            pool.table.set_ready(endpoint.id, True)
        runtime = PoolRuntime(pool, datalayer=datalayer, models=set(models))
        router = ModelRouter([runtime])
        engine = RankingEngine()
        gateway = build_gateway(router, engine, limits=limits)
        port = await gateway.start("127.0.0.1", 0)
        started.append(gateway)
        return Running(gateway, f"http://127.0.0.1:{port}", engine, router)

    yield make
    for gateway in started:
        await gateway.stop()
