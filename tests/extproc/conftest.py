"""Pools are built on the C++ core when it is complete, else on ``igw.core_reference``."""

from __future__ import annotations

import pytest

import igw.datastore
from igw.scheduling import _backend


@pytest.fixture(autouse=True)
def core_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(igw.datastore, "_core", _backend.core)


@pytest.fixture(params=[False, True], ids=["ext_proc-port", "observer-port"])
def observer_transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Runs an observer test twice: observer streams on ``--grpc-port`` (grpc.aio), and on
    ``--observer-port`` (igw's own transport); both must behave the same."""
    import epp_harness

    monkeypatch.setattr(epp_harness, "OBSERVERS_ON_OWN_PORT", request.param)
    return request.param


@pytest.fixture(params=["grpcio", "igw"], ids=["grpcio", "igw-transport"])
def epp_transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs an ext_proc test on both transports of the ext_proc port: grpc.aio and igw's own
    (``h2_transport.py``); both must behave the same."""
    import epp_harness

    monkeypatch.setattr(epp_harness, "EPP_TRANSPORT", request.param)
    return request.param
