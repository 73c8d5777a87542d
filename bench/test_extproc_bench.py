"""Benchmarks of the ext_proc path (``igw epp``): CPU per message and per request, streams/s,
added latency.

The server runs in its own process (this file with ``serve``), so its CPU is read from
``/proc/<pid>/stat`` without the client's share; the client is grpc.aio in the test process
and plays Envoy: request headers, the body in 62 KB chunks, then response headers and the
streamed response body, reading igw's replies as Envoy would.

Workloads
* agentic: a 100k-token prompt (about 400 KB of text) in 62 KB chunks, then 1,000 SSE response
  chunks (the issue's target: <= 40 ms server CPU per request);
* agentic with Envoy's ``response_body_mode: NONE`` (a deployment choice when neither model
  rewrite nor token metrics need the response): the client sends the response headers and
  then closes the stream, as Envoy does (``mode_override`` cannot get this per request: Envoy
  ignores it when the request body is FULL_DUPLEX_STREAMED);
* small: a short chat request and a 10-chunk response, for streams/s and the added latency
  (time from the last request-body message to igw's routing reply) at concurrency 1 and 64.

* the same agentic workload against a plain servicer with no igw logic (the baseline the
  other figures are read against: what the gRPC transport alone costs per message);
* agentic-observe: the two-filter deployment of ``deploy/envoy/envoy-observe.yaml``. Per
  request the client opens a routing stream (request headers, body chunks, response headers,
  close; ``response_body_mode: NONE``) and an observer stream (request headers, response
  headers, the 1,000 chunks and ``end_of_stream``, all with ``observability_mode``, nothing
  read back), measured in one run against igw today (single stream, every chunk answered)
  and against the plain servicer in receive-only mode (``--recv-only``: observability
  messages are not answered), the floor for this workload.

Micro-benchmarks (pytest-benchmark) time the pure Python per-message work without gRPC.

``IGW_BENCH_QUICK=1`` keeps the whole file under about 30 s. Figures are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK = os.environ.get("IGW_BENCH_QUICK") == "1"
CHUNK = 62_000
ENDPOINTS = 8
TICKS = os.sysconf("SC_CLK_TCK")


# ============================================================================ server process


def _serve(argv: list[str]) -> None:
    """Run an EppServer over a pool of fake endpoints with injected metrics; print its port."""
    import igw.datastore
    from igw.scheduling import _backend

    igw.datastore._core = _backend.core
    from igw.config import load_config
    from igw.datastore import Pool
    from igw.extproc.director import Director
    from igw.extproc.h2_transport import DEFAULT_READ_BATCH
    from igw.extproc.server import EppServer
    from igw.metrics import Metrics
    from igw.scheduling import SchedulingEngine
    from igw.stages import build_pipeline

    generator = "--generator" in argv

    async def main() -> None:
        pool = Pool("bench", "default")
        for i in range(ENDPOINTS):
            endpoint = pool.upsert(f"10.0.0.{i + 1}:8000")
            pool.table.update(
                endpoint.id, waiting=i % 3, running=1, kv_util=0.1 * (i % 5), now=1e12
            )
            pool.table.set_ready(endpoint.id, True)
        pool.synced = True
        metrics = Metrics()
        metrics.add_pool(pool)
        engine = SchedulingEngine(load_config(), recorder=metrics.engine_recorder)
        pipeline = build_pipeline(engine, pool, metrics=metrics)
        until = "first-token" if "--observe-first-token" in argv else "end"
        director = Director(pipeline, pool, metrics=metrics, observe_until=until)
        servicer = None
        if generator:
            servicer = _GeneratorServicer(director)
        if "--plain" in argv:
            servicer = _PlainServicer(recv_only="--recv-only" in argv)
        server = EppServer(
            director,
            host="127.0.0.1",
            grpc_port=0,
            health_port=0,
            metrics_port=None,
            servicer=servicer,
            observer_port=0 if "--observer-port" in argv else None,
            read_batch=0.0 if "--no-read-batch" in argv else DEFAULT_READ_BATCH,
            transport="igw" if "--igw-transport" in argv else "grpcio",
            busy_poll_us=1000.0 if "--busy-poll" in argv else 0.0,
        )
        await server.start()
        print(server.grpc_port, server.observer_port or "", flush=True)
        await asyncio.Event().wait()

    if "--uvloop" in argv:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


class _GeneratorServicer:
    """Variant servicer using the request iterator + ``yield`` (measured against read/write)."""

    def __init__(self, director) -> None:
        self.director = director

    async def Process(self, request_iterator, context):
        stream = self.director.stream()
        broken = True
        try:
            async for message in request_iterator:
                for reply in await stream.handle(message):
                    yield reply
                if stream.done:
                    break
            broken = False
        finally:
            stream.close(broken=broken)


def _igw_root() -> str:
    """Where this process imports igw from; the server child imports the same copy."""
    import igw

    return str(Path(igw.__file__).resolve().parents[1])


class _PlainServicer:
    """The baseline: the same message protocol with no igw logic (no parsing, no scheduling,
    no accounting): echo every body chunk, answer headers with an empty mutation. In
    ``recv_only`` mode messages marked ``observability_mode`` are read and not answered, as
    Envoy's observability mode requires (what receiving alone costs)."""

    def __init__(self, recv_only: bool = False) -> None:
        self.recv_only = recv_only

    async def Process(self, request_iterator, context):
        import grpc
        from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

        def body(chunk: bytes, eos: bool) -> pb.BodyResponse:
            return pb.BodyResponse(
                response=pb.CommonResponse(
                    body_mutation=pb.BodyMutation(
                        streamed_response=pb.StreamedBodyResponse(body=chunk, end_of_stream=eos)
                    )
                )
            )

        pending: list[bytes] = []
        while True:
            message = await context.read()
            if message is grpc.aio.EOF:
                return
            if self.recv_only and message.observability_mode:
                continue
            kind = message.WhichOneof("request")
            if kind == "request_body":
                pending.append(message.request_body.body)
                if message.request_body.end_of_stream:
                    await context.write(pb.ProcessingResponse(request_headers=pb.HeadersResponse()))
                    for i, chunk in enumerate(pending):
                        eos = i == len(pending) - 1
                        await context.write(pb.ProcessingResponse(request_body=body(chunk, eos)))
                    pending = []
            elif kind == "response_headers":
                await context.write(pb.ProcessingResponse(response_headers=pb.HeadersResponse()))
            elif kind == "response_body":
                chunk = message.response_body
                await context.write(
                    pb.ProcessingResponse(response_body=body(chunk.body, chunk.end_of_stream))
                )


