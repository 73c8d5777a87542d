"""``igw epp`` with several worker processes on one port: streams/s, added latency, CPU per
process, and what routing loses when the workers do not share the core's state.

Throughput/latency: W server processes (this file with ``serve PORT``) bind the SAME port with
``SO_REUSEPORT`` and the kernel spreads incoming TCP connections over them. ``EppServer``
turns the option off (``grpc.so_reuseport = 0``, so a second ``igw epp`` on a busy port fails
loudly); the worker processes here patch ``igw.extproc.server.grpc_options`` to turn it back
on -- the one change a real ``igw epp --workers N`` would make. The client (this file with
``client ...``) runs in its own process, plays Envoy with the existing ext_proc bench's
messages (``test_extproc_bench``), opens several channels with a local subchannel pool so each
channel is its own TCP connection (otherwise grpc shares one connection and one worker gets
everything), and reports its own CPU from ``/proc/self/stat`` so a client-bound run is visible
on this 2-core machine. Added latency is measured from the first request message written to
the routing reply (request-headers response) read.

Routing quality: workers that do not share state each have their own prefix index and
in-flight counters. Driven in-process (each "worker" is a Director over its own Pool, i.e. its
own EndpointTable / PrefixIndex / Scheduler, over the same endpoints), requests are assigned to
workers at random as connection spreading would, and we count where a shared prefix lands; and
end to end over gRPC (sessions over 8 connections, hit rate from the destination headers).

Sharing: a prototype of the "one picker process" design (docs/scaling.md, option B): the
workers' ``pool.scheduler`` and ``pool.table.add_inflight`` are proxied to a picker process
(``picker PATH``) that owns the only core state; measured alone (round trip, CPU per pick) and
inside the ext_proc path (throughput, latency, hit rate).

``IGW_BENCH_QUICK=1`` keeps the file under about 30 s; every run is bounded in count and time.
Figures are printed (``-s``) and never asserted (the machine is shared and noisy).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

# bench/ is on sys.path both under pytest (rootdir import mode) and as a script
from test_extproc_bench import (
    ENDPOINTS,
    _agentic_body,
    _igw_root,
    request_messages,
    response_messages,
)

QUICK = os.environ.get("IGW_BENCH_QUICK") == "1"
TICKS = os.sysconf("SC_CLK_TCK")
RUN_LIMIT_S = 20.0  # every client run stops issuing requests after this long
DESTINATION_KEY = "x-gateway-destination-endpoint"


def _cpu_of(pid: int | str) -> float:
    """User + system CPU seconds of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


# ============================================================================ one worker's state


def _machine_busy() -> float:
    """Busy CPU seconds of the whole machine (all cores), from /proc/stat: other jobs on this
    shared machine show up as busy time that neither the servers nor the client account for."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICKS


def _build_director(config_text: str | None = None, seed: int = 0):
    """A Director over its own Pool of ENDPOINTS static endpoints: one worker's whole state
    (endpoint table with in-flight counters, prefix index, scheduler)."""
    import igw.datastore
    from igw.scheduling import _backend

    igw.datastore._core = _backend.core
    from igw.config import load_config
    from igw.datastore import Pool
    from igw.extproc.director import Director
    from igw.metrics import Metrics
    from igw.scheduling import SchedulingEngine
    from igw.stages import build_pipeline

    pool = Pool("bench", "default", seed=seed)
    for i in range(ENDPOINTS):
        endpoint = pool.upsert(f"10.0.0.{i + 1}:8000")
        # equal scraped metrics: any spread comes from igw's own state (prefix, in-flight)
        pool.table.update(endpoint.id, waiting=0, running=1, kv_util=0.1, now=1e12)
        pool.table.set_ready(endpoint.id, True)
    pool.synced = True
    metrics = Metrics()
    metrics.add_pool(pool)
    engine = SchedulingEngine(load_config(text=config_text), recorder=metrics.engine_recorder)
    pipeline = build_pipeline(engine, pool, metrics=metrics)
    return Director(pipeline, pool, metrics=metrics), metrics


# ============================================================================ server process


class _RemotePick:
    """What ``Scheduler.pick`` returns, rebuilt from the picker's reply."""

    def __init__(self, endpoints: list[int], uncached: int, total: int, matched: int) -> None:
        import numpy as np

        self.endpoints = endpoints
        self.uncached_tokens = uncached
        self.total_blocks = total
        self.matched_blocks = np.zeros(max(endpoints, default=0) + 1, np.int32)
        if endpoints:
            self.matched_blocks[endpoints[0]] = matched
        self.scores = None


