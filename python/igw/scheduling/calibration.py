"""Online calibration of each endpoint's prefill rate (prompt tokens per second).

The predicted-ttft scorer models ``ttft = work / rate`` with ``work`` the prefill tokens ahead
of and including this request (in-flight uncached tokens + waiting requests x waitingTokens +
this request's uncached tokens). Each observed first token gives one sample
``rate = work / ttft``. Samples are noisy (decode steps interleave, networks jitter, a request
with a full cache hit has almost no work and its TTFT is mostly fixed overhead), so:

* samples with less than ``min_work_tokens`` of work or a non-positive TTFT are ignored;
* each sample is clipped to [estimate / max_step, estimate x max_step] before it is averaged
  (winsorising: one outlier moves the estimate by at most a bounded factor);
* the estimate is an exponentially weighted moving average, bounded to [min_rate, max_rate].

The first accepted sample of an endpoint becomes its estimate (clipped to the bounds).
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class PrefillCalibrator:
    alpha: float = 0.2
    max_step: float = 2.0
    min_rate: float = 50.0
    max_rate: float = 2_000_000.0
    min_work_tokens: float = 128.0
    _rates: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)

    def estimate(self, pool: str, address: str) -> float | None:
        return self._rates.get((pool, address))

    def forget(self, pool: str, address: str) -> None:
        self._rates.pop((pool, address), None)

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
        self._rates[key] = new
        return new
