"""Gateway overhead against instantly answering replicas (issue 5, "Gateway overhead").

Setup, as in vllm-router's router_overhead harness: 4 fake replicas that answer at once (one
separate process, so their CPU is not the gateway's), a FRESH ``igw serve`` process in front
of them with the default (prefix-aware) profile, a keep-alive client in a third process, 16 KB
prompts (64 distinct prompts repeated, so prefix routing has matches to find).

Measured:
* mean latency at concurrency 1, calling a replica directly vs through the gateway, streamed
  and not, alternating the two in rounds; the median over rounds of the difference is the
  gateway's added latency (target <= 250 us), the best round is shown too;
* at concurrency 64: requests/s through the gateway and the gateway process's CPU seconds per
  1,000 requests (utime+stime from /proc/<pid>/stat; target ~6,900 req/s and 0.2 CPU-s/1k,
  what sglang-router ``cache_aware`` does on this 2-core machine).
Note the three processes share the machine's cores: at c=64 the client and the replicas take
CPU the gateway would otherwise get, so req/s is a floor; CPU-s/1k is the cleaner number.

``IGW_BENCH_QUICK=1`` keeps it under ~30 s. Run the full size with
``python -m pytest bench/test_gateway_bench.py -s``; or this file directly as a script:
``python bench/test_gateway_bench.py`` prints the table.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

QUICK = os.environ.get("IGW_BENCH_QUICK") == "1"
# Subprocesses import the igw this process runs (source tree or installed package).
IGW_HOME = Path(__import__("igw").__file__).resolve().parents[1]
REPLICAS = 4
PROMPT_BYTES = 16 * 1024
DISTINCT_PROMPTS = 64
C1_REQUESTS = 300 if QUICK else 3000
C64_REQUESTS = 2000 if QUICK else 30000
WARMUP = 100 if QUICK else 500
ROUNDS = 5 if QUICK else 10  # c=1 alternates direct / via igw this many times
IDLE_SECONDS = 1.0 if QUICK else 3.0

COMPLETION = json.dumps(
    {
        "id": "cmpl-0",
        "object": "text_completion",
        "model": "sim-model",
        "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 4096, "completion_tokens": 1, "total_tokens": 4097},
    }
).encode()
STREAM = (
    b'data: {"id":"cmpl-0","model":"sim-model","choices":[{"index":0,"text":"ok"}]}\n\n'
    b'data: {"id":"cmpl-0","model":"sim-model","choices":[],"usage":{"prompt_tokens":4096,'
    b'"completion_tokens":1,"total_tokens":4097}}\n\n'
    b"data: [DONE]\n\n"
)
METRICS = (
    b"vllm:num_requests_waiting 0\nvllm:num_requests_running 0\nvllm:kv_cache_usage_perc 0.1\n"
)
MODELS = b'{"object":"list","data":[{"id":"sim-model","object":"model"}]}'


# --------------------------------------------------------------------- fake replicas


async def _replicas(count: int) -> None:
    from aiohttp import web

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "GET":
            if request.path == "/metrics":
                return web.Response(body=METRICS, content_type="text/plain")
            if request.path == "/v1/models":
                return web.Response(body=MODELS, content_type="application/json")
            return web.Response(body=b"{}", content_type="application/json")
        body = await request.read()
        if b'"stream": true' in body[-64:] or b'"stream":true' in body[-64:]:
            response = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await response.prepare(request)
            await response.write(STREAM)
            await response.write_eof()
            return response
        return web.Response(body=COMPLETION, content_type="application/json")

    ports = []
    for _ in range(count):
        runner = web.ServerRunner(web.Server(handle, access_log=None))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ports.append(site._server.sockets[0].getsockname()[1])
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()


# ---------------------------------------------------------------------------- client


def _bodies(stream: bool) -> list[bytes]:
    out = []
    for i in range(DISTINCT_PROMPTS):
        unit = f"Document {i}: the quick brown fox jumps over the lazy dog. "
        prompt = (unit * (PROMPT_BYTES // len(unit) + 1))[:PROMPT_BYTES]
        body = {"model": "sim-model", "prompt": prompt, "max_tokens": 1}
        if stream:
            body["stream"] = True  # last key: the fake replica looks at the tail
        out.append(json.dumps(body).encode())
    return out


async def _client(urls: list[str], concurrency: int, count: int, stream: bool) -> dict:
    import aiohttp

    bodies = _bodies(stream)
    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    errors = 0
    first_error = ""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        next_index = 0

        async def worker(n: int, record: bool) -> None:
            nonlocal next_index, errors, first_error
            for _ in range(n):
                i = next_index
                next_index += 1
                url = urls[i % len(urls)]
                started = time.perf_counter()
                try:
                    async with session.post(
                        url, data=bodies[i % len(bodies)], headers=headers
                    ) as response:
                        await response.read()
                        ok = response.status == 200
                        problem = f"HTTP {response.status}"
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    ok, problem = False, repr(exc)
                if not ok:
                    errors += 1
                    first_error = first_error or problem
                elif record:
                    latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker(WARMUP // concurrency + 1, False)
                               for _ in range(concurrency)))  # fmt: skip
        started = time.perf_counter()
        await asyncio.gather(*(worker(count // concurrency, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "first_error": first_error,
        "seconds": elapsed,
        "req_per_s": len(latencies) / elapsed,
        "mean_us": statistics.fmean(latencies) * 1e6,
        "p50_us": latencies[len(latencies) // 2] * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
    }


async def _compare(sets: list[list[str]], rounds: int, count: int, stream: bool) -> dict:
    """Concurrency 1, alternating between URL sets round by round (direct, via igw, ...),
    so a burst of load from elsewhere on the machine hits both alike; one keep-alive
    session per set. Returns each set's per-round mean latency."""
    import aiohttp

    bodies = _bodies(stream)
    headers = {"content-type": "application/json"}
    means: list[list[float]] = [[] for _ in sets]
    errors = 0
    sessions = [aiohttp.ClientSession() for _ in sets]
    try:
        for index, urls in enumerate(sets):  # warm up every connection
            for i in range(WARMUP):
                async with sessions[index].post(urls[i % len(urls)], data=bodies[i % 64],
                                                headers=headers) as response:  # fmt: skip
                    await response.read()
        for _ in range(rounds):
            for index, urls in enumerate(sets):
                session = sessions[index]
                total = 0.0
                for i in range(count):
                    started = time.perf_counter()
                    async with session.post(
                        urls[i % len(urls)], data=bodies[i % len(bodies)], headers=headers
                    ) as response:
                        await response.read()
                        errors += response.status != 200
                    total += time.perf_counter() - started
                means[index].append(total / count * 1e6)
    finally:
        for session in sessions:
            await session.close()
    return {"means_us": means, "errors": errors}


