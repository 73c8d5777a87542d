"""Fixtures: a fake API server, a client for it, and a poller for eventual conditions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from igw.datastore import Pool
from igw.k8s import Backoff, ClusterConfig, KubeClient, KubernetesDiscovery

from .fake_apiserver import FakeApiServer

POOL_NAME = "vllm-pool"


def fast_backoff() -> Backoff:
    return Backoff(initial=0.02, maximum=0.1)


async def eventually(condition: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``condition`` every 10 ms; fail with ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    server = await FakeApiServer().start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def client(api: FakeApiServer) -> AsyncIterator[KubeClient]:
    kube = KubeClient(ClusterConfig(server=api.url, token=api.token), request_timeout=5)
    try:
        yield kube
    finally:
        await kube.close()


@pytest.fixture
def pool() -> Pool:
    return Pool(POOL_NAME, "default", max_endpoints=256)


@pytest.fixture
async def discovery(
    pool: Pool, client: KubeClient
) -> AsyncIterator[Callable[..., KubernetesDiscovery]]:
    """Build (not start) a discovery with fast back-off; every one built is stopped after."""
    made: list[KubernetesDiscovery] = []

    def make(**options) -> KubernetesDiscovery:
        options.setdefault("namespace", "default")
        if "standalone" not in options:
            options.setdefault("pool_name", POOL_NAME)
        made.append(KubernetesDiscovery(pool, client, backoff=fast_backoff, **options))
        return made[-1]

    try:
        yield make
    finally:
        for item in made:
            await item.stop()
