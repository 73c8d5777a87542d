"""Shared helpers for the guard tests: parsed requests and a guard built from a spec."""

from __future__ import annotations

import json

import pytest

import igw.datastore
from igw.pipeline import Request
from igw.scheduling import _backend
from igw.stages import ParseStage


@pytest.fixture(autouse=True)
def core_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pools are built on the C++ core when it is complete, else on the reference."""
    monkeypatch.setattr(igw.datastore, "_core", _backend.core)


def parsed_request(body: dict | bytes, path: str = "/v1/chat/completions", **headers: str):
    """A request after the parse stage, as the guard sees it in the pipeline."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = Request("req-1", path=path, headers=dict(headers), body=raw)
    ParseStage().apply(request)
    return request


def chat(*texts: str, model: str = "m") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": t} for t in texts]}
