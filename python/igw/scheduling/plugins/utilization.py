"""``utilization-filter``: drop endpoints over a utilization cap (the reference's conditions).

Each condition caps one signal: ``active-requests`` (igw's own exact in-flight count: every
request routed to the endpoint and not yet finished), ``running-requests`` and
``waiting-queue`` (scraped), ``kv-cache-utilization`` (scraped fraction 0..1). An endpoint is
kept when every condition holds. With ``fallbackOnEmpty`` the filter passes everything when it
would otherwise keep nothing; without it an empty result ends the request with 429, as in the
reference. Vectorised over the snapshot arrays: no per-endpoint Python.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

SIGNALS = {
    "active-requests": "inflight_requests",
    "running-requests": "running",
    "waiting-queue": "waiting",
    "kv-cache-utilization": "kv_util",
}


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    metric: Literal["active-requests", "running-requests", "waiting-queue", "kv-cache-utilization"]
    maxValue: float = Field(ge=0)

    @model_validator(mode="after")
    def _fraction(self) -> Condition:
        if self.metric == "kv-cache-utilization" and self.maxValue > 1:
            raise ValueError("maxValue of kv-cache-utilization is a fraction: at most 1")
        return self


class UtilizationParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    conditions: list[Condition] = Field(min_length=1)
    fallbackOnEmpty: bool = False
    inFlightLoadProducerName: str | None = None


class UtilizationFilter:
    def __init__(self, name: str, params: UtilizationParams) -> None:
        self.name = name
        self.conditions = [(SIGNALS[c.metric], c.maxValue) for c in params.conditions]
        self.fallback_on_empty = params.fallbackOnEmpty

    def filter(self, request: Any, pool: Any, snapshot: Any, mask: np.ndarray) -> np.ndarray:
        n = min(len(mask), len(snapshot.ready))
        keep = mask.copy()
        keep[n:] = False
        for field, cap in self.conditions:
            keep[:n] &= getattr(snapshot, field)[:n] <= cap
        if self.fallback_on_empty and not keep.any():
            return mask
        return keep