# ----------------------------------------------------------------------------- harness


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(IGW_HOME), env.get("PYTHONPATH", "")) if p)
    return env


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )


def _run_client(urls: list[str], concurrency: int, count: int, stream: bool) -> dict:
    spec = json.dumps({"urls": urls, "c": concurrency, "n": count, "stream": stream})
    return _run_script("client", spec)


def _run_compare(sets: list[list[str]], rounds: int, count: int, stream: bool) -> dict:
    spec = json.dumps({"sets": sets, "rounds": rounds, "n": count, "stream": stream})
    return _run_script("compare", spec)


def _run_script(mode: str, spec: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, mode, spec],
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"load client failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def measure(policy: str = "default", frontend: str = "httptools") -> dict:
    replicas = _spawn(__file__, "replicas", str(REPLICAS))
    gateway = None
    try:
        assert replicas.stdout is not None
        ports = json.loads(replicas.stdout.readline())
        direct = [f"http://127.0.0.1:{p}/v1/completions" for p in ports]
        gateway = _spawn(
            "-m", "igw", "serve", "--port", "0", "--policy", policy, "--log-level", "error",
            "--frontend", frontend,
            "--endpoints", ",".join(f"http://127.0.0.1:{p}" for p in ports),
        )  # fmt: skip
        assert gateway.stdout is not None
        line = gateway.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        assert match, f"igw serve did not start: {line!r}"
        via = [match.group(1) + "/v1/completions"]
        results: dict = {"policy": policy, "frontend": frontend}
        # The gateway's idle cost (scraping 4 replicas' /metrics every 50 ms), per second.
        time.sleep(0.5)
        idle_started, idle_cpu = time.monotonic(), _cpu_seconds(gateway.pid)
        time.sleep(IDLE_SECONDS)
        idle_rate = (_cpu_seconds(gateway.pid) - idle_cpu) / (time.monotonic() - idle_started)
        results["idle_cpu_ms_per_s"] = round(idle_rate * 1000, 1)
        for stream in (False, True):
            started, cpu_before = time.monotonic(), _cpu_seconds(gateway.pid)
            out = _run_compare([direct, via], ROUNDS, C1_REQUESTS // ROUNDS, stream)
            busy = _cpu_seconds(gateway.pid) - cpu_before - idle_rate * (time.monotonic() - started)
            via_requests = ROUNDS * (C1_REQUESTS // ROUNDS) + WARMUP
            d, g = (statistics.median(m) for m in out["means_us"])
            added = [v - u for u, v in zip(*out["means_us"], strict=True)]
            key = "stream" if stream else "json"
            results[f"c1_{key}"] = {
                "direct_mean_us": round(d),
                "gateway_mean_us": round(g),
                "added_mean_us": round(statistics.median(added)),  # median over rounds
                "added_min_us": round(min(added)),
                "gateway_cpu_us": round(busy / via_requests * 1e6),  # per request, idle cost off
                "errors": out["errors"],
            }
        before = _cpu_seconds(gateway.pid)
        load = _run_client(via, 64, C64_REQUESTS, False)
        cpu = _cpu_seconds(gateway.pid) - before
        results["c64"] = {
            "req_per_s": round(load["req_per_s"]),
            "cpu_s_per_1k": round(cpu / load["requests"] * 1000, 3),
            "p50_us": round(load["p50_us"]),
            "p99_us": round(load["p99_us"]),
            "errors": load["errors"],
            "first_error": load["first_error"],
        }
        return results
    finally:
        if gateway is not None:
            _stop(gateway)
        _stop(replicas)


def table(results: dict) -> str:
    lines = [
        f"gateway overhead (policy {results['policy']}, {results['frontend']} front end, "
        f"{REPLICAS} instant replicas, "
        f"{PROMPT_BYTES // 1024} KB prompts, keep-alive client)",
        f"{'case':<12}{'direct us':>12}{'via igw us':>12}{'added us':>10}{'best round':>12}"
        f"{'igw CPU us':>12}",
    ]
    for key in ("c1_json", "c1_stream"):
        r = results[key]
        lines.append(
            f"{key:<12}{r['direct_mean_us']:>12}{r['gateway_mean_us']:>12}"
            f"{r['added_mean_us']:>10}{r['added_min_us']:>12}{r['gateway_cpu_us']:>12}"
        )
    c = results["c64"]
    lines.append(
        f"c=64: {c['req_per_s']} req/s, {c['cpu_s_per_1k']} gateway CPU-s per 1k requests, "
        f"p50 {c['p50_us']} us, p99 {c['p99_us']} us, errors {c['errors']} "
        f"{c['first_error']}"
    )
    lines.append(f"gateway idle (scraping) cost: {results['idle_cpu_ms_per_s']} ms CPU per second")
    return "\n".join(lines)


# Quick mode (CI) measures the default front end (httptools); the full run both.
FRONTENDS = ["httptools"] if QUICK else ["httptools", "aiohttp"]


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_gateway_overhead(benchmark, frontend) -> None:
    results: dict = {}
    benchmark.pedantic(lambda: results.update(measure(frontend=frontend)), rounds=1, iterations=1)
    print("\n" + table(results))
    for key in ("c1_json", "c1_stream"):
        assert results[key]["errors"] == 0
        benchmark.extra_info[f"{key}_added_mean_us"] = results[key]["added_mean_us"]
        # No delayed-ACK stalls: a 40 ms stall on any request would dwarf the mean.
        assert results[key]["gateway_mean_us"] < 20_000
    assert results["c64"]["errors"] == 0
    benchmark.extra_info["c64_req_per_s"] = results["c64"]["req_per_s"]
    benchmark.extra_info["c64_cpu_s_per_1k"] = results["c64"]["cpu_s_per_1k"]
    benchmark.extra_info["c1_json_gateway_cpu_us"] = results["c1_json"]["gateway_cpu_us"]


def _main(argv: list[str]) -> None:
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    if argv and argv[0] == "replicas":
        run(_replicas(int(argv[1])))
    elif argv and argv[0] == "compare":
        spec = json.loads(argv[1])
        print(json.dumps(run(_compare(spec["sets"], spec["rounds"], spec["n"], spec["stream"]))))
    elif argv and argv[0] == "client":
        spec = json.loads(argv[1])
        print(json.dumps(run(_client(spec["urls"], spec["c"], spec["n"], spec["stream"]))))
    else:
        policy = argv[0] if argv else "default"
        frontend = argv[1] if len(argv) > 1 else "httptools"
        print(table(measure(policy, frontend)))


if __name__ == "__main__":
    _main(sys.argv[1:])
