"""Test harness: a real ``igw epp`` gRPC server in-process, Envoy's messages, a pool of pods.

Pods follow the reference's hermetic suite: pod i is ``192.168.1.(i+1):8000`` with a waiting
queue, a KV-cache utilization and active LoRA adapters injected straight into the Pool's core
table (the scraper is not under test here).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2

import igw
from igw.config import load_config
from igw.datastore import Pool
from igw.extproc.director import Director
from igw.extproc.server import EppServer
from igw.metrics import Metrics
from igw.scheduling import SchedulingEngine
from igw.stages import build_pipeline

POOL_NAME = "vllm-qwen3-32b-pool"

HERMETIC_CONFIG = (
    Path(__file__).resolve().parents[1] / "data" / "hermetic-epp-config.yaml"
).read_text()

PASSTHROUGH_CONFIG = HERMETIC_CONFIG.replace(
    "- type: openai-parser", "- type: passthrough-parser"
).replace("pluginRef: openai-parser", "pluginRef: passthrough-parser")


class Objectives:
    """The hermetic InferenceObjectives (name -> priority; None = no priority set)."""

    def __init__(self, table: dict[str, int | None] | None = None) -> None:
        self.table = (
            table
            if table is not None
            else {
                "sql-lora": 2,
                "sql-lora-sheddable": None,
                "my-model": 2,
                "direct-model": 2,
                "inference-objective-with-priority-4": 4,
            }
        )

    def priority(self, name: str) -> int | None:
        return self.table.get(name)


@dataclasses.dataclass
class Rule:
    name: str


class Rewrites:
    """The hermetic rewrite rule: ``model-to-be-rewritten`` -> ``rewritten-model``."""

    def __init__(self, rules: dict[str, str] | None = None) -> None:
        self.rules = rules if rules is not None else {"model-to-be-rewritten": "rewritten-model"}

    def resolve(self, model: str, rng: random.Random) -> tuple[str, Any] | None:
        target = self.rules.get(model)
        return None if target is None else (target, Rule("rewrite-test"))


class Reporter:
    """Records the endpoint outcomes the account stage reports (outlier detection input)."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, bool]] = []

    def report_response(self, endpoint, ok: bool) -> None:
        self.reports.append((endpoint.address, ok))


def address(i: int) -> str:
    return f"192.168.1.{i + 1}:8000"


def add_pod(pool: Pool, i: int, waiting: int = 0, kv: float = 0.0, *loras: str) -> None:
    endpoint = pool.upsert(address(i), name=f"pod-{i}", namespace="default")
    table = pool.table
    table.update(
        endpoint.id,
        waiting=waiting,
        running=0,
        kv_util=kv,
        now=time.monotonic(),
        lora_active=[table.adapter_id(name) for name in loras],
    )
    table.set_ready(endpoint.id, True)


def make_pool(pods: Sequence[tuple]) -> Pool:
    """``pods`` = [(waiting, kv, *loras), ...] for pod 0, 1, ..."""
    pool = Pool(POOL_NAME, "default")
    for i, pod in enumerate(pods):
        add_pod(pool, i, *pod)
    pool.synced = True
    return pool


# ----------------------------------------------------------------------------- messages


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def metadata(namespaces: dict[str, dict[str, Any]] | None) -> base_pb2.Metadata:
    meta = base_pb2.Metadata()
    for namespace, values in (namespaces or {}).items():
        meta.filter_metadata[namespace].CopyFrom(_struct(values))
    return meta


def subset_metadata(addresses: Any) -> dict[str, dict[str, Any]]:
    return {"envoy.lb.subset_hint": {"x-gateway-destination-endpoint-subset": addresses}}


