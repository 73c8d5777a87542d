"""Child processes of a bench run: the simulated fleet, the gateway, peer routers.

Each runs as its own subprocess (its own CPU, its own event loop), started with this
Python, logs to a file in the run's temp directory, is polled until it answers, and is
stopped by PID (SIGTERM, then SIGKILL after a grace period). Only loopback addresses.

Commands are templates: ``{python}``, ``{port}``, ``{workers}`` (the replica URLs as
separate arguments), ``{workers_csv}`` (comma-joined). That is how ``--router-cmd`` lets a
user start any peer router against each fresh fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

LOOPBACK = "127.0.0.1"


class ProcessFailed(RuntimeError):
    """A child exited or never became ready; the message carries its log tail."""


def free_port_block(n: int, attempts: int = 200) -> int:
    """A base port P such that P..P+n-1 are free on loopback right now."""
    for _ in range(attempts):
        with socket.socket() as probe:
            probe.bind((LOOPBACK, 0))
            base = probe.getsockname()[1]
        if base + n >= 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind((LOOPBACK, p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no block of {n} free consecutive ports on {LOOPBACK}")


def expand(template: str | Sequence[str], values: Mapping[str, str | Sequence[str]]) -> list[str]:
    """Split a command template and fill placeholders; a lone ``{workers}`` argument becomes
    one argument per worker URL."""
    parts = shlex.split(template) if isinstance(template, str) else list(template)
    out: list[str] = []
    for part in parts:
        lone = part.strip("{}")
        if part.startswith("{") and part.endswith("}") and not isinstance(values.get(lone), str):
            if lone not in values:
                raise ValueError(f"unknown placeholder {part} in command {template!r}")
            out.extend(values[lone])  # type: ignore[arg-type]
            continue
        try:
            out.append(part.format(**{k: v for k, v in values.items() if isinstance(v, str)}))
        except KeyError as exc:
            raise ValueError(f"unknown placeholder {{{exc.args[0]}}} in {template!r}") from None
    return out


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when the bench process dies, so a
    killed bench (Ctrl-C twice, a CI timeout) leaves no simulator or gateway behind."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Child:
    """One started subprocess with its log file."""

    def __init__(self, name: str, argv: list[str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise ProcessFailed(
                f"{self.name} exited with code {code}: {shlex.join(self.argv)}\n{self.log_tail()}"
            )

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM this PID, SIGKILL it if it lingers; blocking, so call via a thread."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(grace)
        self._log.close()


async def wait_ready(
    session: aiohttp.ClientSession, urls: Sequence[str], child: Child | None, timeout: float
) -> None:
    """Poll each URL until it answers 200; fail early if the child died."""
    deadline = time.monotonic() + timeout
    pending = list(urls)
    while pending:
        if child is not None:
            child.check_alive()
        url = pending[0]
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status == 200:
                    pending.pop(0)
                    continue
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            pass
        if time.monotonic() > deadline:
            name = child.name if child else url
            tail = child.log_tail() if child else ""
            raise ProcessFailed(f"{name} not ready after {timeout:.0f} s ({url})\n{tail}")
        await asyncio.sleep(0.1)


METRIC_NAMES = (
    "vllm:request_success_total",
    "vllm:prefix_cache_hits_total",
    "vllm:prefix_cache_queries_total",
)


def parse_counters(text: str, names: Sequence[str] = METRIC_NAMES) -> dict[str, float]:
    """Sum each named counter over all its label sets in a Prometheus text page."""
    totals = dict.fromkeys(names, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


async def scrape(session: aiohttp.ClientSession, workers: Sequence[str]) -> dict[str, dict]:
    """Counters per worker URL; a worker without /metrics yields an empty dict."""

    async def one(url: str) -> dict[str, float]:
        try:
            async with session.get(url + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
                if r.status != 200:
                    return {}
                return parse_counters(await r.text())
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError):
            return {}

    results = await asyncio.gather(*(one(u) for u in workers))
    return dict(zip(workers, results, strict=True))


async def first_model(session: aiohttp.ClientSession, url: str) -> str:
    """The first model id a replica lists at /v1/models."""
    async with session.get(url + "/v1/models", timeout=aiohttp.ClientTimeout(total=5)) as r:
        body = await r.json(content_type=None)
    try:
        return str(body["data"][0]["id"])
    except (KeyError, IndexError, TypeError):
        raise ProcessFailed(f"{url}/v1/models listed no model: {str(body)[:200]}") from None


async def stop_all(children: Sequence[Child]) -> None:
    for child in reversed(children):
        with contextlib.suppress(Exception):
            await asyncio.to_thread(child.stop)


def python() -> str:
    return sys.executable
