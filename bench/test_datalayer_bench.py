"""Data-layer benchmarks: metrics-page parsing, and the CPU cost of scraping a fleet.

1. Parsing a realistic ~40 KB vLLM ``/metrics`` page into igw's figures with the targeted
   scanner (``igw.datalayer.engines.extract``), against ``prometheus_client.parser`` doing
   the general parse of the same page. The ratio is printed and stored in ``extra_info``.
2. Scraping 100 fake vLLM endpoints every 50 ms through ``DataLayer`` for a few seconds
   (``IGW_BENCH_QUICK=1``: shorter), once per page transport (aiohttp's client; the lean
   httptools connection) and event loop (asyncio; uvloop, which igw's commands use). The
   fake servers run in a child process so only the scraper's CPU is counted:
   ``time.process_time()`` delta / wall time = cores used. Target (issue 4): <= 0.5 core.
   Reported, not asserted (a shared 2-core CI box is noisy); the test fails only if the
   scraping itself is unhealthy (errors, too few scrapes).
"""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import igw
import igw.datastore
from igw.datalayer import DataLayer
from igw.datalayer.engines import ENGINES, extract
from igw.datalayer.testing import LoraSeries, vllm_page
from igw.datalayer.transport import HAVE_HTTPTOOLS

QUICK = os.environ.get("IGW_BENCH_QUICK") == "1"
ENDPOINTS = 100
INTERVAL = 0.05
DURATION = 1.5 if QUICK else 5.0

PAGE = vllm_page(3, 5, 0.42, lora=[LoraSeries("a,b", "c", 4, 1.7e9), LoraSeries("", "", 4, 1.8e9)])


def _reference_parse(page: bytes) -> dict[str, float]:
    """What a general parser must do to get the same figures."""
    out = {}
    for family in text_string_to_metric_families(page.decode()):
        for sample in family.samples:
            out[sample.name] = sample.value
    return out


def _mean_seconds(fn, *args, min_time: float = 0.2) -> float:
    runs, start = 0, time.perf_counter()
    while True:
        fn(*args)
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time and runs >= 3:
            return elapsed / runs


def test_parse_vllm_page_vs_prometheus_client(benchmark, capsys):
    spec = ENGINES["vllm"]
    scraped = benchmark(extract, spec, PAGE)
    assert (scraped.waiting, scraped.running, scraped.lora_running) == (3, 5, ["a", "b"])
    reference = _reference_parse(PAGE)
    assert reference["vllm:num_requests_waiting"] == scraped.waiting
    ours = benchmark.stats.stats.mean if benchmark.stats else _mean_seconds(extract, spec, PAGE)
    theirs = _mean_seconds(_reference_parse, PAGE)
    benchmark.extra_info.update(
        page_bytes=len(PAGE),
        ours_us=round(ours * 1e6, 2),
        prometheus_client_us=round(theirs * 1e6, 1),
        speedup=round(theirs / ours, 1),
    )
    with capsys.disabled():
        print(
            f"\nparse {len(PAGE)} B vLLM page: igw {ours * 1e6:.1f} us, prometheus_client "
            f"{theirs * 1e6:.0f} us -> {theirs / ours:.0f}x faster"
        )


def _pool() -> igw.datastore.Pool:
    return igw.datastore.Pool("bench", max_endpoints=ENDPOINTS + 8)


def _start_fake_fleet() -> tuple[subprocess.Popen[str], list[int]]:
    env = dict(os.environ)
    package_root = str(Path(igw.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "igw.datalayer.testing", "--servers", str(ENDPOINTS)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        raise RuntimeError("fake fleet did not start")
    return proc, [int(p) for p in line.split(",")]


async def _scrape_fleet(ports: list[int], transport: str = "auto") -> dict[str, float]:
    pool = _pool()
    for port in ports:
        pool.upsert(f"127.0.0.1:{port}")
    layer = DataLayer(pool, interval=INTERVAL, timeout=1.0, seed=7, transport=transport)
    await layer.start()
    try:
        await asyncio.sleep(0.5)  # warm-up: connections open, phases spread
        scrapes0 = layer.stats()["scrapes"]
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(DURATION)
        cpu1, wall1 = time.process_time(), time.monotonic()
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        stats = layer.stats()
    finally:
        await layer.stop()
    wall = wall1 - wall0
    scrapes = stats["scrapes"] - scrapes0
    return {
        "endpoints": len(ports),
        "seconds": round(wall, 2),
        "scrapes_per_s": round(scrapes / wall, 1),
        "expected_per_s": round(len(ports) / INTERVAL, 1),
        "cores": round((cpu1 - cpu0) / wall, 3),
        "cpu_us_per_scrape": round((cpu1 - cpu0) / max(scrapes, 1) * 1e6, 1),
        # Of which the kernel (loopback TCP on both ends is charged to the sender):
        "user_cores": round((usage1.ru_utime - usage0.ru_utime) / wall, 3),
        "system_cores": round((usage1.ru_stime - usage0.ru_stime) / wall, 3),
        "errors": sum(stats["errors"].values()),
        "stale": stats["stale"],
    }


def _uvloop_run():
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.run


VARIANTS = [
    ("aiohttp", "asyncio"),
    pytest.param(
        "httptools",
        "asyncio",
        marks=pytest.mark.skipif(not HAVE_HTTPTOOLS, reason="httptools not installed"),
    ),
    pytest.param(
        "httptools",
        "uvloop",
        marks=pytest.mark.skipif(
            not HAVE_HTTPTOOLS or _uvloop_run() is None, reason="httptools/uvloop missing"
        ),
    ),
]


@pytest.mark.parametrize(("transport", "loop"), VARIANTS)
def test_scrape_100_endpoints_every_50ms_cpu(benchmark, capsys, transport, loop):
    run = asyncio.run if loop == "asyncio" else _uvloop_run()
    proc, ports = _start_fake_fleet()
    try:
        result = benchmark.pedantic(
            lambda: run(_scrape_fleet(ports, transport)), rounds=1, iterations=1
        )
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    benchmark.extra_info.update(result)
    with capsys.disabled():
        print(
            f"\n[{transport} on {loop}] scrape {result['endpoints']} endpoints every "
            f"{INTERVAL * 1000:.0f} ms for {result['seconds']} s: "
            f"{result['scrapes_per_s']}/s (of {result['expected_per_s']}), "
            f"{result['cores']} cores (user {result['user_cores']}, system "
            f"{result['system_cores']}; {result['cpu_us_per_scrape']} us CPU per scrape; "
            f"target <= 0.5 core), errors {result['errors']}"
        )
    # Loose on purpose: on a busy 2-core box the fake fleet itself lags (seen: 870/s at load
    # 8), and a 1 s timeout may fire. These only catch a scraper that stalls or breaks.
    assert result["errors"] <= 0.01 * result["scrapes_per_s"] * result["seconds"]
    assert result["scrapes_per_s"] >= 0.1 * result["expected_per_s"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-s"]))
