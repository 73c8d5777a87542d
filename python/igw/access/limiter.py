"""Rate and quota bookkeeping behind a ``Limiter`` protocol, with an in-memory backend.

Two kinds of state, both keyed by a string (the tenant plus what is limited):

* token buckets (``Rate``): refilled continuously at ``per_minute / 60`` per second up to
  ``burst``; ``take`` removes a cost only when it is there (requests), ``debit`` removes it
  unconditionally and may drive the level negative (tokens, known only after the answer);
* period counters: a count that restarts whenever the period label changes (the UTC date for
  daily quotas), so no timer is needed and a stale key costs one entry.

The admission side (``take``, ``level``, ``used``) is async so a networked backend (Redis,
for gateways with several replicas) can implement it with one round trip each; the debit side
(``debit``, ``add``) is sync because it runs from ``on_finish``, which cannot wait: a
networked backend would queue debits and flush them in the background.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True, slots=True)
class Rate:
    """``per_minute`` units per minute, at most ``burst`` saved up (default: one minute's)."""

    per_minute: float
    burst: float = 0.0

    def __post_init__(self) -> None:
        if self.per_minute <= 0:
            raise ValueError(f"per_minute must be > 0, got {self.per_minute}")
        if self.burst <= 0:
            object.__setattr__(self, "burst", self.per_minute)

    @property
    def per_second(self) -> float:
        return self.per_minute / 60.0


@runtime_checkable
class Limiter(Protocol):
    async def take(self, key: str, rate: Rate, cost: float = 1.0) -> float:
        """Remove ``cost`` from the bucket if it holds that much: then 0.0. Otherwise nothing
        changes and the answer is the seconds until it will hold ``cost``."""
        ...

    async def level(self, key: str, rate: Rate) -> float:
        """The bucket's level now (full for a new key, negative when in debt)."""
        ...

    def debit(self, key: str, rate: Rate, amount: float) -> None:
        """Remove ``amount`` whatever the level (it may go negative)."""
        ...

    async def used(self, key: str, period: str) -> int:
        """The counter of ``key`` in ``period`` (0 in a period not seen yet)."""
        ...

    def add(self, key: str, period: str, amount: int) -> None:
        """Add to the counter of ``key`` in ``period`` (a new period restarts it at 0)."""
        ...


class MemoryLimiter:
    """One process's limits (``clock`` is monotonic seconds; injectable for tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}  # key -> [level, last refill time]
        self._counters: dict[str, tuple[str, int]] = {}  # key -> (period, count)

    def _refill(self, key: str, rate: Rate) -> list[float]:
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [rate.burst, now]
            return bucket
        elapsed = now - bucket[1]
        if elapsed > 0:
            bucket[0] = min(rate.burst, bucket[0] + elapsed * rate.per_second)
            bucket[1] = now
        return bucket

    async def take(self, key: str, rate: Rate, cost: float = 1.0) -> float:
        return self.take_now(key, rate, cost)

    def take_now(self, key: str, rate: Rate, cost: float = 1.0) -> float:
        bucket = self._refill(key, rate)
        if bucket[0] >= cost:
            bucket[0] -= cost
            return 0.0
        return (cost - bucket[0]) / rate.per_second

    async def level(self, key: str, rate: Rate) -> float:
        return self._refill(key, rate)[0]

    def debit(self, key: str, rate: Rate, amount: float) -> None:
        self._refill(key, rate)[0] -= amount

    async def used(self, key: str, period: str) -> int:
        found = self._counters.get(key)
        return found[1] if found is not None and found[0] == period else 0

    def add(self, key: str, period: str, amount: int) -> None:
        found = self._counters.get(key)
        count = found[1] if found is not None and found[0] == period else 0
        self._counters[key] = (period, count + amount)
