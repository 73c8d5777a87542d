"""Queued items, ordering policies and one priority band's fairness queues.

Three-tier choice, as in the reference: the controller picks the highest band with work,
the band's fairness policy picks a flow (a fairness id), the flow's ordering policy picks
the item. Every operation is O(log n):

* ordering: each flow is a binary heap keyed by the ordering policy's key (``fcfs``:
  arrival sequence; ``edf``: deadline, then arrival);
* ``global-strict`` fairness: no per-tenant fairness, the band's best item wins wherever
  it is. The best head across all flows is simply the best item of the band, so the band
  keeps ONE heap of all its items (no scan over flows);
* ``round-robin`` fairness: one heap per flow plus a ring of flows with work; each pick
  serves the flow at the front and moves it to the back.

Removal before dispatch (TTL expiry, client gone) is lazy: the item is marked ``done`` and
its counts are released at once; its heap entry is skipped when it surfaces. Tombstones are
bounded: when they outnumber live items (and exceed a small floor) the band rebuilds its
heaps in O(n).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import heapq
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from igw.pipeline import Request

FCFS = "fcfs-ordering-policy"
EDF = "edf-ordering-policy"
SLO_DEADLINE = "slo-deadline-ordering-policy"
GLOBAL_STRICT = "global-strict-fairness-policy"
ROUND_ROBIN = "round-robin-fairness-policy"

SLO_TTFT_HEADERS = ("x-llm-d-slo-ttft-ms", "x-slo-ttft-ms")
COMPACT_FLOOR = 64


@dataclasses.dataclass(slots=True, eq=False)
class Item:
    """One request waiting in a band."""

    request: Request
    priority: int
    flow: str
    size: int  # request bytes, counted against maxBytes
    enqueued_at: float
    expires_at: float
    seq: int
    future: asyncio.Future[None]
    deadline: float = math.inf  # EDF deadline (controller clock)
    done: bool = False  # dispatched or removed; its heap entries are tombstones


def slo_ttft_seconds(request: Request) -> float | None:
    """The request's TTFT objective from ``x-llm-d-slo-ttft-ms`` (or its alias), in seconds.

    A missing, non-numeric, negative or non-finite value means "no objective".
    """
    raw = request.header(*SLO_TTFT_HEADERS)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value / 1000.0


def edf_deadline(item: Item, ttl: float, received_at: float | None = None) -> float:
    """``received + SLO`` when the request carries a TTFT objective, else ``enqueue + TTL``.

    ``received_at`` is the request's arrival on the controller clock (the enqueue time when
    the caller does not know better).
    """
    slo = slo_ttft_seconds(item.request)
    if slo is not None:
        start = item.enqueued_at if received_at is None else received_at
        return start + slo
    return item.enqueued_at + ttl


OrderKey = Callable[[Item], tuple]


def fcfs_key(item: Item) -> tuple:
    return (item.seq,)


def edf_key(item: Item) -> tuple:
    return (item.deadline, item.seq)


ORDERING: dict[str, OrderKey] = {FCFS: fcfs_key, EDF: edf_key, SLO_DEADLINE: edf_key}
FAIRNESS = (GLOBAL_STRICT, ROUND_ROBIN)


class Band:
    """One priority level: its limits, its flows and the items waiting in it."""

    def __init__(
        self,
        priority: int,
        *,
        max_requests: int,
        max_bytes: float,
        fairness: str = GLOBAL_STRICT,
        ordering: str = FCFS,
        configured: bool = False,
    ) -> None:
        if fairness not in FAIRNESS:
            raise ValueError(f"fairness policy: expected one of {FAIRNESS}, got {fairness!r}")
        if ordering not in ORDERING:
            raise ValueError(
                f"ordering policy: expected one of {tuple(ORDERING)}, got {ordering!r}"
            )
        self.priority = priority
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.fairness = fairness
        self.ordering = ordering
        self.configured = configured  # kept when empty (dynamic bands are dropped)
        self.key = ORDERING[ordering]
        self.count = 0
        self.bytes = 0
        self._tombstones = 0
        self._heap: list[tuple[tuple, Item]] = []  # global-strict
        self._flows: dict[str, list[tuple[tuple, Item]]] = {}  # round-robin
        self._ring: collections.deque[str] = collections.deque()

    @property
    def uses_deadlines(self) -> bool:
        return self.key is edf_key

    def fits(self, size: int) -> bool:
        return self.count + 1 <= self.max_requests and self.bytes + size <= self.max_bytes

    def push(self, item: Item) -> None:
        entry = (self.key(item), item)
        if self.fairness == GLOBAL_STRICT:
            heapq.heappush(self._heap, entry)
        else:
            heap = self._flows.get(item.flow)
            if heap is None:
                heap = self._flows[item.flow] = []
                self._ring.append(item.flow)
            heapq.heappush(heap, entry)
        self.count += 1
        self.bytes += item.size

    def discard(self, item: Item) -> None:
        """Release a queued item's counts; its heap entry becomes a tombstone."""
        self.count -= 1
        self.bytes -= item.size
        self._tombstones += 1
        if self._tombstones > COMPACT_FLOOR and self._tombstones > self.count:
            self._compact()

    def pop(self) -> Item | None:
        """The next item by fairness then ordering, removed from the band (None if empty)."""
        if self.count == 0:
            return None
        if self.fairness == GLOBAL_STRICT:
            item = self._pop_live(self._heap)
        else:
            item = None
            while item is None and self._ring:
                flow = self._ring.popleft()
                heap = self._flows[flow]
                item = self._pop_live(heap)
                if heap:
                    self._ring.append(flow)
                else:
                    del self._flows[flow]
        if item is not None:
            self.count -= 1
            self.bytes -= item.size
        return item

    def _pop_live(self, heap: list[tuple[tuple, Item]]) -> Item | None:
        while heap:
            _, item = heapq.heappop(heap)
            if not item.done:
                return item
            self._tombstones -= 1
        return None

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if not e[1].done]
        heapq.heapify(self._heap)
        for flow in list(self._flows):
            heap = [e for e in self._flows[flow] if not e[1].done]
            if heap:
                heapq.heapify(heap)
                self._flows[flow] = heap
            else:
                del self._flows[flow]
        self._ring = collections.deque(f for f in self._ring if f in self._flows)
        self._tombstones = 0

    def clear(self) -> None:
        """Forget every entry (call only when ``count`` is 0: all are tombstones)."""
        self._heap.clear()
        self._flows.clear()
        self._ring.clear()
        self._tombstones = 0

    def entries(self) -> int:
        """Heap entries held, tombstones included (memory bound checks in tests)."""
        return len(self._heap) + sum(len(h) for h in self._flows.values())

    def flows(self) -> int:
        return len(self._flows)
