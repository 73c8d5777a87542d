"""Python work per proxied request in ``igw serve``, without sockets, against a minimal proxy.

Why: over real sockets on a 2-core VM the per-request figures move by more than the changes
being measured (process wake-ups, other jobs). In one process with fake transports the kernel
and the other processes are out of the picture and what is left is the Python (and C++) work
the gateway does per request: parse the HTTP request, run the pipeline, write upstream, parse
the answer, write it back, account. The reference is the smallest proxy that does the same I/O
with the same building blocks (uvloop, httptools, one upstream connection) and nothing else,
measured in the same run; the ratio is the cost of everything igw adds.

What is measured (thread CPU time per request, 16 KB prompts, non-streamed, 4 endpoints, the
policy ``IGW_BENCH_POLICY``, by default ``predicted-ttft`` as in ``igw serve``): ``total``
includes the work done after the answer is written (account stage, metrics); ``before
answer`` stops at the write of the response.

``IGW_BENCH_QUICK=1`` keeps it to a few seconds.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

# The same completion answer and the same 64 prompts of 16 KB as the socket benchmark.
from test_gateway_bench import COMPLETION, _bodies

QUICK = os.environ.get("IGW_BENCH_QUICK") == "1"
POLICY = os.environ.get("IGW_BENCH_POLICY", "predicted-ttft")
REQUESTS = 2_000 if QUICK else 20_000
WARMUP = 300
UPSTREAM_ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
    b"date: Thu, 26 Nov 2026 16:00:00 GMT\r\n\r\n" % len(COMPLETION)
) + COMPLETION


def _requests() -> list[bytes]:
    return [
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        b"Content-Type: application/json\r\nUser-Agent: bench\r\nAccept: */*\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
        for body in _bodies(stream=False)
    ]


class _Transport:
    """Stands in for a socket: ``on_write`` sees every write."""

    def __init__(self, on_write) -> None:
        self.on_write = on_write

    def write(self, data: bytes) -> None:
        self.on_write(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default=None):
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Client:
    """Feeds requests to a server protocol and waits for each answer."""

    def __init__(self, protocol) -> None:
        self.protocol = protocol
        self.loop = asyncio.get_running_loop()
        self.answered: asyncio.Future | None = None
        self.answered_at = 0.0
        self.last = b""
        protocol.connection_made(_Transport(self._wrote))

    def _wrote(self, data: bytes) -> None:
        self.answered_at = time.thread_time()
        self.last = data
        if self.answered is not None and not self.answered.done():
            self.answered.set_result(None)

    async def run(self, requests: list[bytes], count: int) -> tuple[float, float]:
        """(total, before-answer) thread CPU seconds for ``count`` requests."""
        total = before = 0.0
        for i in range(count):
            self.answered = self.loop.create_future()
            started = time.thread_time()
            # from a loop callback, as a socket's bytes arrive (not from this task)
            self.loop.call_soon(self.protocol.data_received, requests[i % len(requests)])
            await self.answered
            await asyncio.sleep(0)  # let work queued after the answer run
            before += self.answered_at - started
            total += time.thread_time() - started
        assert b" 200 " in self.last[:16], self.last[:200]
        return total, before


# ------------------------------------------------------------------ the minimal reference


def _minimal_proxy():
    """One client protocol relaying each request to one upstream protocol: the floor."""
    import httptools

    class Collector:
        """httptools callbacks that gather one message's body; ``complete`` gets it whole."""

        def __init__(self, parser_type) -> None:
            self.parser = parser_type(self)
            self.body: list[bytes] = []

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            body, self.body = b"".join(self.body), []
            self.complete(body)

    class Upstream(Collector):
        def __init__(self) -> None:
            super().__init__(httptools.HttpResponseParser)
            self.done = None

        def complete(self, body: bytes) -> None:
            self.done.set_result(body)

    class Front(Collector):
        def __init__(self) -> None:
            super().__init__(httptools.HttpRequestParser)
            self.loop = asyncio.get_running_loop()
            self.upstream = Upstream()
            self.upstream.transport = _Transport(
                lambda _data: self.loop.call_soon(self.upstream.data_received, UPSTREAM_ANSWER)
            )

        def connection_made(self, transport) -> None:
            self.transport = transport

        def complete(self, body: bytes) -> None:
            self.loop.create_task(self.relay(body))

        async def relay(self, body: bytes) -> None:
            self.upstream.done = self.loop.create_future()
            self.upstream.transport.write(
                b"POST /v1/completions HTTP/1.1\r\nhost: upstream\r\ncontent-length: %d\r\n\r\n"
                % len(body)
                + body
            )
            answer = await self.upstream.done
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                % len(answer)
                + answer
            )

    return Front()


# --------------------------------------------------------------------------- igw serve


async def _igw_front(monkeypatch):
    from igw.gateway import fastfront, upstream
    from igw.gateway.config import GatewayConfig, PoolSpec
    from igw.gateway.serve import ServeOptions, start_stack

    async def instant_replica(self, key):
        conn = upstream._Connection(key)
        loop = asyncio.get_running_loop()
        conn.connection_made(
            _Transport(lambda _data: loop.call_soon(conn.data_received, UPSTREAM_ANSWER))
        )
        return conn

    monkeypatch.setattr(upstream.UpstreamPool, "_connect", instant_replica)
    urls = [f"http://127.0.0.1:{18001 + i}" for i in range(4)]
    config = GatewayConfig(pools={"default": PoolSpec(endpoints=urls, policy=POLICY)})
    stack = await start_stack(config, ServeOptions(port=0, scrape_interval=3600.0))
    for layer in stack.datalayers:
        await layer.stop()  # no scraping: every endpoint stays as discovered (ready)
    return stack, fastfront._Connection(stack.gateway._front)


def _measure(monkeypatch) -> dict:
    import uvloop

    async def main() -> dict:
        requests = _requests()
        reference = _Client(_minimal_proxy())
        await reference.run(requests, WARMUP)
        stack, protocol = await _igw_front(monkeypatch)
        try:
            igw = _Client(protocol)
            await igw.run(requests, WARMUP)
            out = {}
            for name, client in (("reference", reference), ("igw", igw)):
                total, before = await client.run(requests, REQUESTS)
                per = 1e6 / REQUESTS
                out[name] = {"total_us": total * per, "before_us": before * per}
            return out
        finally:
            await stack.stop()

    return uvloop.run(main())


def test_gateway_python_path(benchmark, monkeypatch) -> None:
    pytest.importorskip("httptools")
    results: dict = {}
    benchmark.pedantic(lambda: results.update(_measure(monkeypatch)), rounds=1, iterations=1)
    ref, igw = results["reference"], results["igw"]
    ratio = igw["total_us"] / ref["total_us"]
    print(
        f"\nper request (thread CPU, no sockets): igw {igw['total_us']:.1f} us "
        f"({igw['before_us']:.1f} before the answer), minimal proxy {ref['total_us']:.1f} us "
        f"({ref['before_us']:.1f}); igw / minimal = {ratio:.1f}x"
    )
    benchmark.extra_info.update(
        igw_total_us=round(igw["total_us"], 1),
        igw_before_answer_us=round(igw["before_us"], 1),
        reference_total_us=round(ref["total_us"], 1),
        ratio=round(ratio, 2),
    )
    assert igw["total_us"] > 0 and ref["total_us"] > 0
