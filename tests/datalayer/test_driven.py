"""Scrapes driven by a cohort's timer (kept-alive lean connections, no task per scrape)."""

from __future__ import annotations

import asyncio

import pytest

from igw.datalayer import DataLayer
from igw.datalayer.testing import vllm_page
from igw.datalayer.transport import HAVE_HTTPTOOLS

from .helpers import wait_until

pytestmark = pytest.mark.skipif(not HAVE_HTTPTOOLS, reason="httptools not installed")

FAST = {"interval": 0.02, "timeout": 0.15, "max_backoff": 0.05, "seed": 1, "calm_interval": 0.02}


@pytest.fixture
async def layer(pool):
    made: list[DataLayer] = []

    def make(**kwargs) -> DataLayer:
        dl = DataLayer(pool, **{**FAST, "transport": "httptools", **kwargs})
        made.append(dl)
        return dl

    yield make
    for dl in made:
        await dl.stop()


def driven(dl: DataLayer, endpoint) -> bool:
    state = dl.state(endpoint)
    return state is not None and state.driven is not None and state.task is None


async def test_a_healthy_endpoint_is_scraped_from_its_cohorts_timer(pool, servers, layer):
    fleet = [await servers(vllm_page(i, 1, 0.1)) for i in range(3)]
    endpoints = [pool.upsert(s.address) for s in fleet]
    dl = layer()
    await dl.start()
    await wait_until(lambda: all(driven(dl, e) for e in endpoints))
    before = [dl.state(e).scrapes for e in endpoints]
    await asyncio.sleep(0.3)
    gained = [dl.state(e).scrapes - b for e, b in zip(endpoints, before, strict=True)]
    assert all(g >= 8 for g in gained)  # every 20 ms tick (~15), no task involved
    assert [int(pool.table.snapshot().waiting[e.id]) for e in endpoints] == [0, 1, 2]
    assert all(driven(dl, e) for e in endpoints)


async def test_a_driven_scrape_that_hangs_times_out_and_recovers(pool, servers, layer):
    server = await servers(vllm_page(1, 1, 0.1))
    endpoint = pool.upsert(server.address)
    dl = layer(down_after=2)
    await dl.start()
    await wait_until(lambda: driven(dl, endpoint))
    server.hang = True
    await wait_until(lambda: dl.state(endpoint).errors["timeout"] >= 1, timeout=2.0)
    assert not driven(dl, endpoint)  # a failure goes back to a task (back-off, reconnect)
    await wait_until(lambda: dl.state(endpoint).down, timeout=3.0)
    server.hang = False
    await wait_until(lambda: not dl.state(endpoint).down, timeout=3.0)
    await wait_until(lambda: driven(dl, endpoint))


async def test_a_server_that_closes_each_connection_is_scraped_without_errors(pool, servers, layer):
    server = await servers(vllm_page(2, 1, 0.1))
    server.keep_alive = False
    endpoint = pool.upsert(server.address)
    # a generous scrape timeout: this is about closed connections, and a loaded CI machine
    # once took longer than the 150 ms of FAST to answer one scrape (a 'timeout' error)
    dl = layer(timeout=1.0)
    await dl.start()
    await wait_until(lambda: dl.state(endpoint).scrapes >= 10)
    assert sum(dl.state(endpoint).errors.values()) == 0
    server.keep_alive = True
    await wait_until(lambda: driven(dl, endpoint))
    server.keep_alive = False  # now a driven connection gets closed under it
    scrapes = dl.state(endpoint).scrapes
    await wait_until(lambda: dl.state(endpoint).scrapes >= scrapes + 10)
    assert sum(dl.state(endpoint).errors.values()) == 0


async def test_a_vanished_driven_endpoint_is_unready_until_it_is_back(pool, servers, layer):
    server = await servers(vllm_page(1, 1, 0.1))
    endpoint = pool.upsert(server.address)
    dl = layer(down_after=2)
    await dl.start()
    await wait_until(lambda: driven(dl, endpoint))
    await server.stop()
    await wait_until(lambda: dl.state(endpoint).down, timeout=3.0)
    assert not pool.table.snapshot().ready[endpoint.id]
    await server.start()
    await wait_until(lambda: driven(dl, endpoint), timeout=3.0)
    assert pool.table.snapshot().ready[endpoint.id]


