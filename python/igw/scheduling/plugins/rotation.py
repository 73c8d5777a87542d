"""``round-robin-scorer``: rotate over the eligible endpoints (igw's round-robin policy).

A scorer rather than a picker so it runs through the same core pick as everything else (the
pick reserves in-flight counters atomically): the next endpoint in turn scores 1.0 and the
others fall off linearly in rotation order, so the max-score picker takes the next one and
the ranked fallbacks follow the rotation.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np


class RoundRobinScorer:
    def __init__(self, name: str = "round-robin-scorer") -> None:
        self.name = name
        self._turn = itertools.count()

    def score(self, request: Any, snapshot: Any, endpoints: np.ndarray) -> np.ndarray:
        n = len(endpoints)
        out = np.zeros(n, dtype=np.float32)
        if n == 0:
            return out
        start = next(self._turn) % n
        position = (np.arange(n) - start) % n  # 0 for the endpoint whose turn it is
        out[:] = 1.0 - position / n
        return out
