"""Core tests run every case against the C++ module and the pure-Python reference (re2-style:
each behaviour is defined once, then checked on the plain implementation and the fast one)."""

from __future__ import annotations

import pytest

from igw import _core, core_reference

IMPLEMENTATIONS = {"cpp": _core, "reference": core_reference}


@pytest.fixture(params=sorted(IMPLEMENTATIONS), ids=sorted(IMPLEMENTATIONS))
def core(request):
    """The module under test: igw._core or igw.core_reference (same API)."""
    return IMPLEMENTATIONS[request.param]


@pytest.fixture
def make_pool():
    """Factory: (core, n) -> (table, index, scheduler) with ``n`` live, ready endpoints."""
    return _make_pool


def _make_pool(core, n: int, capacity: int = 64, lru: int = 1000, seed: int = 0):
    table = core.EndpointTable(capacity)
    index = core.PrefixIndex(capacity, lru)
    for _ in range(n):
        e = table.add()
        table.set_ready(e, True)
    return table, index, core.Scheduler(table, index, seed)
