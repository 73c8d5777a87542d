"""The load generator: replays a workload's schedule against one router URL.

Open-loop requests go out at their arrival offsets whatever the router does (so a slow
router builds a queue, as real traffic would); a request with ``after`` goes out ``at``
seconds after its predecessor finished (closed-loop chat/agent sessions). Every request
streams (``stream_options.include_usage``) so time to first token and inter-token gaps are
observed at the client. The whole replay is cut at ``time_limit``: requests not sent by
then, or still running, count as errors with a reason.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Sequence

import aiohttp

from igw.bench.stats import Sample
from igw.bench.workloads import BenchRequest

# Response headers a router may use to say which replica served the request.
SERVED_BY_HEADERS = (
    "x-igw-endpoint",
    "x-igw-served-by",
    "x-gateway-destination-endpoint-served",
    "x-gateway-destination-endpoint",
    "x-served-by",
)


class Progress:
    """A one-line progress bar on stderr (no dependency); quiet when disabled."""

    def __init__(self, label: str, total: int, enabled: bool = True, width: int = 30) -> None:
        self.label, self.total, self.enabled, self.width = label, total, enabled, width
        self.done = 0
        self.errors = 0
        self.started = time.monotonic()
        self._last = 0.0
        self._closed = False

    def update(self, ok: bool, force: bool = False) -> None:
        self.done += 1
        self.errors += 0 if ok else 1
        self.draw(force)

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if (
            self._closed
            or not self.enabled
            or (not force and now - self._last < 0.2 and self.done < self.total)
        ):
            return
        self._last = now
        frac = self.done / self.total if self.total else 1.0
        filled = int(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        sys.stderr.write(
            f"\r{self.label:<22} [{bar}] {self.done}/{self.total} "
            f"err={self.errors} {now - self.started:5.1f}s"
        )
        if self.done >= self.total:
            sys.stderr.write("\n")
            self._closed = True
        sys.stderr.flush()


def _content_in(event: dict) -> bool:
    for choice in event.get("choices") or ():
        if choice.get("text"):
            return True
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content"):
            return True
    return False


async def send_one(
    session: aiohttp.ClientSession,
    url: str,
    req: BenchRequest,
    model: str,
    t0: float,
) -> Sample:
    """Send one streaming request and time it; never raises (failures become samples)."""
    path = "/v1/chat/completions" if req.chat else "/v1/completions"
    sample = Sample(index=req.index, ok=False, prompt_tokens=req.prompt_tokens)
    start = time.perf_counter()
    sample.sent_at = start - t0
    last_chunk: float | None = None
    chunks = 0
    try:
        async with session.post(url + path, json=req.body(model)) as resp:
            sample.status = resp.status
            for name in SERVED_BY_HEADERS:
                if name in resp.headers:
                    sample.served_by = resp.headers[name].split(",")[0].strip()
                    break
            if resp.status != 200:
                text = await resp.text()
                sample.bytes_in = len(text)
                sample.error = f"HTTP {resp.status}: {text[:200]}"
                return sample
            async for raw in resp.content:
                sample.bytes_in += len(raw)
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    continue  # read to the end so the keep-alive connection is reused
                try:
                    event = json.loads(data)
                except ValueError:
                    sample.error = f"bad SSE data: {data[:100]!r}"
                    return sample
                if "error" in event:
                    sample.error = f"stream error: {str(event['error'])[:200]}"
                    return sample
                now = time.perf_counter()
                if _content_in(event):
                    chunks += 1
                    if last_chunk is None:
                        sample.ttft = now - start
                    else:
                        sample.itls.append(now - last_chunk)
                    last_chunk = now
                usage = event.get("usage")
                if usage:
                    sample.output_tokens = int(usage.get("completion_tokens") or 0)
                    sample.prompt_tokens = int(usage.get("prompt_tokens") or req.prompt_tokens)
        sample.e2e = time.perf_counter() - start
        if sample.output_tokens == 0:
            sample.output_tokens = chunks
        if sample.ttft is None:
            sample.error = "stream ended without any content"
            return sample
        sample.ok = True
    except asyncio.CancelledError:
        sample.error = "cut by the time limit while running"
        raise
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"[:200]
    return sample


async def replay(
    url: str,
    requests: Sequence[BenchRequest],
    model: str,
    time_limit: float,
    progress: Progress | None = None,
) -> tuple[list[Sample], float]:
    """Replay ``requests`` against ``url``; returns one sample per request (same order) and
    the wall time from the first scheduled send to the last completion."""
    samples: dict[int, Sample] = {}
    children: dict[int, list[BenchRequest]] = {}
    for r in requests:
        if r.after is not None:
            children.setdefault(r.after, []).append(r)
    roots = [r for r in requests if r.after is None]
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()
    t0 = time.perf_counter()
    start = loop.time()

    async def chain(req: BenchRequest, due: float) -> None:
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        running = Sample(index=req.index, ok=False, error="cut by the time limit while running")
        samples[req.index] = running
        sample = await send_one(session, url, req, model, t0)
        samples[req.index] = sample
        if progress:
            progress.update(sample.ok)
        for child in children.get(req.index, ()):
            spawn(chain(child, loop.time() + child.at))

    def spawn(coro) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for r in roots:
            spawn(chain(r, start + r.at))
        deadline = start + time_limit
        while tasks and loop.time() < deadline:
            await asyncio.wait(set(tasks), timeout=max(0.0, deadline - loop.time()))
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.perf_counter() - t0
    out = []
    for r in requests:
        s = samples.get(r.index)
        if s is None:
            s = Sample(index=r.index, ok=False, error="not sent before the time limit")
            if progress:
                progress.update(False)
        out.append(s)
    if progress:
        progress.draw(force=True)
    return out, wall
