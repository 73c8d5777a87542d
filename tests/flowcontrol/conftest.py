"""Pools for the flow-control tests are built on the core the scheduling layer uses."""

from __future__ import annotations

import pytest

import igw.datastore
from igw.scheduling import _backend


@pytest.fixture(autouse=True)
def core_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(igw.datastore, "_core", _backend.core)
