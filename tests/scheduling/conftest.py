"""Pools for scheduling tests, on every core implementation this build has.

Each test that builds a pool runs once on ``igw.core_reference`` (the executable spec) and
once on the C++ ``igw._core`` when it is built, so the engine is checked against both.
"""

from __future__ import annotations

import importlib

import pytest
from sched_helpers import add_endpoint

import igw.datastore
from igw import _core
from igw.datastore import Pool

IMPLEMENTATIONS = ["core_reference"] + (["_core"] if hasattr(_core, "Scheduler") else [])


@pytest.fixture(params=IMPLEMENTATIONS)
def core_module(request):
    return importlib.import_module(f"igw.{request.param}")


@pytest.fixture
def make_pool(monkeypatch, core_module):
    monkeypatch.setattr(igw.datastore, "_core", core_module)

    def make(states=(), name: str = "pool") -> Pool:
        pool = Pool(name, max_endpoints=64, seed=7)
        for state in states:
            add_endpoint(pool, *state)
        return pool

    return make
