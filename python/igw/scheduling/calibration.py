"""Online calibration of each endpoint's prefill rate (prompt tokens per second).

The predicted-ttft scorer models ``ttft = work / rate`` with ``work`` the prefill tokens ahead
of and including this request (in-flight uncached tokens + waiting requests x waitingTokens +
this request's uncached tokens). Each observed first token gives one sample
``rate = work / ttft``. Samples are noisy (decode steps interleave, networks jitter, a request
with a full cache hit has almost no work and its TTFT is mostly fixed overhead), so:

* samples with less than ``min_work_tokens`` of work or a non-positive TTFT are ignored;
* each sample is clipped to [estimate / max_step, estimate x max_step] before it is averaged
  (winsorising: one outlier moves the estimate by at most a bounded factor);
* the estimate is a slow exponentially weighted moving average (alpha 0.05, steps of at most
  1.25x), bounded to [min_rate, max_rate]. Slow on purpose: measured with
  ``igw.scheduling.replay``, a fast estimate (alpha 0.2, 2x steps) chased per-request noise
  (long prompts prefill slower per token) and made the cost model pile long-context sessions
  onto whichever replica looked fastest; the in-flight accounting already reacts quickly.

The first accepted sample of an endpoint becomes its estimate (clipped to the bounds).

``pool_rate(pool)`` is the mean estimate over a pool's calibrated endpoints: the prior for the
endpoints that have no sample yet. Without it a configured default far from the truth makes
the first calibrated endpoint look several times faster (or slower) than its peers, and the
cost model piles onto (or starves) it until they are calibrated too.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class PrefillCalibrator:
    alpha: float = 0.05
    max_step: float = 1.25
    min_rate: float = 50.0
    max_rate: float = 2_000_000.0
    min_work_tokens: float = 128.0
    _rates: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    _sums: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # pool -> [sum, n]

    def estimate(self, pool: str, address: str) -> float | None:
        return self._rates.get((pool, address))

    def pool_rate(self, pool: str) -> float | None:
        """Mean estimate of the pool's calibrated endpoints (None before any sample)."""
        total = self._sums.get(pool)
        return total[0] / total[1] if total and total[1] else None

    def forget(self, pool: str, address: str) -> None:
        old = self._rates.pop((pool, address), None)
        if old is not None:
            self._sums[pool][0] -= old
            self._sums[pool][1] -= 1

    def _store(self, pool: str, address: str, rate: float) -> None:
        total = self._sums.setdefault(pool, [0.0, 0])
        old = self._rates.get((pool, address))
        if old is None:
            total[1] += 1
        else:
            total[0] -= old
        total[0] += rate
        self._rates[(pool, address)] = rate

    def observe(self, pool: str, address: str, work_tokens: float, ttft_s: float) -> float | None:
        """Fold one observation in; returns the new estimate (None if the sample was unusable)."""
        if not (
            math.isfinite(work_tokens)
            and math.isfinite(ttft_s)
            and ttft_s > 0
            and work_tokens >= self.min_work_tokens
        ):
            return None
        sample = work_tokens / ttft_s
        key = (pool, address)
        current = self._rates.get(key)
        if current is None:
            new = sample
        else:
            sample = min(max(sample, current / self.max_step), current * self.max_step)
            new = (1.0 - self.alpha) * current + self.alpha * sample
        new = min(max(new, self.min_rate), self.max_rate)
        self._store(pool, address, new)
        return new