def header_map(headers: dict[str, str], *, raw: bool = True) -> base_pb2.HeaderMap:
    if raw:
        values = [base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
    else:
        values = [base_pb2.HeaderValue(key=k, value=v) for k, v in headers.items()]
    return base_pb2.HeaderMap(headers=values)


def req_headers(
    headers: dict[str, str], *, eos: bool = False, meta: dict | None = None
) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(headers=header_map(headers), end_of_stream=eos),
        metadata_context=metadata(meta),
    )


def req_body(body: bytes, *, eos: bool = True, meta: dict | None = None) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(
        request_body=pb.HttpBody(body=body, end_of_stream=eos), metadata_context=metadata(meta)
    )


def resp_headers(
    headers: dict[str, str], *, eos: bool = False, meta: dict | None = None
) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(
        response_headers=pb.HttpHeaders(headers=header_map(headers), end_of_stream=eos),
        metadata_context=metadata(meta),
    )


def resp_body(body: bytes, *, eos: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=body, end_of_stream=eos))


def llm_body(model: str, prompt: str) -> bytes:
    return json.dumps(
        {"max_tokens": 100, "model": model, "prompt": prompt, "temperature": 0},
        separators=(",", ":"),
    ).encode()


def req_llm(
    prompt: str, objective: str, rewrite: str, *, meta: dict | None = None
) -> list[pb.ProcessingRequest]:
    """The reference's ``ReqLLM``: headers (objective, rewrite, request id) + one body."""
    headers = {
        "hi": "mom",
        "x-request-id": "test-request-id",
        "x-llm-d-inference-objective": objective,
        "x-llm-d-model-name-rewrite": rewrite,
    }
    return [req_headers(headers, meta=meta), req_body(llm_body(objective, prompt), meta=meta)]


# ----------------------------------------------------------------------------- reading replies


def set_headers(mutation: pb.HeaderMutation) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


def destination(reply: pb.ProcessingResponse) -> str:
    return set_headers(reply.request_headers.response.header_mutation)[
        "x-gateway-destination-endpoint"
    ]


def lb_metadata(reply: pb.ProcessingResponse) -> dict[str, Any]:
    from google.protobuf import json_format

    return json_format.MessageToDict(reply.dynamic_metadata).get("envoy.lb", {})


def streamed_body(replies: Iterable[pb.ProcessingResponse], phase: str) -> tuple[bytes, bool]:
    data, eos = b"", False
    for reply in replies:
        if reply.WhichOneof("response") == phase:
            streamed = getattr(reply, phase).response.body_mutation.streamed_response
            data += streamed.body
            eos = streamed.end_of_stream
    return data, eos


# ----------------------------------------------------------------------------- server

# Where running_epp sends observer streams by default; the ``observer_transport`` fixture of
# the observer test modules runs each of their tests on both ports.
OBSERVERS_ON_OWN_PORT = False
# What serves running_epp's ext_proc port ("grpcio" or "igw"); the ``epp_transport`` fixture
# runs the ext_proc tests on both.
EPP_TRANSPORT = "grpcio"


@dataclasses.dataclass
class Epp:
    server: EppServer
    director: Director
    pool: Pool
    metrics: Metrics
    engine: SchedulingEngine
    channel: grpc.aio.Channel
    stub: pb_grpc.ExternalProcessorStub
    observer_stub: pb_grpc.ExternalProcessorStub  # ``stub``, or the observer port's

    async def exchange(self, messages: Sequence[pb.ProcessingRequest]) -> list:
        """Send every message, half-close, and return every reply (raises on a gRPC error)."""

        async def gen():
            for message in messages:
                yield message

        return [reply async for reply in self.stub.Process(gen())]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels or {})

    def inflight(self) -> int:
        snap = self.pool.table.snapshot()
        return int(sum(int(snap.inflight_requests[e.id]) for e in self.pool.endpoints()))


