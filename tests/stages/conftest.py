"""Pools are built on the C++ core when it is complete, else on ``igw.core_reference``."""

from __future__ import annotations

import pytest

import igw.datastore
from igw.scheduling import _backend


@pytest.fixture(autouse=True)
def core_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(igw.datastore, "_core", _backend.core)