class _RemoteScheduler:
    """Stands in for ``pool.scheduler`` in a worker: the pick runs in the picker process.

    Prototype limits: the default profile only (checked), no candidates / LoRA / Python
    plugin scores, and a *blocking* round trip on the event loop (~0.1 ms; a real one would
    await it)."""

    EXPECTED = ("queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def pick(self, profile, *, hashes, prompt_tokens=0, block_tokens=64, k=1, candidates=None,
             lora=-1, extra_scores=None, **_ignored):  # fmt: skip
        assert tuple(profile.scorer_types) == self.EXPECTED, profile.scorer_types
        assert candidates is None and lora < 0 and extra_scores is None
        payload = struct.pack("<IIH", prompt_tokens, block_tokens, k) + hashes.tobytes()
        self.sock.sendall(b"P" + struct.pack("<I", len(payload)) + payload)
        count = struct.unpack("<H", _recv_exactly(self.sock, 2))[0]
        reply = _recv_exactly(self.sock, 2 * count + 12)
        endpoints = list(struct.unpack(f"<{count}H", reply[: 2 * count]))
        uncached, total, matched = struct.unpack("<III", reply[2 * count :])
        return _RemotePick(endpoints, uncached, total, matched)

    def pick_reserve(self, profile, hashes, prompt_tokens, block_tokens, lora, k, charge=0):
        """``Scheduler.pick_reserve``: the engine's usual call. The protocol carries no
        per-request charge (the default profile has none)."""
        assert charge == 0, charge
        result = self.pick(profile, hashes=hashes, prompt_tokens=prompt_tokens,
                           block_tokens=block_tokens, k=k, lora=lora)  # fmt: skip
        ranked = result.endpoints
        matched = int(result.matched_blocks[ranked[0]]) if ranked else 0
        return ranked, matched, result.total_blocks, result.uncached_tokens

    def route(self, profile, prompt, seed, block_bytes, max_blocks, prompt_tokens,
              block_tokens, lora, k, charge, hot_charge, hot_factor, record=True):  # fmt: skip
        """``Scheduler.route``: the prompt is hashed here, the pick runs over there. The
        protocol carries no prefix demand (the default profile counts none). The picker
        records the blocks with the pick whatever ``record`` says (a deferred record by the
        engine then lands in this worker's unused local index)."""
        from igw.scheduling import _backend

        assert hot_factor == 0, hot_factor
        hashes = _backend.core.hash_blocks(prompt, block_bytes, seed, max_blocks)
        picked = self.pick_reserve(profile, hashes, prompt_tokens, block_tokens, lora, k, charge)
        return (*picked, hashes, False)


class _RemoteInflightTable:
    """Stands in for ``pool.table`` in a worker: reads go to the local table (scraped metrics,
    membership), in-flight changes go to the picker, which owns the shared counters."""

    def __init__(self, table, sock: socket.socket) -> None:
        self._table = table
        self._sock = sock

    def add_inflight(self, endpoint: int, requests: int, tokens: int) -> None:
        payload = struct.pack("<Hiq", endpoint, requests, tokens)
        self._sock.sendall(b"R" + struct.pack("<I", len(payload)) + payload)

    def __getattr__(self, name):
        return getattr(self._table, name)

    def __len__(self) -> int:
        return len(self._table)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("picker closed the connection")
        data += chunk
    return data


