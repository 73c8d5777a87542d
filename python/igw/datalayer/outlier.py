"""Response-outcome windows for outlier detection.

An endpoint can answer its ``/metrics`` page perfectly while failing every inference request
(a wedged engine behind a live API server, a broken GPU, a bad adapter). The front ends
report each response's outcome; ``OutcomeWindow`` keeps the recent ones so the data layer
can demote an endpoint whose error rate is high *and* whose failure count is meaningful.
"""

from __future__ import annotations

import collections
import dataclasses


@dataclasses.dataclass(frozen=True)
class OutlierPolicy:
    """When to demote: at least ``min_failures`` failures making at least ``error_rate`` of
    the responses seen in the last ``window`` seconds (at most ``max_samples`` kept), or,
    relative to the pool, at least ``relative_min_rate`` of them and ``relative_factor``
    times the error rate of the rest of the pool (which must have seen ``min_failures``
    responses itself; ``relative_factor`` 0 turns this off). The relative rule catches a
    replica that breaks ~30% of its streams while its peers break none, without demoting
    anyone when the whole pool fails alike.

    Probes of a demoted endpoint start after ``probe_backoff`` seconds and back off
    exponentially (with jitter) up to ``max_probe_backoff``. A replica that passes its
    probe but keeps failing requests is demoted again and again: each consecutive demotion
    starts its probes twice as late (capped the same way), so it spends ever less time in
    rotation; the count resets once it has stayed in rotation for ``stable_after`` seconds.
    """

    min_failures: int = 5
    error_rate: float = 0.5
    window: float = 30.0
    max_samples: int = 256
    probe_backoff: float = 1.0
    max_probe_backoff: float = 30.0
    relative_factor: float = 3.0
    relative_min_rate: float = 0.2
    stable_after: float = 60.0

    def __post_init__(self) -> None:
        if self.min_failures < 1:
            raise ValueError(f"outlier min_failures must be >= 1, got {self.min_failures}")
        if not 0.0 < self.error_rate <= 1.0:
            raise ValueError(f"outlier error_rate must be within (0, 1], got {self.error_rate}")
        if self.window <= 0 or self.probe_backoff <= 0:
            raise ValueError("outlier window and probe_backoff must be > 0 seconds")
        if self.max_probe_backoff < self.probe_backoff:
            raise ValueError("outlier max_probe_backoff must be >= probe_backoff")
        if self.relative_factor < 0 or not 0.0 < self.relative_min_rate <= 1.0:
            raise ValueError(
                "outlier relative_factor must be >= 0 and relative_min_rate within (0, 1], "
                f"got {self.relative_factor} and {self.relative_min_rate}"
            )
        if self.stable_after <= 0:
            raise ValueError(f"outlier stable_after must be > 0 seconds, got {self.stable_after}")

    def first_probe_delay(self, demotions: int) -> float:
        """Delay before the first probe of the ``demotions``-th consecutive demotion."""
        return min(self.probe_backoff * 2.0 ** max(0, demotions - 1), self.max_probe_backoff)


class OutcomeWindow:
    """Recent (time, ok) outcomes of one endpoint; O(1) amortized per report.

    Outcomes older than the window are dropped when the window is read (``counts``), not at
    each ``add``: only reads see them, and a read drops every outcome older than its own
    horizon, which covers every earlier one (the clock never goes back). Each ``add`` keeps
    the newest ``max_samples``, as before; an outcome among the newest ``max_samples`` at a
    read was among them at every earlier add. So every read counts exactly what expiring at
    each ``add`` counted, and a success (most responses) costs an append.
    """

    __slots__ = ("_events", "_failures", "_policy")

    def __init__(self, policy: OutlierPolicy) -> None:
        self._policy = policy
        self._events: collections.deque[tuple[float, bool]] = collections.deque()
        self._failures = 0

    def add(self, now: float, ok: bool) -> None:
        events = self._events
        events.append((now, ok))
        if not ok:
            self._failures += 1
        if len(events) > self._policy.max_samples:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, ok = self._events.popleft()
        if not ok:
            self._failures -= 1

    def _expire(self, now: float) -> None:
        horizon = now - self._policy.window
        while self._events and self._events[0][0] < horizon:
            self._drop_oldest()

    def counts(self, now: float) -> tuple[int, int]:
        """(failures, total) within the window."""
        self._expire(now)
        return self._failures, len(self._events)

    def is_outlier(self, now: float) -> bool:
        failures, total = self.counts(now)
        return failures >= self._policy.min_failures and failures >= (
            self._policy.error_rate * total
        )

    def clear(self) -> None:
        self._events.clear()
        self._failures = 0
