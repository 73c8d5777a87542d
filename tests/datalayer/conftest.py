"""Fixtures for the data-layer tests: a Pool on whichever core is available, fake servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

import igw.datastore
from igw import _core
from igw.datalayer.testing import FakeModelServer


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> igw.datastore.Pool:
    """A Pool on the C++ core once it has the table, else on the pure-Python reference."""
    if not hasattr(_core, "EndpointTable"):
        from igw import core_reference

        monkeypatch.setattr(igw.datastore, "_core", core_reference)
    return igw.datastore.Pool("test-pool", max_endpoints=64, default_lru_blocks=1000)


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., FakeModelServer]]:
    """Factory of started fake model servers, all stopped at the end of the test."""
    started: list[FakeModelServer] = []

    async def make(page: bytes = b"", **kwargs) -> FakeModelServer:
        server = await FakeModelServer(page, **kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()