def _picker(path: str) -> None:
    """The picker process: the only core state; workers send picks and in-flight changes.
    A worker's outstanding reservations are released when its connection closes."""
    import numpy as np

    director, _metrics = _build_director()
    pool = director.pool
    from igw.scheduling import _backend

    core = _backend.core
    profile = core.Profile(
        [(t, w, {}) for t, w in zip(_RemoteScheduler.EXPECTED, (2.0, 2.0, 3.0), strict=True)]
    )

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held: dict[int, list[int]] = {}  # endpoint -> [requests, tokens] this worker holds
        try:
            while True:
                head = await reader.readexactly(5)
                data = await reader.readexactly(struct.unpack("<I", head[1:])[0])
                if head[:1] == b"P":
                    prompt_tokens, block_tokens, k = struct.unpack("<IIH", data[:10])
                    result = pool.scheduler.pick(
                        profile,
                        hashes=np.frombuffer(data[10:], np.uint64),
                        prompt_tokens=prompt_tokens,
                        block_tokens=block_tokens,
                        k=k,
                    )
                    ends = result.endpoints
                    matched = int(result.matched_blocks[ends[0]]) if ends else 0
                    if ends:
                        entry = held.setdefault(ends[0], [0, 0])
                        entry[0] += 1
                        entry[1] += result.uncached_tokens
                    writer.write(
                        struct.pack(f"<H{len(ends)}H", len(ends), *ends)
                        + struct.pack("<III", result.uncached_tokens, result.total_blocks, matched)
                    )
                else:
                    endpoint, requests, tokens = struct.unpack("<Hiq", data)
                    pool.table.add_inflight(endpoint, requests, tokens)
                    entry = held.setdefault(endpoint, [0, 0])
                    entry[0] += requests
                    entry[1] += tokens
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for endpoint, (requests, tokens) in held.items():  # the worker is gone
                if requests or tokens:
                    pool.table.add_inflight(endpoint, -requests, -tokens)
            writer.close()

    async def main() -> None:
        server = await asyncio.start_unix_server(serve, path)
        print("up", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _serve(port: int, picker: str | None = None) -> None:
    """One worker: an EppServer on ``port`` with SO_REUSEPORT on; prints its port when up.
    With ``picker`` (a Unix socket path), picks and in-flight counters live in that process."""
    import igw.extproc.server as server_module

    plain_options = server_module.grpc_options

    def reuseport_options(max_recv=None, max_send=None):
        options = [o for o in plain_options(max_recv, max_send) if o[0] != "grpc.so_reuseport"]
        return [("grpc.so_reuseport", 1), *options]

    server_module.grpc_options = reuseport_options

    async def main() -> None:
        director, _metrics = _build_director()
        if picker is not None:
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(picker)
            director.pool.scheduler = _RemoteScheduler(sock)
            director.pool.table = _RemoteInflightTable(director.pool.table, sock)
        server = server_module.EppServer(
            director, host="127.0.0.1", grpc_port=port, health_port=0, metrics_port=None
        )
        await server.start()
        print(server.grpc_port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Workers:
    """W ``igw epp``-like processes bound to one port (and, with ``picker``, one picker
    process that owns the core state, listed last)."""

    def __init__(self, count: int, picker: bool = False) -> None:
        import tempfile

        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": _igw_root()}
        extra: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.tmp = tempfile.TemporaryDirectory()
        if picker:
            path = os.path.join(self.tmp.name, "picker.sock")
            proc = subprocess.Popen(
                [sys.executable, __file__, "picker", path], stdout=subprocess.PIPE, env=env
            )
            self.procs.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"up"
            extra = [path]
        workers = [
            subprocess.Popen(
                [sys.executable, __file__, "serve", str(self.port), *extra],
                stdout=subprocess.PIPE,
                env=env,
            )
            for _ in range(count)
        ]
        self.procs = workers + self.procs
        for proc in workers:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == str(self.port).encode(), f"worker failed to bind: {line!r}"

    def cpu(self) -> list[float]:
        return [_cpu_of(p.pid) for p in self.procs]

    def close(self) -> None:
        for proc in self.procs:
            assert proc.stdout is not None
            proc.stdout.close()
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.tmp.cleanup()


# ============================================================================ client process


def _destination(reply) -> str:
    for option in reply.request_headers.response.header_mutation.set_headers:
        if option.header.key == DESTINATION_KEY:
            return (option.header.raw_value or option.header.value.encode()).decode()
    return ""


async def one_stream(stub, req_msgs, resp_head, resp_body) -> tuple[float, str]:
    """One HTTP request as Envoy plays it; returns (first message -> routing reply s, endpoint)."""
    call = stub.Process()
    started = time.perf_counter()
    for message in req_msgs:
        await call.write(message)
    first = await call.read()
    latency = time.perf_counter() - started
    assert first.WhichOneof("response") == "request_headers", first
    for _ in range(len(req_msgs) - 1):
        await call.read()
    await call.write(resp_head)
    await call.read()
    for message in resp_body:
        await call.write(message)
        await call.read()
    await call.done_writing()
    assert await call.code() is not None
    return latency, _destination(first)


async def _client(port: int, n: int, concurrency: int, channels: int, shape: str) -> dict:
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

    req_msgs = request_messages(_shape_body(shape))
    resp_head, resp_body = response_messages(1000 if shape == "agentic" else 10)
    sessions = _session_messages() if shape == "sessions" else None
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per channel
    ]
    target = f"127.0.0.1:{port}"
    opened = [grpc.aio.insecure_channel(target, options=options) for _ in range(channels)]
    stubs = [pb_grpc.ExternalProcessorStub(c) for c in opened]
    for stub in stubs:  # connect every channel (and warm each worker it reaches)
        await one_stream(stub, req_msgs, resp_head, resp_body)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "go"

    latencies: list[float] = []
    destinations: dict[str, int] = {}
    served: dict[int, set[str]] = {}  # sessions shape: endpoints each session went to
    hits = [0, 0]  # later turns that found their session's endpoint, later turns
    remaining = [n]
    cpu_before = _cpu_of("self")
    started = time.perf_counter()
    deadline = started + RUN_LIMIT_S

    async def worker(stub) -> None:
        while remaining[0] > 0 and time.perf_counter() < deadline:
            remaining[0] -= 1
            messages, session = req_msgs, None
            if sessions is not None:
                session = remaining[0] % len(sessions)
                messages = sessions[session]
            latency, endpoint = await one_stream(stub, messages, resp_head, resp_body)
            latencies.append(latency)
            destinations[endpoint] = destinations.get(endpoint, 0) + 1
            if session is not None:
                seen = served.setdefault(session, set())
                if seen:
                    hits[0] += endpoint in seen
                    hits[1] += 1
                seen.add(endpoint)

    await asyncio.gather(*(worker(stubs[i % channels]) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    client_cpu = _cpu_of("self") - cpu_before
    for channel in opened:
        await channel.close()
    latencies.sort()
    done = len(latencies)
    return {
        "requests": done,
        "elapsed_s": elapsed,
        "streams_per_s": done / elapsed,
        "p50_ms": 1e3 * latencies[done // 2],
        "p99_ms": 1e3 * latencies[min(done - 1, int(done * 0.99))],
        "client_cpu_s": client_cpu,
        "client_cpu_share": client_cpu / elapsed,
        "endpoints_used": len(destinations),
        **({"prefix_hit_rate": hits[0] / hits[1]} if hits[1] else {}),
    }


def _session_messages(sessions: int = 24) -> list[list]:
    """One request per session: a 2.4 KB system prompt of its own and a short question."""
    out = []
    for s in range(sessions):
        prefix = " ".join(f"s{s}w{i}" for i in range(400))
        out.append(request_messages(_chat(prefix, "next")))
    return out


def _shape_body(shape: str) -> bytes:
    if shape == "agentic":
        return _agentic_body()
    return json.dumps(
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi " * 200}]}
    ).encode()


def measure(
    workers: int, n: int, concurrency: int, channels: int, shape: str = "small",
    picker: bool = False,
) -> dict:  # fmt: skip
    """Start the workers and a client process; CPU of each over the measured window only."""
    servers = Workers(workers, picker)
    client = None
    try:
        client = subprocess.Popen(
            [sys.executable, __file__, "client", str(servers.port), str(n), str(concurrency),
             str(channels), shape],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": _igw_root()},
            text=True,
        )  # fmt: skip
        assert client.stdin is not None and client.stdout is not None
        assert client.stdout.readline().strip() == "ready"
        before, busy_before = servers.cpu(), _machine_busy()
        client.stdin.write("go\n")
        client.stdin.flush()
        stats = json.loads(client.stdout.readline())
        after, busy_after = servers.cpu(), _machine_busy()
        client.wait(30)
    finally:
        if client is not None:
            if client.poll() is None:
                client.kill()
                client.wait()
            for pipe in (client.stdin, client.stdout):
                if pipe is not None:
                    pipe.close()
        servers.close()
    per_worker = [a - b for a, b in zip(after, before, strict=True)]
    stats.update(
        workers=workers,
        picker=picker,
        concurrency=concurrency,
        channels=channels,
        server_cpu_s=per_worker,
        server_cpu_share=[c / stats["elapsed_s"] for c in per_worker],
        server_cpu_per_request_ms=1e3 * sum(per_worker) / stats["requests"],
        # busy cores of the machine beyond the servers and the client: other jobs' share
        others_cores=(busy_after - busy_before - sum(per_worker) - stats["client_cpu_s"])
        / stats["elapsed_s"],
    )
    return stats


def _print(name: str, stats: dict) -> None:
    def rounded(v):
        if isinstance(v, float):
            return round(v, 3)
        if isinstance(v, list):
            return [rounded(x) for x in v]
        return v

    print(f"\n[workers bench] {name}: {json.dumps({k: rounded(v) for k, v in stats.items()})}")


# ============================================================================ throughput / latency


def test_two_processes_bind_one_port_and_both_serve():
    """SO_REUSEPORT works for grpc.aio: both processes bind, the kernel gives both connections."""
    stats = measure(2, 128 if QUICK else 512, 32, 16)
    _print("reuseport check (2 workers, 16 connections, c=32)", stats)
    assert stats["requests"] > 0
    # 16 connections hashed over 2 listeners: all on one has probability 2^-15
    assert all(cpu > 0 for cpu in stats["server_cpu_s"]), stats["server_cpu_s"]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("concurrency", [1, 64])
def test_small_requests_streams_per_second_and_latency(workers, concurrency):
    if concurrency == 1:
        n, channels = (40 if QUICK else 400), 1
    else:
        n, channels = (256 if QUICK else 3000), 8
    stats = measure(workers, n, concurrency, channels)
    _print(f"small, {workers} worker(s), c={concurrency}", stats)
    assert stats["requests"] > 0 and stats["endpoints_used"] >= 1


@pytest.mark.parametrize("concurrency", [1, 64])
def test_two_workers_with_a_picker_process(concurrency):
    """Option B of docs/scaling.md wired into the real ext_proc path: 2 workers, one picker
    process holding the only core state (pick, in-flight counters, prefix index)."""
    if concurrency == 1:
        n, channels = (40 if QUICK else 400), 1
    else:
        n, channels = (256 if QUICK else 3000), 8
    stats = measure(2, n, concurrency, channels, picker=True)
    _print(f"small, 2 workers + picker process, c={concurrency}", stats)
    assert stats["requests"] > 0


@pytest.mark.parametrize(("workers", "picker"), [(1, False), (2, False), (2, True)])
def test_sessions_over_grpc_prefix_hit_rate(workers, picker):
    """24 sessions over 8 connections, end to end: how often a session's later requests reach
    an endpoint that already served it, with 1 worker, 2 unshared workers and 2 workers
    sharing one picker."""
    stats = measure(workers, 192 if QUICK else 960, 8, 8, shape="sessions", picker=picker)
    _print(f"sessions over gRPC, {workers} worker(s), picker={picker}", stats)
    assert 0.0 <= stats["prefix_hit_rate"] <= 1.0
    if workers == 1 or picker:  # one state: every later request finds its session's endpoint
        assert stats["prefix_hit_rate"] >= 0.95, stats


@pytest.mark.parametrize(("workers", "picker"), [(1, False), (2, False), (2, True)])
def test_agentic_streams_per_second(workers, picker):
    if QUICK:
        pytest.skip("the agentic shape runs in the full benchmark only")
    # 8 connections: with 4, all of them land on one of 2 workers one run in 8
    stats = measure(workers, 24, 8, 8, shape="agentic", picker=picker)
    _print(f"agentic, {workers} worker(s), picker={picker}, c=8", stats)
    assert stats["requests"] > 0


# ============================================================================ routing quality


def _destination_of(replies) -> str:
    for reply in replies:
        if reply.WhichOneof("response") == "request_headers":
            return _destination(reply)
    return ""


async def _open_stream(director, body: bytes):
    """Run a request's phase through one worker; return (stream, endpoint) with the request
    still in flight (its in-flight counters held until the stream is closed)."""
    stream = director.stream()
    endpoint = ""
    for message in request_messages(body):
        replies = await stream.handle(message)
        endpoint = endpoint or _destination_of(replies)
    return stream, endpoint


def _chat(prefix: str, suffix: str) -> bytes:
    return json.dumps(
        {"model": "m", "messages": [{"role": "system", "content": prefix},
                                    {"role": "user", "content": suffix}]}
    ).encode()  # fmt: skip


PREDICTED_TTFT = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: predicted-ttft-scorer
- type: prefix-cache-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: predicted-ttft-scorer
    weight: 3
  - pluginRef: prefix-cache-scorer
    weight: 1
  - pluginRef: max-score-picker
"""


async def _burst(workers: int, config_text: str | None, seed: int, distinct_seeds: bool) -> dict:
    """64 concurrent requests with one 8 KB system prompt, held in flight, then released.
    ``distinct_seeds`` gives each worker its own scheduler RNG seed (tie-breaks differ)."""
    directors = [
        _build_director(config_text, seed=w if distinct_seeds else 0)[0] for w in range(workers)
    ]
    rng = random.Random(seed)
    prefix = " ".join(f"rule{i}" for i in range(1400))  # ~8 KB shared system prompt
    held = []
    endpoints: dict[str, int] = {}
    for i in range(64):
        stream, endpoint = await _open_stream(rng.choice(directors), _chat(prefix, f"q{i}"))
        held.append(stream)
        endpoints[endpoint] = endpoints.get(endpoint, 0) + 1
    for stream in held:
        stream.close(broken=False)
    return {"distinct_endpoints": len(endpoints), "max_per_endpoint": max(endpoints.values())}


async def _sessions(workers: int, seed: int, sessions: int = 24, turns: int = 6) -> dict:
    """Multi-turn sessions, one request at a time: each turn repeats the session's history.
    A turn is a hit when its endpoint already served an earlier turn of the session (its
    prefix is cached there); a worker only knows the turns it routed itself."""
    directors = [_build_director()[0] for _ in range(workers)]
    rng = random.Random(seed)
    history = {s: " ".join(f"s{s}w{i}" for i in range(600)) for s in range(sessions)}
    served: dict[int, set[str]] = {s: set() for s in range(sessions)}
    hits = later = 0
    order = [s for _ in range(turns) for s in rng.sample(range(sessions), sessions)]
    for s in order:
        stream, endpoint = await _open_stream(rng.choice(directors), _chat(history[s], "next"))
        stream.close(broken=False)
        if served[s]:
            later += 1
            hits += endpoint in served[s]
        served[s].add(endpoint)
        history[s] += f" turn{len(served[s])} answer text " * 20
    spread = sum(len(v) for v in served.values()) / sessions
    return {"prefix_hit_rate": hits / later, "endpoints_per_session": spread}


@pytest.mark.parametrize("workers", [1, 2, 4])
async def test_shared_prefix_burst_spread_with_unshared_state(workers):
    """Where a burst of same-prefix requests lands when each worker has its own state."""
    runs = 3 if QUICK else 10
    stats = {}
    for label, config in (("default", None), ("ttft", PREDICTED_TTFT)):
        for seeds in ("same_seed", "own_seed"):
            results = [await _burst(workers, config, s, seeds == "own_seed") for s in range(runs)]
            for key in ("distinct_endpoints", "max_per_endpoint"):
                stats[f"{label}_{seeds}_{key}"] = sum(r[key] for r in results) / runs
    _print(f"same-prefix burst of 64 over {workers} worker(s), mean of {runs}", stats)
    assert 1 <= stats["default_same_seed_distinct_endpoints"] <= ENDPOINTS


@pytest.mark.parametrize("workers", [1, 2, 4])
async def test_session_prefix_hit_rate_with_unshared_state(workers):
    """How often a multi-turn session returns to an endpoint holding its prefix."""
    runs = 2 if QUICK else 5
    results = [await _sessions(workers, seed) for seed in range(runs)]
    stats = {
        "prefix_hit_rate": sum(r["prefix_hit_rate"] for r in results) / runs,
        "endpoints_per_session": sum(r["endpoints_per_session"] for r in results) / runs,
    }
    _print(f"sessions (24 x 6 turns) over {workers} worker(s), mean of {runs}", stats)
    assert 0.0 <= stats["prefix_hit_rate"] <= 1.0
    if workers == 1:  # one picker with the whole prefix index keeps every session in place
        assert stats["prefix_hit_rate"] >= 0.95, stats


# ============================================================================ what sharing costs


def test_micro_core_pick_and_release(benchmark):
    """The work a shared picker serializes: one core pick (default profile, small chat prompt,
    8 endpoints, reserve + record) and its release. Compare with the ext_proc path's ~2-3 ms
    of CPU per stream: the pick is a tiny share, so one picker could serve many workers."""
    from igw.scheduling import _backend

    core = _backend.core
    table, index = core.EndpointTable(64), core.PrefixIndex(64, 31250)
    scheduler = core.Scheduler(table, index, 0)
    for _ in range(ENDPOINTS):
        endpoint = table.add()
        table.update(endpoint, waiting=0, running=1, kv_util=0.1, now=1e12)
        table.set_ready(endpoint, True)
    profile = core.Profile(
        [("queue-scorer", 2.0, {}), ("kv-cache-utilization-scorer", 2.0, {}),
         ("prefix-cache-scorer", 3.0, {})]
    )  # fmt: skip
    prompt = ("hi " * 200).encode()
    seed = core.model_seed("m")

    def pick_and_release():
        result = scheduler.pick(profile, prompt=prompt, seed=seed, prompt_tokens=150)
        table.add_inflight(result.endpoints[0], -1, -result.uncached_tokens)

    benchmark(pick_and_release)


_ECHO = """
import socket, sys
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1]); server.listen(1); print("up", flush=True)
conn, _ = server.accept()
while data := conn.recv(4096):
    conn.sendall(data)
"""


def test_micro_local_channel_round_trip(tmp_path):
    """The floor of the "single picker process" design: a ~100-byte request and reply over a
    Unix socket to another process (blocking, then through asyncio streams, as a worker's
    event loop would do it). 2,000 round trips each."""
    path = str(tmp_path / "picker.sock")
    echo = subprocess.Popen([sys.executable, "-c", _ECHO, path], stdout=subprocess.PIPE)
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == b"up"
        message = b"x" * 100
        rounds = 2000
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(path)
            started = time.perf_counter()
            for _ in range(rounds):
                sock.sendall(message)
                got = 0
                while got < len(message):
                    got += len(sock.recv(4096))
            blocking_us = 1e6 * (time.perf_counter() - started) / rounds

        async def through_asyncio() -> float:
            reader, writer = await asyncio.open_unix_connection(path)  # 2nd accept: see below
            started = time.perf_counter()
            for _ in range(rounds):
                writer.write(message)
                await reader.readexactly(len(message))
            elapsed = time.perf_counter() - started
            writer.close()
            await writer.wait_closed()
            return 1e6 * elapsed / rounds

        echo.stdout.close()
        echo.wait(5)  # the echo server exits when the first connection closes
        echo = subprocess.Popen([sys.executable, "-c", _ECHO, path + "2"], stdout=subprocess.PIPE)
        assert echo.stdout is not None and echo.stdout.readline().strip() == b"up"
        path = path + "2"
        asyncio_us = asyncio.run(through_asyncio())
    finally:
        if echo.stdout is not None:
            echo.stdout.close()
        if echo.poll() is None:
            echo.kill()
        echo.wait()
    _print("local channel round trip", {"blocking_us": blocking_us, "asyncio_us": asyncio_us})
    assert blocking_us > 0 and asyncio_us > 0


_PICKER = """
import asyncio, struct, sys
import numpy as np
from igw.scheduling import _backend
core = _backend.core
table, index = core.EndpointTable(64), core.PrefixIndex(64, 31250)
scheduler = core.Scheduler(table, index, 0)
for _ in range(8):
    e = table.add()
    table.update(e, waiting=0, running=1, kv_util=0.1, now=1e12)
    table.set_ready(e, True)
profile = core.Profile([("queue-scorer", 2.0, {}), ("kv-cache-utilization-scorer", 2.0, {}),
                        ("prefix-cache-scorer", 3.0, {})])

async def serve(reader, writer):
    while True:
        try:
            head = await reader.readexactly(5)
        except asyncio.IncompleteReadError:
            return
        kind, size = head[0], struct.unpack("<I", head[1:])[0]
        data = await reader.readexactly(size)
        if kind == 80:  # "P": pick; body = uint64 block hashes; reply = u16 endpoint, u32 tokens
            result = scheduler.pick(profile, hashes=np.frombuffer(data, np.uint64),
                                    prompt_tokens=150)
            writer.write(struct.pack("<HI", result.endpoints[0], result.uncached_tokens))
        else:  # "R": release; body = u16 endpoint, u32 tokens; no reply
            endpoint, tokens = struct.unpack("<HI", data)
            table.add_inflight(endpoint, -1, -tokens)

async def main():
    server = await asyncio.start_unix_server(serve, sys.argv[1])
    print("up", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


def test_micro_picker_process_round_trip(tmp_path):
    """A prototype of the single-picker design: a separate asyncio process owns the core
    state; a worker sends the prompt's block hashes, gets the endpoint, and later sends the
    release (no reply). Reports the worker-side latency per pick and the picker's CPU per
    pick+release (how many workers one picker core could serve)."""
    from igw.scheduling import _backend

    path = str(tmp_path / "picker.sock")
    picker = subprocess.Popen(
        [sys.executable, "-c", _PICKER, path],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": _igw_root()},
    )
    rounds = 2000
    try:
        assert picker.stdout is not None and picker.stdout.readline().strip() == b"up"
        core = _backend.core
        hashes = core.hash_blocks(("hi " * 200).encode(), 256, core.model_seed("m"))
        pick_message = b"P" + len(hashes.tobytes()).to_bytes(4, "little") + hashes.tobytes()

        async def run() -> tuple[float, set[int]]:
            reader, writer = await asyncio.open_unix_connection(path)
            seen: set[int] = set()
            started = time.perf_counter()
            for _ in range(rounds):
                writer.write(pick_message)
                endpoint, tokens = struct.unpack("<HI", await reader.readexactly(6))
                seen.add(endpoint)
                writer.write(
                    b"R" + (6).to_bytes(4, "little") + struct.pack("<HI", endpoint, tokens)
                )
            elapsed = time.perf_counter() - started
            writer.close()
            await writer.wait_closed()
            return elapsed, seen

        before = _cpu_of(picker.pid)
        elapsed, seen = asyncio.run(run())
        time.sleep(0.05)  # let the picker drain the last release
        picker_cpu = _cpu_of(picker.pid) - before
    finally:
        if picker.stdout is not None:
            picker.stdout.close()
        picker.terminate()
        picker.wait(10)
    stats = {
        "round_trip_us": 1e6 * elapsed / rounds,
        "picker_cpu_per_pick_us": 1e6 * picker_cpu / rounds,
        "picks_per_picker_core_s": rounds / max(picker_cpu, 1e-9),
        "blocks_per_pick": len(hashes),
    }
    _print("picker process prototype", stats)
    assert seen and all(0 <= e < ENDPOINTS for e in seen)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        _serve(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
    elif sys.argv[1:2] == ["picker"]:
        _picker(sys.argv[2])
    elif sys.argv[1:2] == ["client"]:
        port, n, concurrency, channels = (int(a) for a in sys.argv[2:6])
        result = asyncio.run(_client(port, n, concurrency, channels, sys.argv[6]))
        print(json.dumps(result), flush=True)
