"""Helpers shared by the scheduling tests (a uniquely named module, not ``conftest``, so
imports cannot pick up another directory's conftest)."""

from __future__ import annotations

import time

from igw.config import EndpointPickerConfig
from igw.datastore import Pool
from igw.pipeline import Request


def add_endpoint(
    pool: Pool,
    index: int,
    waiting: int = 0,
    kv: float = 0.0,
    *adapters: str,
    labels: dict[str, str] | None = None,
    ready: bool = True,
    max_lora: int = 0,
):
    """The reference hermetic tests' P(i, queue, kv, adapters...): pod i at 192.168.1.(i+1)."""
    endpoint = pool.upsert(f"192.168.1.{index + 1}:8000", labels=dict(labels or {}))
    pool.table.update(
        endpoint.id,
        waiting=waiting,
        running=0,
        kv_util=kv,
        now=time.monotonic(),
        max_lora=max_lora,
        lora_active=[pool.table.adapter_id(a) for a in adapters],
        lora_waiting=[],
    )
    pool.table.set_ready(endpoint.id, ready)
    return endpoint


def make_request(prompt: str = "hello", model: str = "my-model", **fields) -> Request:
    fields.setdefault("request_id", "req")
    return Request(
        incoming_model=model,
        target_model=fields.pop("target_model", model),
        prompt=prompt.encode(),
        **fields,
    )


def gated_config(tokens: int) -> EndpointPickerConfig:
    """``predicted-ttft`` with its prefill gate at ``tokens`` uncached tokens (0 = off)."""
    from igw.scheduling import named_policy

    config = named_policy("predicted-ttft").model_copy(deep=True)
    for plugin in config.plugins:
        if plugin.type == "predicted-ttft-scorer":
            plugin.parameters = {**(plugin.parameters or {}), "prefillGateTokens": tokens}
    return config