async def test_stopping_with_a_driven_request_out_leaves_nothing_running(pool, servers, layer):
    server = await servers(vllm_page(1, 1, 0.1))
    endpoint = pool.upsert(server.address)
    dl = layer(timeout=5.0)
    await dl.start()
    await wait_until(lambda: driven(dl, endpoint))
    server.hang = True
    hits = server.metrics_hits
    await wait_until(lambda: server.metrics_hits > hits)  # a request is out, unanswered
    await dl.stop()
    hits = server.metrics_hits
    await asyncio.sleep(0.1)
    assert server.metrics_hits == hits
    assert dl.state(endpoint) is None
    assert not dl._cohorts


async def test_a_removed_driven_endpoint_is_no_longer_scraped(pool, servers, layer):
    keep, drop = await servers(vllm_page(1, 1, 0.1)), await servers(vllm_page(1, 1, 0.1))
    kept = pool.upsert(keep.address)
    dropped = pool.upsert(drop.address)
    dl = layer()
    await dl.start()
    await wait_until(lambda: driven(dl, kept) and driven(dl, dropped))
    pool.remove(dropped.address)
    await asyncio.sleep(0.03)
    hits, kept_hits = drop.metrics_hits, keep.metrics_hits
    await asyncio.sleep(0.2)
    assert drop.metrics_hits == hits
    assert keep.metrics_hits - kept_hits >= 5  # its cohort timer goes on for the other


class _OnePagePerConnection(asyncio.Protocol):
    """Answers the first request of a connection (keep-alive), then closes the connection
    when the next request arrives without answering it: a server that dropped an idle
    kept-alive connection just as the client reused it."""

    page = vllm_page(1, 1, 0.1)

    def connection_made(self, transport):
        self.transport = transport
        self.answered = False

    def data_received(self, data):
        if b"\r\n\r\n" not in data:
            return
        if self.answered:
            self.transport.close()
            return
        self.answered = True
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(self.page) + self.page
        )


@pytest.fixture
async def one_page_server():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_OnePagePerConnection, "127.0.0.1", 0)
    yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


async def test_a_reused_connection_closed_before_any_answer_is_stale_not_failed(
    one_page_server,
):
    import yarl

    from igw.datalayer.transport import STALE, FetchError, LeanFetch

    fetch = LeanFetch(yarl.URL(f"http://{one_page_server}/metrics"), headers={}, max_bytes=1 << 20)
    try:
        assert (await fetch.get(1.0))[0] == 200
        assert fetch.ready
        done = asyncio.Event()
        assert fetch.start(1.0, done.set)
        await asyncio.wait_for(done.wait(), 2.0)
        with pytest.raises(FetchError) as error:
            fetch.result()
        assert error.value.kind == STALE
        assert (await fetch.get(1.0))[0] == 200  # a fresh connection answers
    finally:
        fetch.close()


async def test_a_stale_kept_alive_connection_is_reopened_without_an_error(
    pool, one_page_server, layer
):
    endpoint = pool.upsert(one_page_server)
    dl = layer(timeout=1.0)  # about stale connections, not slow answers (see above)
    await dl.start()
    await wait_until(lambda: dl.state(endpoint).scrapes >= 8)
    assert sum(dl.state(endpoint).errors.values()) == 0
    assert not dl.state(endpoint).down


def test_no_tick_is_scraped_twice_on_uvloop(pool):
    """libuv rounds timers to milliseconds, so a tick's timer can fire just before the
    tick; the next scrape must still be the following tick, not the same one again."""
    uvloop = pytest.importorskip("uvloop")
    from igw.datalayer.testing import FakeModelServer

    async def run() -> int:
        server = await FakeModelServer(vllm_page(1, 1, 0.1)).start()
        pool.upsert(server.address)
        dl = DataLayer(pool, **{**FAST, "transport": "httptools"})
        await dl.start()
        try:
            await asyncio.sleep(0.2)
            before = server.metrics_hits
            await asyncio.sleep(1.0)
            return server.metrics_hits - before
        finally:
            await dl.stop()
            await server.stop()

    hits = uvloop.run(run())
    assert 25 <= hits <= 51  # 50 ticks of 20 ms (+1 at the window's edge)
