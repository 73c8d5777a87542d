"""The smallest HTTP/1.1 proxy the gateway benchmark can compare with: a floor, not a product.

Why it exists: on a small VM most of a proxy hop's added latency is the kernel's (two more
process wake-ups and four more socket calls per request), not the proxy's own code; the
Rust router measured here spends as much CPU per request as igw does. Measuring this proxy in
the same run shows how much of igw's added latency any Python proxy pays on this machine and
how much is igw's own work (parsing, routing, accounting).

What it does, and nothing more: uvloop + httptools, keep-alive connections on both sides,
each request's body relayed to the next replica in turn, and the replica's response bytes
relayed back as they arrive (no re-framing, so streamed responses pass through too).

Run: ``python bench/minimal_proxy.py PORT,PORT,...``; prints its URL on the first line.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import sys

import httptools


class _Upstream(asyncio.Protocol):
    """One keep-alive connection to a replica; relays its response bytes to ``client``."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: asyncio.Transport | None = None
        self.done: asyncio.Future | None = None
        self.port = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.client is not None:
            self.client.write(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("replica closed the connection"))


class _Front(asyncio.Protocol):
    """One client connection: requests are relayed one at a time, in order."""

    def __init__(self, proxy: MinimalProxy) -> None:
        self.proxy = proxy
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.last: asyncio.Task | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        self.last = asyncio.get_running_loop().create_task(self.relay(self.url, body, self.last))

    async def relay(self, url: bytes, body: bytes, previous: asyncio.Task | None) -> None:
        if previous is not None:
            await previous  # answers go back in request order
        upstream = await self.proxy.checkout()
        upstream.client = self.transport
        upstream.done = asyncio.get_running_loop().create_future()
        assert upstream.transport is not None
        upstream.transport.write(
            b"POST %s HTTP/1.1\r\nhost: replica\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % (url, len(body)) + body
        )
        await upstream.done
        upstream.client = None
        self.proxy.checkin(upstream)


class MinimalProxy:
    def __init__(self, ports: list[int]) -> None:
        self.ports = itertools.cycle(ports)
        self.idle: dict[int, list[_Upstream]] = {}

    async def checkout(self) -> _Upstream:
        port = next(self.ports)
        idle = self.idle.setdefault(port, [])
        if idle:
            return idle.pop()
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(_Upstream, "127.0.0.1", port)
        upstream.port = port
        return upstream

    def checkin(self, upstream: _Upstream) -> None:
        self.idle[upstream.port].append(upstream)


async def serve(ports: list[int]) -> None:
    proxy = MinimalProxy(ports)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Front(proxy), "127.0.0.1", 0, backlog=1024)
    print(f"listening on http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve([int(p) for p in sys.argv[1].split(",")]))
