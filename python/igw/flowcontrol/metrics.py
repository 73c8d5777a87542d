"""The reference's flow-control metric families, registered on a handed-in registry.

Each family is exported twice, as the reference does: the deprecated
``inference_extension_flow_control_*`` name and the ``llm_d_epp_flow_control_*`` twin, with
the same labels and buckets:

* ``request_queue_duration_seconds`` {fairness_id, priority, outcome, inference_pool,
  model_name, target_model_name}: time from arrival at flow control to the outcome (the
  outcome names are the reference's ``QueueOutcome`` strings, e.g. ``Dispatched``,
  ``RejectedCapacity``, ``EvictedTTL``);
* ``queue_size`` / ``queue_bytes`` {fairness_id, priority, inference_pool, model_name,
  target_model_name}: requests and bytes waiting now;
* ``pool_saturation`` {inference_pool, stage}: the value gating dispatch (stage
  ``effective``; igw does not split prefill and decode pools), read from each pool
  controller's last reading when Prometheus scrapes (nothing is written per request);
* ``dispatch_cycle_duration_seconds``: one dispatch decision;
* ``llm_d_epp_flow_control_requests_total`` {outcome, priority, inference_pool} (no legacy
  twin in the reference).

The families live on the front end's ``Metrics.registry`` (this module never touches the
global default registry); ``for_registry`` returns the one instance per registry, so
several controllers in one process share the families instead of registering twice.
Fairness ids come from a request header, so their label values are capped (1000 distinct,
then ``other``), like the reference's bounded labels.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from igw.flowcontrol.queues import Item

QUEUE_DURATION_BUCKETS = (
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
)  # fmt: skip
CYCLE_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
QUEUE_LABELS = ("fairness_id", "priority", "inference_pool", "model_name", "target_model_name")
DURATION_LABELS = (
    "fairness_id", "priority", "outcome", "inference_pool", "model_name", "target_model_name",
)  # fmt: skip
MAX_LABEL_VALUES = 1000
OVERFLOW = "other"

_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, FlowControlMetrics] = (
    weakref.WeakKeyDictionary()
)


class _Bounded:
    """Caps the distinct values of a client-chosen label; a value once admitted stays."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen or not value:
            return value
        if len(self.seen) >= self.limit:
            return OVERFLOW
        self.seen.add(value)
        return value


class _SaturationGauges(Collector):
    """``pool_saturation`` from the live controllers' last readings, at scrape time."""

    def __init__(self) -> None:
        self.controllers: weakref.WeakSet[Any] = weakref.WeakSet()

    def collect(self):
        families = [
            GaugeMetricFamily(
                f"{prefix}_flow_control_pool_saturation",
                "Pool saturation signal gating Flow Control dispatch; 1.0 is the gating set "
                "point. An empty pool reads as 1.0.",
                labels=["inference_pool", "stage"],
            )
            for prefix in ("inference_extension", "llm_d_epp")
        ]
        values = {c.pool.name: c.last_saturation for c in list(self.controllers)}
        for family in families:
            for pool, value in sorted(values.items()):
                family.add_metric([pool, "effective"], value)
        yield from families

    def describe(self):
        return []


class FlowControlMetrics:
    """The families, with label children cached per label set (a request costs a few
    dictionary lookups and ``observe``/``inc`` calls, not a ``labels()`` resolution each)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self._fairness = _Bounded()
        self._models = _Bounded()
        self._outcome_children: dict[tuple, tuple] = {}
        self._queue_children: dict[tuple, tuple] = {}
        self.queue_duration = [
            Histogram(
                f"{prefix}_flow_control_request_queue_duration_seconds",
                "Distribution of total time requests spend in the Flow Control layer "
                "(from enqueue to final outcome).",
                DURATION_LABELS, buckets=QUEUE_DURATION_BUCKETS, registry=r,
            )
            for prefix in ("inference_extension", "llm_d_epp")
        ]  # fmt: skip
        self.queue_size = [
            Gauge(
                f"{prefix}_flow_control_queue_size",
                "Current number of requests actively held in the Flow Control queue.",
                QUEUE_LABELS, registry=r,
            )
            for prefix in ("inference_extension", "llm_d_epp")
        ]  # fmt: skip
        self.queue_bytes = [
            Gauge(
                f"{prefix}_flow_control_queue_bytes",
                "Current total size in bytes of requests actively held in the Flow Control "
                "queue.",
                QUEUE_LABELS, registry=r,
            )
            for prefix in ("inference_extension", "llm_d_epp")
        ]  # fmt: skip
        self.saturation = _SaturationGauges()
        r.register(self.saturation)
        self.cycle = [
            Histogram(
                f"{prefix}_flow_control_dispatch_cycle_duration_seconds",
                "Distribution of time taken for each internal dispatch cycle in the Flow "
                "Control layer.",
                (), buckets=CYCLE_BUCKETS, registry=r,
            )
            for prefix in ("inference_extension", "llm_d_epp")
        ]  # fmt: skip
        self.requests_total = Counter(
            "llm_d_epp_flow_control_requests_total",
            "Total number of requests processed by the Flow Control layer.",
            ("outcome", "priority", "inference_pool"), registry=r,
        )  # fmt: skip

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> FlowControlMetrics:
        found = _BY_REGISTRY.get(registry)
        if found is None:
            found = _BY_REGISTRY[registry] = cls(registry)
        return found

    def track(self, controller: Any) -> None:
        """Report ``controller.last_saturation`` as its pool's saturation."""
        self.saturation.controllers.add(controller)

    def queued(self, pool: str, item: Item, sign: int) -> None:
        """``sign`` +1 when the item enters a queue, -1 when it leaves."""
        request = item.request
        key = (item.flow, item.priority, pool, request.incoming_model, request.target_model)
        children = self._queue_children.get(key)
        if children is None:
            labels = (
                self._fairness(item.flow), str(item.priority), pool,
                self._models(request.incoming_model), self._models(request.target_model),
            )  # fmt: skip
            children = tuple(g.labels(*labels) for g in (*self.queue_size, *self.queue_bytes))
            self._queue_children[_bounded_key(self._queue_children, key)] = children
        size, size_twin, nbytes, nbytes_twin = children
        size.inc(sign)
        size_twin.inc(sign)
        nbytes.inc(sign * item.size)
        nbytes_twin.inc(sign * item.size)

    def outcome(
        self,
        pool: str,
        *,
        fairness_id: str,
        priority: int,
        model: str,
        target: str,
        outcome: str,
        seconds: float,
    ) -> None:
        key = (fairness_id, priority, outcome, pool, model, target)
        children = self._outcome_children.get(key)
        if children is None:
            labels = (
                self._fairness(fairness_id), str(priority), outcome, pool,
                self._models(model), self._models(target),
            )  # fmt: skip
            children = (
                *(h.labels(*labels) for h in self.queue_duration),
                self.requests_total.labels(outcome, str(priority), pool),
            )
            self._outcome_children[_bounded_key(self._outcome_children, key)] = children
        legacy, twin, total = children
        legacy.observe(seconds)
        twin.observe(seconds)
        total.inc()

    def dispatch_cycle(self, seconds: float) -> None:
        for histogram in self.cycle:
            histogram.observe(seconds)


CACHE_LIMIT = 10_000


def _bounded_key(cache: dict, key: tuple) -> tuple:
    """Raw label values come from clients: start the cache over rather than grow it forever
    (the Prometheus children themselves are bounded by the label caps)."""
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    return key