class Server:
    def __init__(self, *flags: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "serve", *flags],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": _igw_root()},
        )
        assert self.proc.stdout is not None
        ports = self.proc.stdout.readline().split()
        self.port = int(ports[0])
        self.observer_port = int(ports[1]) if len(ports) > 1 else None

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def close(self) -> None:
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ============================================================================ client (Envoy)


def _messages():
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    return base_pb2, pb


def agentic_prompt(tokens: int = 100_000, seed: int = 1) -> str:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "tool", "call", "result", "file", "line", "def"]
    out, size = [], 0
    while size < tokens * 4:
        word = rng.choice(words)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


def request_messages(body: bytes, path: str = "/v1/chat/completions") -> list:
    base_pb2, pb = _messages()
    headers = base_pb2.HeaderMap(
        headers=[
            base_pb2.HeaderValue(key=":path", raw_value=path.encode()),
            base_pb2.HeaderValue(key=":method", raw_value=b"POST"),
            base_pb2.HeaderValue(key="content-type", raw_value=b"application/json"),
            base_pb2.HeaderValue(key="x-request-id", raw_value=b"bench"),
        ]
    )
    out = [pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=headers))]
    for start in range(0, len(body), CHUNK):
        end = start + CHUNK
        out.append(
            pb.ProcessingRequest(
                request_body=pb.HttpBody(body=body[start:end], end_of_stream=end >= len(body))
            )
        )
    return out


def response_messages(chunks: int) -> tuple:
    base_pb2, pb = _messages()
    headers = base_pb2.HeaderMap(
        headers=[
            base_pb2.HeaderValue(key=":status", raw_value=b"200"),
            base_pb2.HeaderValue(key="content-type", raw_value=b"text/event-stream"),
        ]
    )
    head = pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=headers))
    event = (
        b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
        b'"delta":{"content":"tok"}}]}\n\n'
    )
    last = b'data: {"choices":[],"usage":{"prompt_tokens":100000,"completion_tokens":1000}}\n\n'
    body = [pb.ProcessingRequest(response_body=pb.HttpBody(body=event)) for _ in range(chunks - 1)]
    body.append(
        pb.ProcessingRequest(response_body=pb.HttpBody(body=last + b"data: [DONE]\n\n",
                                                       end_of_stream=True))
    )  # fmt: skip
    return head, body