@contextlib.asynccontextmanager
async def running_epp(
    pool: Pool,
    *,
    config_text: str = HERMETIC_CONFIG,
    objectives: Any = None,
    rewrites: Any = None,
    director_options: dict[str, Any] | None = None,
    k: int | None = None,
    engine: Any = None,
    with_scores: bool = False,
    observers_on_own_port: bool | None = None,
    transport: str | None = None,
    busy_poll_us: float = 0.0,
    **pipeline_options: Any,
) -> AsyncIterator[Epp]:
    """An EppServer on free ports with a client channel. Observer streams go to ``--grpc-port``
    or, with ``observers_on_own_port`` (default: ``OBSERVERS_ON_OWN_PORT``), to the observer
    port, through ``Epp.observer_stub``. ``transport`` (default ``EPP_TRANSPORT``) serves the
    ext_proc port."""
    config = load_config(text=config_text)
    metrics = Metrics()
    metrics.add_pool(pool)
    if engine is None:
        engine = SchedulingEngine(config, recorder=metrics.engine_recorder, with_scores=with_scores)
    objectives = objectives if objectives is not None else Objectives()
    pipeline_options.setdefault("parsers", config.parser_names() or None)
    pipeline = build_pipeline(
        engine,
        pool,
        metrics=metrics,
        objectives=objectives,
        rewrites=rewrites if rewrites is not None else Rewrites(),
        k=k,
        rng=random.Random(7),
        **pipeline_options,
    )
    director = Director(
        pipeline,
        pool,
        metrics=metrics,
        objectives=objectives,
        rng=random.Random(7),
        **(director_options or {}),
    )
    own_port = OBSERVERS_ON_OWN_PORT if observers_on_own_port is None else observers_on_own_port
    server = EppServer(
        director,
        host="127.0.0.1",
        grpc_port=0,
        health_port=0,
        metrics_port=0,
        observer_port=0 if own_port else None,
        transport=transport or EPP_TRANSPORT,
        busy_poll_us=busy_poll_us,
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    observer_channel = channel
    if own_port:
        observer_channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.observer_port}")
    try:
        yield Epp(
            server,
            director,
            pool,
            metrics,
            engine,
            channel,
            pb_grpc.ExternalProcessorStub(channel),
            pb_grpc.ExternalProcessorStub(observer_channel),
        )
    finally:
        await channel.close()
        if observer_channel is not channel:
            await observer_channel.close()
        await server.stop(0)


# ----------------------------------------------------------------------------- igw processes

# The environment for an ``igw`` subprocess: this checkout's package first on the path.
ENV = {**os.environ, "PYTHONPATH": str(Path(igw.__file__).resolve().parents[1])}


async def start_epp(*flags: str) -> tuple[asyncio.subprocess.Process, str]:
    """``igw epp`` on free ports (plus ``flags``) and its start banner line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "igw", "epp", "--grpc-port=0", "--grpc-health-port=0",
        "--metrics-port=0", "--drain-timeout=1s", *flags,
        env=ENV, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    except BaseException:
        await stop_process(proc)
        raise
    return proc, line


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = 15.0) -> None:
    """SIGTERM (a clean drain), then SIGKILL if it does not exit in time."""
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def wait_for(predicate, timeout: float = 2.0) -> bool:
    """Whether ``predicate()`` becomes true within ``timeout`` seconds (polled every 5 ms)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.005)
    return predicate()


async def wait_for_metrics(url: str, needle: str, what: str, tries: int = 200) -> None:
    """Poll a /metrics page until ``needle`` shows (every 50 ms, bounded)."""
    async with aiohttp.ClientSession() as session:
        for _ in range(tries):
            async with session.get(url) as response:
                if needle in await response.text():
                    return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: {needle!r} never appeared at {url}")


async def route_once(grpc_port: int, prompt: str = "hello") -> list[pb.ProcessingResponse]:
    """One request through a running ``igw epp``'s ext_proc port; its replies."""

    async def messages():
        for message in req_llm(prompt, "my-model", "my-model"):
            yield message

    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        return [r async for r in pb_grpc.ExternalProcessorStub(channel).Process(messages())]
