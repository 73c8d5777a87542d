"""Same-run A/B of two igw source trees at concurrency 1 (gateway overhead).

Why: on a small shared VM one run of ``bench/test_gateway_bench.py`` moves by +-50 us between
runs, more than most single changes. This starts ``igw serve`` from each tree behind the same
4 instant replicas and alternates direct calls, tree A and tree B round by round (the same
``_compare`` client the gateway bench uses), so a burst of load elsewhere hits all three alike.
It prints each tree's added latency per round, B minus A per round, and each gateway's CPU per
request during its own rounds.

    python bench/ab_gateways.py OLD_TREE NEW_TREE [--rounds 10] [--requests 300] [--stream]
    python bench/ab_gateways.py OLD_TREE NEW_TREE --interleave 5000 [--stream]
    python bench/ab_gateways.py TREE TREE --b-args "--busy-poll-us 1000"   # one flag A/B

``--interleave N`` sends one request directly, one through A and one through B, in turn, N
times, instead of rounds (``test_gateway_bench._interleaved``): host noise at the millisecond
scale then hits all three alike and B - A is resolved to ~5 us (rounds of 300: ~40 us on this
VM). The order rotates every turn, so neither tree gains from its place in the turn (worth
10-20 us here). Every request then finds its process's caches colder than in a round, so the
added latencies read higher than the gateway benchmark's rounds; compare the two trees, not
the absolute figures.

A tree is a checkout with a built ``python/igw/_core*.so`` (``scripts/dev-build.sh``, or copy
the module from another checkout: the core's API only grows). Run it with this checkout's
``python`` on ``PYTHONPATH`` (for the bench module); loopback only, bounded in requests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import test_gateway_bench as bench

_URL = re.compile(r"http://127\.0\.0\.1:\d+")


def _start_igw(
    tree: Path, endpoints: str, policy: str, extra: list[str]
) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=str(tree / "python"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "igw", "serve", "--port", "0", "--log-level", "error",
         "--policy", policy, "--endpoints", endpoints, *extra],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        found = _URL.search(line)
        if found:
            return proc, found.group(0)
    proc.kill()
    raise SystemExit(f"igw serve from {tree} exited before printing its address")


def _report_interleaved(trees: tuple[Path, Path], times: list[list[float]]) -> None:
    for index, tree in enumerate(trees, start=1):
        added = bench.added_per_turn(times, index)
        print(f"{'AB'[index - 1]} {tree}: added mean {statistics.fmean(added):.0f} us, "
              f"median {statistics.median(added):.0f}, "
              f"10%-trimmed {bench.trimmed_mean(added):.0f}")  # fmt: skip
    diff = [b - a for a, b in zip(times[1], times[2], strict=True)]
    print(f"B - A per turn: mean {statistics.fmean(diff):.1f} us, median "
          f"{statistics.median(diff):.1f}, 10%-trimmed {bench.trimmed_mean(diff):.1f} "
          f"({len(diff)} turns)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tree_a", type=Path, help="checkout A (e.g. the base commit)")
    parser.add_argument("tree_b", type=Path, help="checkout B (e.g. the change)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=300, help="per tree per round")
    parser.add_argument("--stream", action="store_true", help="streamed requests")
    parser.add_argument("--policy", default="predicted-ttft")
    parser.add_argument(
        "--a-args",
        default="",
        metavar="ARGS",
        help="more igw serve arguments for A (e.g. '--busy-poll-us 1000')",
    )
    parser.add_argument("--b-args", default="", metavar="ARGS", help="the same for B")
    parser.add_argument("--interleave", type=int, default=0, metavar="N",
                        help="N turns of one request per target instead of rounds")  # fmt: skip
    args = parser.parse_args(argv)
    for tree in (args.tree_a, args.tree_b):
        if not (tree / "python" / "igw").is_dir():
            parser.error(f"{tree}: not an igw checkout (no python/igw)")
    if args.rounds < 1 or args.requests < 1:
        parser.error("--rounds and --requests must be >= 1")
    replicas = bench._spawn(bench.__file__, "replicas", str(bench.REPLICAS))
    gateways: list[subprocess.Popen] = []
    try:
        assert replicas.stdout is not None
        ports = json.loads(replicas.stdout.readline())
        endpoints = ",".join(f"http://127.0.0.1:{p}" for p in ports)
        urls = []
        for tree, extra in ((args.tree_a, args.a_args), (args.tree_b, args.b_args)):
            proc, url = _start_igw(tree, endpoints, args.policy, extra.split())
            gateways.append(proc)
            urls.append(url)
        sets = [[f"http://127.0.0.1:{p}/v1/completions" for p in ports]]
        sets += [[url + "/v1/completions"] for url in urls]
        if args.interleave > 0:
            import uvloop

            targets = [urls_[0] for urls_ in sets]
            times = uvloop.run(bench._interleaved(targets, args.interleave, args.stream))
            _report_interleaved((args.tree_a, args.tree_b), times)
            return 0
        pids: list[int | None] = [None, *(proc.pid for proc in gateways)]
        out = bench._run_compare(sets, args.rounds, args.requests, args.stream, pids)
        direct = out["means_us"][0]
        for index, tree in enumerate((args.tree_a, args.tree_b), start=1):
            added = [v - d for d, v in zip(direct, out["means_us"][index], strict=True)]
            cpu = out["cpu_s"][index] / (args.rounds * args.requests) * 1e6
            print(f"{'AB'[index - 1]} {tree}: added median {statistics.median(added):.0f} us "
                  f"(rounds {[round(x) for x in added]}), CPU {cpu:.0f} us per request, "
                  f"errors {out['errors'][index]}")  # fmt: skip
        diff = [b - a for a, b in zip(out["means_us"][1], out["means_us"][2], strict=True)]
        print(f"B - A per round: median {statistics.median(diff):.0f} us, "
              f"{[round(x) for x in diff]}")  # fmt: skip
        return 0
    finally:
        for proc in [*gateways, replicas]:
            bench._stop(proc)


if __name__ == "__main__":
    sys.exit(main())
