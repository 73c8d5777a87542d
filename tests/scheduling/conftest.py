"""Pools for scheduling tests, on whichever core implementation this build has.

``igw.datastore.Pool`` builds its core objects from ``igw._core``; until the C++ core is
built that module is a stub, so the fixture points the datastore at the scheduling layer's
backend choice (the C++ core when present, else ``igw.core_reference``).
"""

from __future__ import annotations

import pytest
from sched_helpers import add_endpoint

import igw.datastore
from igw.datastore import Pool
from igw.scheduling import _backend


@pytest.fixture
def make_pool(monkeypatch):
    monkeypatch.setattr(igw.datastore, "_core", _backend.core)

    def make(states=(), name: str = "pool", **labels_by_index) -> Pool:
        pool = Pool(name, max_endpoints=64, seed=7)
        for state in states:
            add_endpoint(pool, *state)
        return pool

    return make
