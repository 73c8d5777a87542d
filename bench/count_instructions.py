"""Instructions per request of ``igw serve``'s request path, counted by valgrind (callgrind).

Why: on the 2-core VM a change of a few microseconds per request is below the noise of any
timing, in-process CPU time included, whenever anything else runs. An instruction count does
not move with the machine's load: the same tree gives the same count within ~0.5 %, so two
trees can be compared while other jobs run. (Instructions are not time: a cache miss costs no
instruction; use it to compare changes to the Python and C++ work, and confirm the gain over
sockets with ``bench/ab_gateways.py`` on a quiet machine.)

How: the path harness of ``test_gateway_path_bench`` (fake sockets, an instantly answering
upstream, 16 KB prompts, 4 endpoints) runs under ``valgrind --tool=callgrind`` twice, with
``SMALL`` and ``LARGE`` requests after the same warm-up; the difference over ``LARGE - SMALL``
is the count per request, start-up cancelled out.

    python bench/count_instructions.py TREE [TREE ...] [--stream] [--policy NAME]

Needs valgrind (``apt-get install valgrind``); each tree is a checkout with a built core
(``python/igw/_core*.so``). Runs ``_drive`` inside the tree: ``python bench/count_instructions.py
--drive N [--stream]`` is that inner mode.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SMALL, LARGE = 500, 1500
_COLLECTED = re.compile(r"Collected : (\d+)")


class _Patch:
    """The one ``monkeypatch.setattr`` the path harness needs, outside pytest."""

    def setattr(self, target, name: str, value) -> None:
        setattr(target, name, value)


def _drive(count: int, stream: bool) -> None:
    """Warm up, then serve ``count`` requests through igw's request path (inner mode)."""
    import uvloop

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import test_gateway_bench as sockets_bench
    import test_gateway_path_bench as path

    if stream:  # the replica's answer as an SSE stream, whole in one read (the usual case)
        path.UPSTREAM_ANSWER = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n"
            % (len(sockets_bench.STREAM), sockets_bench.STREAM)
        )
    requests = [
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        for body in sockets_bench._bodies(stream)
    ]

    async def main() -> None:
        stack, protocol = await path._igw_front(_Patch())
        try:
            client = path._Client(protocol)
            await client.run(requests, path.WARMUP)
            await client.run(requests, count)
        finally:
            await stack.stop()

    uvloop.run(main())


def _count(tree: Path, requests: int, stream: bool, policy: str) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={scratch}/out",
            sys.executable, str(Path(__file__).resolve()), "--drive", str(requests),
        ] + (["--stream"] if stream else [])  # fmt: skip
        # one OpenBLAS thread: its idle workers spin, and their instructions vary run to run
        env = dict(os.environ, PYTHONPATH=str(tree / "python"), IGW_BENCH_POLICY=policy,
                   OPENBLAS_NUM_THREADS="1")  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"{tree}: the counted run failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="*", type=Path, help="igw checkouts to count")
    parser.add_argument("--stream", action="store_true", help="streamed requests")
    parser.add_argument("--policy", default="predicted-ttft")
    parser.add_argument("--drive", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive is not None:
        _drive(args.drive, args.stream)
        return 0
    if not args.trees:
        parser.error("name at least one igw checkout")
    for tree in args.trees:
        if not (tree / "python" / "igw").is_dir():
            parser.error(f"{tree}: not an igw checkout (no python/igw)")
    for tree in args.trees:
        small = _count(tree, SMALL, args.stream, args.policy)
        large = _count(tree, LARGE, args.stream, args.policy)
        print(f"{tree}: {(large - small) / (LARGE - SMALL):,.0f} instructions per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
