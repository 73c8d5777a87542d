"""Recent demand per prompt prefix: which prefixes are hot enough to need more than one replica.

The predicted-ttft profile charges each in-flight request a fixed number of prefill-token
equivalents (``inflightRequestTokens``) so that a prefix whose holder is busy spills over to a
second replica instead of queueing behind itself. That is the right move for a prefix whose
*sustained* demand exceeds what one replica can serve, and the wrong one for the ordinary
fluctuations of uniform traffic: measured with ``igw.scheduling.replay`` (shared-prefix at 3x
the rough capacity), Poisson bursts left one holder with 28 requests in flight against 4
elsewhere for a moment, the charge (28 x 512 tokens) outweighed a 2,000-token miss, and two
such spills (each a full prefill that stalls every request on its new replica) raised TTFT p90
from 50 to 65 ms. An instantaneous load signal cannot tell the two apart; the prefix's share of
recent traffic can (bounded-load replication, REFERENCE Part 2 §7 idea 8).

``PrefixDemand`` keeps, per prefix key, an exponentially decayed request count over roughly
the last ``window`` requests of a pool (count-based decay, so it needs no clock), and reports a
request's prefix share of that traffic. A prefix is *hot* when its share times the number of
endpoints exceeds ``factor``: it alone wants more than ``factor`` replicas' fair share.
There is no warm-up: while few requests have been seen every prefix looks hot, which is the
old behaviour (every request charged) and what a burst of one new prefix needs. Memory is
bounded: when more than ``max_keys`` prefixes are tracked, those whose decayed count
fell below one request are dropped.

The gateway runs the C++ copy of this model (``cpp/demand.h``, one per pool inside the core's
``Scheduler``, reached through ``Scheduler.route`` and ``Scheduler.hot``) so the per-request
count costs no Python; this class is its reference twin (``igw.core_reference``) and the
readable statement of the model. Both compute in double in the same order.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class PrefixDemand:
    window: float = 256.0
    max_keys: int = 4096
    _total: float = 0.0
    _seen: int = 0
    _counts: dict[int, tuple[float, int]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window) and self.window >= 1):
            raise ValueError(f"window must be a finite number >= 1, got {self.window}")
        if self.max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {self.max_keys}")
        self._decay = 1.0 - 1.0 / self.window

    def observe(self, key: int) -> float:
        """Count one request for ``key``; returns the key's share of recent requests."""
        self._seen += 1
        self._total = self._total * self._decay + 1.0
        value, last = self._counts.get(key, (0.0, self._seen))
        value = value * self._decay ** (self._seen - last) + 1.0
        self._counts[key] = (value, self._seen)
        if len(self._counts) > self.max_keys:
            self._prune()
        return value / self._total

    def is_hot(self, key: int, endpoints: int, factor: float) -> bool:
        """Observe ``key`` and say whether its share exceeds ``factor`` endpoints' fair share.

        ``observe`` inlined: the scheduling engine calls this on every request."""
        seen = self._seen = self._seen + 1
        decay = self._decay
        total = self._total = self._total * decay + 1.0
        counts = self._counts
        entry = counts.get(key)
        value = 1.0 if entry is None else entry[0] * decay ** (seen - entry[1]) + 1.0
        counts[key] = (value, seen)
        if len(counts) > self.max_keys:
            self._prune()
        return value / total * max(endpoints, 1) > factor

    def __len__(self) -> int:
        """Prefix groups tracked."""
        return len(self._counts)

    def _prune(self) -> None:
        now = self._seen
        self._counts = {
            k: (v, t) for k, (v, t) in self._counts.items() if v * self._decay ** (now - t) >= 1.0
        }