async def one_request(stub, req_msgs, resp_head, resp_body) -> tuple[float, int]:
    """Plays one HTTP request through the picker; returns (routing latency s, messages).

    An empty ``resp_body`` plays Envoy with ``response_body_mode: NONE``."""
    call = stub.Process()
    sent = 0
    for message in req_msgs:
        await call.write(message)
        sent += 1
    last_sent = time.perf_counter()
    first = await call.read()
    latency = time.perf_counter() - last_sent
    assert first.WhichOneof("response") == "request_headers", first
    for _ in range(len(req_msgs) - 1):  # the body comes back in as many 62 KB chunks
        await call.read()
    await call.write(resp_head)
    sent += 1
    await call.read()
    for message in resp_body:
        await call.write(message)
        sent += 1
        await call.read()
    await call.done_writing()
    assert await call.code() is not None
    return latency, sent


def observer_messages(req_msgs, resp_head, resp_body) -> list:
    """What Envoy's observability-mode filter sends: request headers (request body NONE), the
    response headers and body, every message marked ``observability_mode``."""
    _, pb = _messages()
    out = []
    for message in (req_msgs[0], resp_head, *resp_body):
        copy = pb.ProcessingRequest()
        copy.CopyFrom(message)
        copy.observability_mode = True
        out.append(copy)
    return out


def _with_request_id(message, request_id: str):
    """A copy of a request-headers message carrying ``x-request-id: request_id``."""
    _, pb = _messages()
    copy = pb.ProcessingRequest()
    copy.CopyFrom(message)
    for header in copy.request_headers.headers.headers:
        if header.key == "x-request-id":
            header.raw_value = request_id.encode()
    return copy


async def one_observed_request(stub, req_msgs, resp_head, obs_msgs, request_id: str,
                               observer_stub=None):  # fmt: skip
    """One HTTP request through the two-filter deployment: the routing stream (response body
    NONE) and the observer stream, interleaved as Envoy sends them (the observer sits after
    igw-route: it sees the request once routed, and the response before igw-route does).
    ``observer_stub`` talks to ``--observer-port`` (default: the routing stream's port)."""
    route = stub.Process()
    await route.write(_with_request_id(req_msgs[0], request_id))
    for message in req_msgs[1:]:
        await route.write(message)
    last_sent = time.perf_counter()
    first = await route.read()
    latency = time.perf_counter() - last_sent
    assert first.WhichOneof("response") == "request_headers", first
    for _ in range(len(req_msgs) - 1):
        await route.read()
    observer = (observer_stub or stub).Process()
    await observer.write(_with_request_id(obs_msgs[0], request_id))
    await observer.write(obs_msgs[1])  # response headers reach the observer first
    await route.write(resp_head)
    await route.read()
    observed = 2
    for message in obs_msgs[2:]:
        if observer.done():
            break  # igw ended the observer stream (--observe-until first-token): Envoy stops
        try:
            await observer.write(message)
        except Exception:  # the server closed it between the check and the write
            break
        observed += 1
    if not observer.done():
        await observer.done_writing()
    await route.done_writing()
    assert await observer.code() is not None
    assert await route.code() is not None
    return latency, len(req_msgs) + 1 + observed


async def drive(port: int, n: int, concurrency: int, req_msgs, resp_head, resp_body,
                obs_msgs=None, observer_port: int | None = None) -> dict:  # fmt: skip
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

    latencies: list[float] = []
    messages = 0
    options = [("grpc.max_receive_message_length", 64 << 20)]
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{observer_port or port}") as observer_channel,
    ):
        stub = pb_grpc.ExternalProcessorStub(channel)
        observer_stub = pb_grpc.ExternalProcessorStub(observer_channel) if observer_port else None

        async def play(i: int) -> tuple[float, int]:
            if obs_msgs is not None:
                return await one_observed_request(
                    stub, req_msgs, resp_head, obs_msgs, f"r{i}", observer_stub
                )
            return await one_request(stub, req_msgs, resp_head, resp_body)

        await play(-1)  # warm-up
        queue = list(range(n))

        async def worker() -> None:
            nonlocal messages
            while queue:
                latency, sent = await play(queue.pop())
                latencies.append(latency)
                messages += sent

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": n,
        "messages": messages,
        "elapsed_s": elapsed,
        "p50_ms": 1e3 * latencies[len(latencies) // 2],
        "p99_ms": 1e3 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "mean_ms": 1e3 * sum(latencies) / len(latencies),
    }


