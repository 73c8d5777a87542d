"""``prefix-cache-affinity-filter``: keep the endpoints that already hold the prompt's prefix,
unless that costs too much time to first token (the reference's answer to max-score
hot-spotting; igw's own answer is the predicted-ttft cost model, this is for drop-in configs).

An endpoint is *sticky* when it holds at least ``affinityThreshold`` of the prompt's blocks.
If no candidate is sticky, or with probability ``explorationProbability``, every candidate is
kept. Load gate: each endpoint's TTFT is estimated as its in-flight tokens over
``peakPrefillThroughput`` (tokens/s); when the best sticky endpoint's estimate exceeds the best
non-sticky one's by more than ``maxTTFTPenaltyMs``, stickiness is broken and every candidate
is kept. ``ttftSource: latencyPredictor`` needs the reference's external latency predictor,
which igw does not have.
"""

from __future__ import annotations

import random
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from igw.scheduling.framework import PREFIX_ATTR


class AffinityParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    affinityThreshold: float = Field(default=0.80, le=1.0)
    explorationProbability: float = Field(default=0.0, ge=0.0, le=1.0)
    maxTTFTPenaltyMs: float = Field(default=18000.0, ge=0.0)
    ttftSource: Literal["prefillThroughput", "latencyPredictor"] = "prefillThroughput"
    peakPrefillThroughput: float = Field(default=15928.0, ge=0.0)
    prefixMatchInfoProducerName: str | None = None
    latencyPredictionInfoProducerName: str | None = None
    inFlightLoadProducerName: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> AffinityParams:
        if self.ttftSource == "latencyPredictor":
            raise ValueError("ttftSource latencyPredictor is not implemented in igw")
        if self.maxTTFTPenaltyMs > 0 and self.peakPrefillThroughput == 0:
            raise ValueError("peakPrefillThroughput must be > 0 when maxTTFTPenaltyMs > 0")
        return self


class PrefixCacheAffinityFilter:
    def __init__(self, name: str, params: AffinityParams, seed: int | None = None) -> None:
        self.name = name
        self.params = params
        self._rng = random.Random(seed)

    def filter(self, request: Any, pool: Any, snapshot: Any, mask: np.ndarray) -> np.ndarray:
        p = self.params
        n = min(len(mask), len(snapshot.ready))
        candidates = np.zeros_like(mask)
        candidates[:n] = mask[:n] & snapshot.ready[:n]
        if candidates.sum() <= 1 or p.affinityThreshold <= 0:
            return mask
        if p.explorationProbability and self._rng.random() < p.explorationProbability:
            return mask
        cached = request.attrs.get(PREFIX_ATTR)
        hashes = cached[1] if cached is not None else None
        if hashes is None or not len(hashes):
            return mask
        matched = np.zeros(len(mask), dtype=np.float64)
        found = pool.index.match(hashes)
        m = min(len(found), len(mask))
        matched[:m] = found[:m]
        sticky = candidates & (matched / len(hashes) >= p.affinityThreshold)
        if not sticky.any():
            return mask
        rest = candidates & ~sticky
        if p.maxTTFTPenaltyMs > 0 and rest.any():
            tokens = np.zeros(len(mask), dtype=np.float64)
            tokens[:n] = snapshot.inflight_tokens[:n]
            best_sticky = tokens[sticky].min() / p.peakPrefillThroughput * 1000.0
            best_rest = tokens[rest].min() / p.peakPrefillThroughput * 1000.0
            if best_sticky - best_rest > p.maxTTFTPenaltyMs:
                return mask
        return sticky
