"""Emulations of peer routers' policies, for side-by-side replays (not for production).

``igw bench`` measures real peer routers over HTTP, which on a small shared machine is
noisy; ``python -m igw.scheduling.replay --peers`` replays the same workload through these
emulations in virtual time, so a policy change can be checked against the peers' decision
rules deterministically.

``SglangCacheAware`` follows sglang-router's ``cache_aware`` decision as documented in
REFERENCE Part 2 §6.1 (its CLI defaults): with router-side in-flight counts as load, if
``max - min > balance_abs`` and ``max > balance_rel * min`` pick the least-loaded worker;
otherwise, if the deepest prefix match covers more than ``cache_threshold`` of the prompt, pick
a worker holding it; otherwise the worker with the smallest tree. Differences, all in the
peer's favour or neutral: igw's block index stands in for its character radix tree (a block
match instead of a character match, an LRU sized like the replica's KV cache instead of a
periodic size-based eviction), and among workers holding the deepest match it takes the
lowest id where the peer takes an arbitrary one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from igw.config import EndpointPickerConfig, PluginSpec, ProfilePlugin, SchedulingProfile
from igw.scheduling.framework import PREFIX_ATTR


class SglangCacheAware:
    """A filter that keeps exactly the worker sglang-router's ``cache_aware`` would pick."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        cacheThreshold: float = Field(0.3, ge=0.0, le=1.0)
        balanceAbsThreshold: float = Field(64.0, ge=0.0)
        balanceRelThreshold: float = Field(1.5, ge=1.0)

    name = "sglang-cache-aware"

    def __init__(self, params: SglangCacheAware.Params) -> None:
        self.params = params

    def filter(self, request: Any, pool: Any, snapshot: Any, mask: np.ndarray) -> np.ndarray:
        ready = np.asarray(snapshot.ready)[: len(mask)]
        ids = np.flatnonzero(mask[: len(ready)] & ready)
        if ids.size == 0:
            return mask
        load = np.asarray(snapshot.inflight_requests)[ids]
        low, high = int(load.min()), int(load.max())
        p = self.params
        if high - low > p.balanceAbsThreshold and high > p.balanceRelThreshold * low:
            choice = ids[int(np.argmin(load))]
        else:
            choice = self._by_cache(request, pool, ids)
        kept = np.zeros_like(mask)
        kept[choice] = True
        return kept

    def _by_cache(self, request: Any, pool: Any, ids: np.ndarray) -> int:
        cached = request.attrs.get(PREFIX_ATTR)
        hashes = cached[1] if cached is not None else None
        if hashes is not None and len(hashes):
            matched = np.asarray(pool.index.match(hashes))
            matched = np.pad(matched, (0, max(0, int(ids.max()) + 1 - len(matched))))[ids]
            if matched.max() / len(hashes) > self.params.cacheThreshold:
                return int(ids[int(np.argmax(matched))])
        sizes = np.array([pool.index.endpoint_entries(int(i)) for i in ids])
        return int(ids[int(np.argmin(sizes))])


def sglang_cache_aware() -> EndpointPickerConfig:
    """A config whose only real decision is ``SglangCacheAware``; the prefix scorer is there
    so the engine hashes the prompt and records it for the picked worker (the peer's tree)."""
    filter_type = f"python:{__name__}:SglangCacheAware"
    return EndpointPickerConfig(
        plugins=[
            PluginSpec(type=filter_type),
            PluginSpec(type="prefix-cache-scorer"),
            PluginSpec(type="max-score-picker"),
        ],
        schedulingProfiles=[
            SchedulingProfile(
                name="default",
                plugins=[
                    ProfilePlugin(pluginRef=filter_type),
                    ProfilePlugin(pluginRef="prefix-cache-scorer"),
                    ProfilePlugin(pluginRef="max-score-picker"),
                ],
            )
        ],
    )


PEERS = {"sglang-cache-aware": sglang_cache_aware}