def measure(flags: tuple[str, ...], n: int, concurrency: int, req_msgs, resp_head, resp_body,
            obs_msgs=None):  # fmt: skip
    server = Server(*flags)
    try:
        before = server.cpu_seconds()
        stats = asyncio.run(
            drive(server.port, n, concurrency, req_msgs, resp_head, resp_body, obs_msgs,
                  server.observer_port)
        )  # fmt: skip
        # the warm-up request is included in the CPU window: count it
        cpu = server.cpu_seconds() - before
        stats["server_cpu_per_request_ms"] = 1e3 * cpu / (n + 1)
        stats["server_cpu_per_message_us"] = 1e6 * cpu / (stats["messages"] * (n + 1) / n)
        stats["streams_per_s"] = n / stats["elapsed_s"]
        return stats
    finally:
        server.close()


def _print(name: str, stats: dict) -> None:
    shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}
    print(f"\n[extproc bench] {name}: {json.dumps(shown)}")


# ============================================================================ end-to-end


def _agentic_body() -> bytes:
    prompt = agentic_prompt()
    return json.dumps(
        {
            "model": "m",
            "stream": True,
            "messages": [
                {"role": "system", "content": "You are a coding agent."},
                {"role": "user", "content": prompt},
            ],
        }
    ).encode()


@pytest.mark.parametrize(
    ("name", "flags", "response_chunks"),
    [
        ("agentic", (), 1000),
        ("agentic, Envoy response_body_mode NONE", (), 0),
        ("agentic, plain servicer baseline (no igw logic)", ("--plain",), 1000),
        ("agentic, generator servicer", ("--generator",), 1000),
        ("agentic, uvloop", ("--uvloop",), 1000),
        ("agentic, igw transport", ("--igw-transport",), 1000),
    ],
)
def test_agentic_cpu_per_request(name, flags, response_chunks):
    if QUICK and flags and flags not in (("--plain",), ("--igw-transport",)):
        pytest.skip("servicer/loop variants run in the full benchmark only")
    body = _agentic_body()
    req_msgs = request_messages(body)
    resp_head, resp_body = response_messages(max(1, response_chunks))
    resp_body = resp_body if response_chunks else []
    # CPU time has a 10 ms tick: cheap variants need more requests for a usable figure
    n = (3 if QUICK else 10) if response_chunks else (30 if QUICK else 100)
    stats = measure(flags, n, 1, req_msgs, resp_head, resp_body)
    stats["prompt_bytes"] = len(body)
    _print(name, stats)
    if name == "agentic":
        # A loose guard against a gross regression, as a ratio to the plain servicer (no igw
        # logic) measured now on the same machine: an absolute bound (it was < 400 ms) failed
        # CI once at 527 ms on a slow moment of a shared VM, where igw measures ~0.9x the
        # plain servicer. 10 ms CPU ticks over a few requests: only a gross change shows.
        plain = measure(("--plain",), n, 1, req_msgs, resp_head, resp_body)
        ratio = stats["server_cpu_per_request_ms"] / max(plain["server_cpu_per_request_ms"], 1.0)
        print(f"[extproc bench] agentic / plain servicer, server CPU per request: {ratio:.2f}")
        assert ratio < 3.0, f"igw's servicer costs {ratio:.1f}x the plain one's CPU per request"


def _agentic_observed() -> tuple[list, object, list, list, int]:
    """The agentic request, for one stream and for the two-filter deployment: (request
    messages, response headers, response chunks, observer messages, requests to measure)."""
    req_msgs = request_messages(_agentic_body())
    resp_head, resp_body = response_messages(1000)
    obs_msgs = observer_messages(req_msgs, resp_head, resp_body)
    return req_msgs, resp_head, resp_body, obs_msgs, (3 if QUICK else 10)


def test_agentic_observe_cpu_against_today_and_the_receive_only_baseline():
    """The two-filter deployment (routing + observer) against igw's single stream today and
    against the bare servicer that only receives the observed chunks, in one run."""
    req_msgs, resp_head, resp_body, obs_msgs, n = _agentic_observed()
    today = measure((), n, 1, req_msgs, resp_head, resp_body)
    observe = measure((), n, 1, req_msgs, resp_head, [], obs_msgs)
    floor = measure(("--plain", "--recv-only"), n, 1, req_msgs, resp_head, [], obs_msgs)
    for name, stats in (("agentic (today)", today), ("agentic-observe", observe),
                        ("agentic-observe, plain receive-only baseline", floor)):  # fmt: skip
        _print(name, stats)
    per_request = observe["server_cpu_per_request_ms"]
    ratios = {
        "observe/today per request": per_request / today["server_cpu_per_request_ms"],
        "observe/baseline per request": per_request / floor["server_cpu_per_request_ms"],
        "observe/baseline per message": observe["server_cpu_per_message_us"]
        / floor["server_cpu_per_message_us"],
    }
    print(f"[extproc bench] ratios: {json.dumps({k: round(v, 2) for k, v in ratios.items()})}")
    # a loose guard: not answering 1,000 chunks must save a clear share of today's CPU
    assert per_request < 0.9 * today["server_cpu_per_request_ms"]


def test_agentic_observe_to_the_first_token_cpu():
    """The same two-filter deployment with ``--observe-until first-token``: igw closes the
    observer stream after the first response chunk, so Envoy stops sending the other 999
    (token and size metrics are given up; TTFT, calibration and the prefill gate stay)."""
    req_msgs, resp_head, _, obs_msgs, n = _agentic_observed()
    full = measure((), n, 1, req_msgs, resp_head, [], obs_msgs)
    first = measure(("--observe-first-token",), n, 1, req_msgs, resp_head, [], obs_msgs)
    _print("agentic-observe (to the end)", full)
    _print("agentic-observe (to the first token)", first)
    ratio = first["server_cpu_per_request_ms"] / full["server_cpu_per_request_ms"]
    print(f"[extproc bench] first-token / to-the-end per request: {ratio:.2f}")
    assert first["server_cpu_per_request_ms"] < full["server_cpu_per_request_ms"]


def test_agentic_observe_on_the_observer_port_cpu():
    """The two-filter deployment with the observer streams on ``--observer-port`` (igw's
    own transport) against the same streams on the ext_proc port (grpc.aio), and
    with read batching off, in one run. Token metrics are kept: the whole response is read."""
    req_msgs, resp_head, _, obs_msgs, n = _agentic_observed()
    grpc_port = measure((), n, 1, req_msgs, resp_head, [], obs_msgs)
    own_port = measure(("--observer-port",), n, 1, req_msgs, resp_head, [], obs_msgs)
    unbatched = measure(("--observer-port", "--no-read-batch"), n, 1, req_msgs, resp_head, [],
                        obs_msgs)  # fmt: skip
    _print("agentic-observe, observer on the ext_proc port", grpc_port)
    _print("agentic-observe, observer port", own_port)
    _print("agentic-observe, observer port, read batching off", unbatched)
    per_request = own_port["server_cpu_per_request_ms"]
    ratios = {
        "observer port / ext_proc port": per_request / grpc_port["server_cpu_per_request_ms"],
        "unbatched / ext_proc port": unbatched["server_cpu_per_request_ms"]
        / grpc_port["server_cpu_per_request_ms"],
        "observer port / 40 ms target": per_request / 40.0,
    }
    print(f"[extproc bench] ratios: {json.dumps({k: round(v, 2) for k, v in ratios.items()})}")
    # a loose guard: igw's transport must cost clearly less than grpc.aio's
    assert per_request < 0.8 * grpc_port["server_cpu_per_request_ms"]


@pytest.mark.parametrize("concurrency", [1, 64])
def test_small_requests_streams_per_second_and_added_latency(concurrency):
    """Both transports of the ext_proc port in one run: grpc.aio and igw's own."""
    body = json.dumps(
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi " * 200}]}
    ).encode()
    req_msgs = request_messages(body)
    resp_head, resp_body = response_messages(10)
    n = (60 if QUICK else 300) if concurrency == 1 else (256 if QUICK else 1024)
    grpcio = measure((), n, concurrency, req_msgs, resp_head, resp_body)
    own = measure(("--igw-transport",), n, concurrency, req_msgs, resp_head, resp_body)
    # igw's transport with --busy-poll-us 1000 (igw.busypoll)
    busy = measure(("--igw-transport", "--busy-poll"), n, concurrency, req_msgs, resp_head,
                   resp_body)  # fmt: skip
    _print(f"small c={concurrency}", grpcio)
    _print(f"small c={concurrency}, igw transport", own)
    _print(f"small c={concurrency}, igw transport, busy polling 1 ms", busy)
    ratios = {
        "igw/grpcio CPU per request": own["server_cpu_per_request_ms"]
        / grpcio["server_cpu_per_request_ms"],
        "igw/grpcio streams per s": own["streams_per_s"] / grpcio["streams_per_s"],
        "igw/grpcio latency p50": own["p50_ms"] / grpcio["p50_ms"],
        "busy/igw streams per s": busy["streams_per_s"] / own["streams_per_s"],
        "busy/igw latency p50": busy["p50_ms"] / own["p50_ms"],
        "busy/igw CPU per request": busy["server_cpu_per_request_ms"]
        / own["server_cpu_per_request_ms"],
    }
    print(f"[extproc bench] ratios: {json.dumps({k: round(v, 2) for k, v in ratios.items()})}")
    assert min(grpcio["streams_per_s"], own["streams_per_s"], busy["streams_per_s"]) > 0


# ============================================================================ micro (no gRPC)


@pytest.fixture(scope="module")
def director():
    import igw.datastore
    from igw.scheduling import _backend

    saved = igw.datastore._core
    igw.datastore._core = _backend.core
    from igw.datastore import Pool
    from igw.extproc.director import Director
    from igw.metrics import Metrics
    from igw.scheduling import SchedulingEngine
    from igw.stages import build_pipeline

    pool = Pool("bench")
    for i in range(ENDPOINTS):
        endpoint = pool.upsert(f"10.0.0.{i + 1}:8000")
        pool.table.update(endpoint.id, waiting=i % 3, running=1, kv_util=0.1, now=1e12)
        pool.table.set_ready(endpoint.id, True)
    metrics = Metrics()
    engine = SchedulingEngine()
    yield Director(build_pipeline(engine, pool, metrics=metrics), pool, metrics=metrics)
    igw.datastore._core = saved


def test_micro_response_chunk_handling(benchmark, director):
    """Python work for one streamed response chunk (usage scan, rewrite probe, reply proto)."""
    req_msgs = request_messages(b'{"model":"m","messages":[{"role":"user","content":"x"}]}')
    resp_head, resp_body = response_messages(2)
    stream = director.stream()

    async def setup():
        for message in req_msgs:
            await stream.handle(message)
        await stream.handle(resp_head)

    asyncio.run(setup())
    chunk = resp_body[0]

    def step():
        coro = stream.handle(chunk)
        try:
            coro.send(None)
        except StopIteration as done:
            return done.value

    benchmark(step)
    stream.close(broken=False)


def test_micro_observed_chunk_handling(benchmark, director):
    """Python work for one observed response chunk (no reply): byte count, [DONE] probe, usage
    scan, on an observer joined to its routing stream."""
    req_msgs = request_messages(b'{"model":"m","messages":[{"role":"user","content":"x"}]}')
    resp_head, resp_body = response_messages(2)
    obs_msgs = observer_messages(req_msgs, resp_head, resp_body)
    stream = director.stream()

    async def setup():
        for message in req_msgs:
            await stream.handle(message)

    asyncio.run(setup())
    observer = director.observer()
    observer.handle(obs_msgs[0])
    observer.handle(obs_msgs[1])
    assert observer.link is not None
    chunk = obs_msgs[2]
    benchmark(observer.handle, chunk)
    observer.close(broken=False)
    stream.close(broken=False)


def test_micro_agentic_request_phase(benchmark, director):
    """Python work of the request phase for a 400 KB prompt: join, parse, hash, schedule."""
    req_msgs = request_messages(_agentic_body())

    def run():
        stream = director.stream()

        async def go():
            for message in req_msgs:
                await stream.handle(message)

        asyncio.run(go())
        stream.close(broken=False)

    benchmark.pedantic(run, rounds=3 if QUICK else 10, iterations=1)


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    _serve(sys.argv[2:])
