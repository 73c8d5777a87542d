"""igw's own Prometheus metrics, with the reference picker's names, labels and buckets.

Dashboards and HPA rules written for the reference picker keep working: the legacy
``inference_objective_*`` / ``inference_pool_*`` / ``inference_extension_*`` families (still
emitted by the reference) and the main ``llm_d_epp_*`` families are both exported.

Each per-request measurement is recorded once, in its ``llm_d_epp_*`` family. Its legacy twin
(same buckets, a subset of the labels: the reference's legacy families have no
``fairness_id``, some no ``priority`` or ``target_model_name``) is a ``RollUp``: at scrape time
it sums the current family's series that share the legacy labels and emits them under the
legacy name. The request path so pays for one update per measurement, not two; a scrape
pays for the sums instead.

Everything lives on one ``Metrics`` object with its own ``CollectorRegistry`` (never the
global default registry), so tests and several front ends in one process do not collide.
The ``inference_pool_*`` gauges are not pushed: they are computed from each registered Pool's
snapshot when Prometheus scrapes, so they are always current and cost nothing per request.
Stages call the ``record_*`` methods; the scheduling engine gets ``engine_recorder`` as its
latency recorder callable.

The per-request updates (scheduling attempt, request count and size, scheduler and plugin
latencies, and at the end latency, TTFT, sizes and tokens) influence no routing, so they are
journaled: one tuple per scheduled or finished request, one float per engine timing. The
journals are applied together, with numpy over the batch, once one holds ``BATCH`` entries
(right after the current event-loop step, off the request's latency path) and before
anything reads the registry (a scrape, ``get_sample_value``). A request so costs a few list
appends instead of a bucket search and sum per histogram. Nothing is lost or reordered: the
counts, sums (to the last bit) and series are those of one ``observe`` per value in request
order; a child first made by a batch gets the time of its first value as ``_created``. The
running gauge is updated at once (it is read at scrape time only, but it is one add).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from bisect import bisect_left
from collections import Counter as _Tally
from collections.abc import Iterable
from itertools import chain
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client import metrics as _prom_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from igw.datastore import Pool
    from igw.pipeline import Request

_log = logging.getLogger("igw.metrics")

GENERAL_LATENCY_BUCKETS = (
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6,
    8, 10, 15, 20, 30, 45, 60, 120, 180, 240, 300, 360, 480, 600, 900, 1200,
    1800, 2700, 3600,
)  # fmt: skip
REQUEST_SIZE_BUCKETS = tuple(float(2**i) for i in range(6, 31))  # 64 B .. 1 GiB
# 32778 (not 32768) is the reference's own typo, kept so bucket boundaries line up.
RESPONSE_SIZE_BUCKETS = (1, *(2**i for i in range(3, 15)), 32778, 65536)
INPUT_TOKEN_BUCKETS = (1, *(2**i for i in range(3, 15)), 32778, *(2**i for i in range(16, 21)))
OUTPUT_TOKEN_BUCKETS = (1, *(2**i for i in range(3, 14)))
NTPOT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
SCHEDULER_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)

MODEL = ("model_name", "target_model_name")
MODEL_PRIORITY = (*MODEL, "priority")
EPP_REQUEST = (*MODEL, "fairness_id", "priority")


# --------------------------------------------------------------------- lean metric families
#
# prometheus_client's Counter/Histogram cost ~3-4 us per labelled update (``labels()`` builds
# and validates a key under a lock, ``observe`` walks the buckets linearly, each value has its
# own lock); the request path makes ~30 of them. These families keep the same names, labels,
# buckets and exposition (``_total``/``_created``, cumulative ``_bucket``, ``_count``, ``_sum``)
# but a child update is a list/float update: igw updates metrics only from the event loop
# thread, so no locks are needed, and scrapes read the values from the same thread.


def _created_series() -> bool:
    """prometheus_client's switch (PROMETHEUS_DISABLE_CREATED_SERIES) for ``_created``."""
    return bool(getattr(_prom_metrics, "_use_created", True))


class _CounterChild:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        self.value += amount


class _GaugeChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class _HistogramChild:
    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds  # finite upper bounds, ascending; the last bucket is +Inf
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        # bisect_left: the first bound >= amount, i.e. prometheus' "amount <= le".
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount

    def observe_many(self, amounts: np.ndarray) -> None:
        """``observe`` each of ``amounts`` (float64, in order): the same counts, and the same
        ``sum`` to the last bit (``cumsum`` adds one after the other, as ``observe`` does)."""
        where = np.searchsorted(_bounds_array(self.bounds), amounts, side="left")
        # searchsorted "left" is bisect_left, but for NaN, which bisect_left puts first
        nan = np.isnan(amounts)
        if nan.any():
            where[nan] = 0
        found = np.bincount(where, minlength=len(self.counts))
        added = found.tolist()  # Python ints: no numpy scalar per bucket
        counts = self.counts
        for bucket in np.flatnonzero(found).tolist():
            counts[bucket] += added[bucket]
        self.sum = float(np.cumsum(np.concatenate(((self.sum,), amounts)))[-1])


_BOUNDS_ARRAYS: dict[tuple[float, ...], np.ndarray] = {}


def _bounds_array(bounds: tuple[float, ...]) -> np.ndarray:
    array = _BOUNDS_ARRAYS.get(bounds)
    if array is None:
        array = _BOUNDS_ARRAYS[bounds] = np.asarray(bounds, dtype=np.float64)
    return array


class _Family(Collector):
    """One metric family: children per label-value tuple, exposed at scrape time."""

    kind = ""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Iterable[str] = (),
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], object] = {}
        if not self.labelnames:
            self._children[()] = self._child()
        if registry is not None:
            registry.register(self)

    def _child(self):
        raise NotImplementedError

    def labels(self, *values: object, **named: object):
        """The child for these label values (positional in ``labelnames`` order, or named)."""
        if named:
            if values or set(named) != set(self.labelnames):
                raise ValueError(f"{self.name}: expected the labels {self.labelnames}")
            values = tuple(named[name] for name in self.labelnames)
        child = self._children.get(values)  # type: ignore[arg-type]
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(
                    f"{self.name}: expected {len(self.labelnames)} label values "
                    f"{self.labelnames}, got {len(values)}"
                )
            key = tuple(str(v) for v in values)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._child()
            if key != values:
                self._children[values] = child  # type: ignore[index]
        return child

    def metric_name(self, name: str) -> str:
        """The family name in the exposition for a family registered as ``name``."""
        return name

    def describe(self):
        return [Metric(self.metric_name(self.name), self.documentation, self.kind)]

    def keyed_series(self):
        """(label values, child) per distinct series (aliases of non-str keys skipped)."""
        for key, child in list(self._children.items()):
            if all(type(v) is str for v in key):
                yield key, child

    def _series(self):
        """(label dict, child) per distinct series."""
        names = self.labelnames
        for key, child in self.keyed_series():
            yield dict(zip(names, key, strict=True)), child

    def collect(self):
        yield self.exposition(self.name, self.documentation, self._series())

    def exposition(self, name: str, documentation: str, series: Iterable) -> Metric:
        """The samples of ``series`` ((label dict, child) pairs) as family ``name``; shared by
        this family and the ``RollUp`` views derived from it."""
        raise NotImplementedError

    def merged(self, children: list):
        """One child holding the sum of ``children`` (the child itself when there is one)."""
        raise NotImplementedError


class Counter(_Family):
    kind = "counter"

    def _child(self) -> _CounterChild:
        return _CounterChild()

    def metric_name(self, name: str) -> str:
        return name[: -len("_total")] if name.endswith("_total") else name

    def inc(self, amount: float = 1.0) -> None:
        self._children[()].inc(amount)  # type: ignore[attr-defined]

    def exposition(self, name: str, documentation: str, series: Iterable) -> Metric:
        base = self.metric_name(name)
        metric = Metric(base, documentation, self.kind)
        created = _created_series()
        for labels, child in series:
            metric.add_sample(base + "_total", labels, child.value)
            if created:
                metric.add_sample(base + "_created", labels, child.created)
        return metric

    def merged(self, children: list) -> _CounterChild:
        if len(children) == 1:
            return children[0]
        total = _CounterChild()
        total.value = sum(c.value for c in children)
        total.created = min(c.created for c in children)
        return total


class Gauge(_Family):
    kind = "gauge"

    def _child(self) -> _GaugeChild:
        return _GaugeChild()

    def set(self, value: float) -> None:
        self._children[()].set(value)  # type: ignore[attr-defined]

    def exposition(self, name: str, documentation: str, series: Iterable) -> Metric:
        metric = Metric(name, documentation, self.kind)
        for labels, child in series:
            metric.add_sample(name, labels, child.value)
        return metric

    def merged(self, children: list) -> _GaugeChild:
        if len(children) == 1:
            return children[0]
        total = _GaugeChild()
        total.value = sum(c.value for c in children)
        return total


class Histogram(_Family):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Iterable[str] = (),
        *,
        buckets: Iterable[float],
        registry: CollectorRegistry | None = None,
    ) -> None:
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if list(bounds) != sorted(bounds):
            raise ValueError(f"{name}: buckets not in sorted order")
        self.bounds = bounds
        self._les = [floatToGoString(b) for b in bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames, registry=registry)

    def _child(self) -> _HistogramChild:
        return _HistogramChild(self.bounds)

    def observe(self, amount: float) -> None:
        self._children[()].observe(amount)  # type: ignore[attr-defined]

    def exposition(self, name: str, documentation: str, series: Iterable) -> Metric:
        metric = Metric(name, documentation, self.kind)
        created = _created_series()
        for labels, child in series:
            total = 0
            for le, count in zip(self._les, child.counts, strict=True):
                total += count
                metric.add_sample(name + "_bucket", {**labels, "le": le}, float(total))
            metric.add_sample(name + "_count", labels, float(total))
            metric.add_sample(name + "_sum", labels, child.sum)
            if created:
                metric.add_sample(name + "_created", labels, child.created)
        return metric

    def merged(self, children: list) -> _HistogramChild:
        if len(children) == 1:
            return children[0]
        total = _HistogramChild(self.bounds)
        total.counts = [sum(column) for column in zip(*(c.counts for c in children), strict=True)]
        total.sum = sum(c.sum for c in children)
        total.created = min(c.created for c in children)
        return total


class RollUp(Collector):
    """A family exported at scrape time from another one: the same kind, buckets and values
    under another name, keeping only ``labelnames`` (a subset of the source's labels; the
    source's series that agree on them are summed).

    Why: the legacy families are the current ones minus some labels, so recording both on
    every request would do each update twice. A series appears here once its first source
    series does; its ``_created`` is the earliest of theirs. Sums of several series are
    added in the source's series order, so a float ``_sum`` can differ from a single running
    total in the last bits; counts and integer sums are exact.
    """

    def __init__(
        self,
        source: _Family,
        name: str,
        documentation: str,
        labelnames: Iterable[str] | None = None,
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.source = source
        self.name = name
        self.documentation = documentation
        self.labelnames = source.labelnames if labelnames is None else tuple(labelnames)
        unknown = [n for n in self.labelnames if n not in source.labelnames]
        if unknown:
            raise ValueError(
                f"{name}: labels {unknown} are not labels of {source.name} {source.labelnames}"
            )
        self._index = tuple(source.labelnames.index(n) for n in self.labelnames)
        self._same_labels = self.labelnames == source.labelnames
        if registry is not None:
            registry.register(self)

    def describe(self):
        return [Metric(self.source.metric_name(self.name), self.documentation, self.source.kind)]

    def collect(self):
        yield self.source.exposition(self.name, self.documentation, self._series())

    def _series(self):
        names, source = self.labelnames, self.source
        if self._same_labels:
            for key, child in source.keyed_series():
                yield dict(zip(names, key, strict=True)), child
            return
        index = self._index
        groups: dict[tuple[str, ...], list] = {}
        for key, child in source.keyed_series():
            group = tuple(key[i] for i in index)
            members = groups.get(group)
            if members is None:
                groups[group] = [child]
            else:
                members.append(child)
        for group, children in groups.items():
            yield dict(zip(names, group, strict=True)), source.merged(children)


class _ApplyPending(Collector):
    """Registered first: every collection of the registry applies the queued updates before
    the families are read."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self):
        self._metrics.flush()
        return iter(())

    def describe(self):
        return []


class _PoolGauges(Collector):
    """Computes the pool gauges from the Pool snapshots at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self):
        families = {
            key: (
                GaugeMetricFamily(f"inference_pool_{key}", help_text, labels=["name"]),
                GaugeMetricFamily(f"llm_d_epp_{new}", help_text, labels=["name"]),
            )
            for key, new, help_text in (
                ("average_kv_cache_utilization", "average_kv_cache_utilization",
                 "The average kv cache utilization for an inference server pool."),
                ("average_queue_size", "average_queue_size",
                 "The average number of requests pending in the model server queue."),
                ("average_running_requests", "average_running_requests",
                 "The average number of running requests across model servers in the pool."),
                ("ready_pods", "ready_endpoints",
                 "The number of ready pods in the inference server pool."),
            )
        }  # fmt: skip
        for pool in self._metrics.pools():
            for key, value in pool_gauge_values(pool).items():
                for family in families[key]:
                    family.add_metric([pool.name], value)
        for pair in families.values():
            yield from pair

    def describe(self):
        return []


def pool_gauge_values(pool: Pool) -> dict[str, float]:
    """Averages over the pool's ready endpoints (0 when none), and the ready count."""
    snapshot = pool.table.snapshot()
    ids = np.fromiter((e.id for e in pool.endpoints()), dtype=np.int64)
    ready = ids[np.asarray(snapshot.ready)[ids]] if ids.size else ids
    if ready.size == 0:
        return {
            "average_kv_cache_utilization": 0.0,
            "average_queue_size": 0.0,
            "average_running_requests": 0.0,
            "ready_pods": 0.0,
        }
    return {
        "average_kv_cache_utilization": float(np.mean(np.asarray(snapshot.kv_util)[ready])),
        "average_queue_size": float(np.mean(np.asarray(snapshot.waiting)[ready])),
        "average_running_requests": float(np.mean(np.asarray(snapshot.running)[ready])),
        "ready_pods": float(ready.size),
    }


MAX_CACHED_SERIES = 4096  # label tuples whose children are kept resolved (then reset)
BATCH = 512  # journal entries applied together (see Metrics "journals"): ~0.4 ms of numpy
_NAN = float("nan")
_RESPONSE_FIELDS = 8  # the length of a response journal entry
_NOT_AN_ATTEMPT = object()  # a journal entry of record_request: no scheduling attempt


class _RequestSeries:
    """The per-request children for one (model, target, fairness id, priority): the request
    path resolves its label values once per tuple instead of once per family and update.

    Children are resolved on first use (``__getattr__`` runs only while a slot is unset), so
    a series appears in the exposition only once something was recorded in it, as before.
    """

    __slots__ = (
        "_epp", "_metrics", "_pair",
        "epp_cached_tokens", "epp_input_tokens", "epp_ntpot", "epp_output_tokens",
        "epp_request_duration", "epp_request_size", "epp_request_total", "epp_response_size",
        "epp_running", "epp_ttft", "index",
    )  # fmt: skip

    def __init__(
        self, m: Metrics, model: str, target: str, fairness: str, priority: int, index: int
    ) -> None:
        self._metrics = m
        self._pair = (model, target)
        self._epp = (model, target, fairness, str(priority))
        self.index = index  # in Metrics._series_list: what the journals hold

    def __getattr__(self, name: str):
        if name.startswith("_") or name not in _RequestSeries.__slots__:
            raise AttributeError(name)
        family = getattr(self._metrics, name)
        child = family.labels(*(self._pair if name == "epp_running" else self._epp))
        setattr(self, name, child)
        return child

    def child(self, name: str, created: float):
        """The child ``name``; one this makes gets ``created`` as its ``_created`` time (the
        journals apply updates later than they were made)."""
        try:
            return object.__getattribute__(self, name)
        except AttributeError:
            pass
        family = getattr(self._metrics, name)
        key = self._pair if name == "epp_running" else self._epp
        fresh = key not in family._children
        child = family.labels(*key)
        if fresh:
            child.created = created
        setattr(self, name, child)
        return child


class Metrics:
    """The metric families and the ``record_*`` calls the stages make.

    Only the ``llm_d_epp_*`` families (and the legacy families with no current twin) are
    updated; ``request_total``, ``request_duration``, ``running`` ... are ``RollUp`` views of
    their ``epp_*`` twins, read-only.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        if registry is None:
            # process_cpu_seconds_total, process_resident_memory_bytes, ... (as the reference's
            # Go registry has), read from /proc at scrape time only
            ProcessCollector(registry=self.registry)
        self._pools: list[Pool] = []
        # The journals (see "journals" below): what the request path recorded, not yet applied.
        self._scheduled_log: list[tuple] = []  # (series index, size, endpoint, received at)
        self._response_log: list[tuple] = []  # (series index, received, finished, ...)
        # (plugin type, name) -> seconds recorded since the last flush (kept, emptied)
        self._engine_log: dict[tuple[str, str], list[float]] = {}
        self._engine_pending = False
        self._flush_loop: asyncio.AbstractEventLoop | None = None
        self._started = time.time()  # no child is older (bounds the _created estimates)
        # The current (non-deprecated) families, which the request path updates.
        self.epp_request_total = Counter(
            "llm_d_epp_request_total", "Counter of requests.", EPP_REQUEST
        )
        self.epp_request_error_total = Counter(
            "llm_d_epp_request_error_total", "Counter of request errors.",
            (*EPP_REQUEST, "error_code"),
        )  # fmt: skip
        self.epp_request_duration = Histogram(
            "llm_d_epp_request_duration_seconds", "Request latency in seconds.",
            EPP_REQUEST, buckets=GENERAL_LATENCY_BUCKETS,
        )  # fmt: skip
        self.epp_ttft = Histogram(
            "llm_d_epp_request_ttft_seconds", "Time to first response byte in seconds.",
            EPP_REQUEST, buckets=GENERAL_LATENCY_BUCKETS,
        )  # fmt: skip
        self.epp_request_size = Histogram(
            "llm_d_epp_request_size_bytes", "Request body size in bytes.",
            EPP_REQUEST, buckets=REQUEST_SIZE_BUCKETS,
        )  # fmt: skip
        self.epp_response_size = Histogram(
            "llm_d_epp_response_size_bytes", "Response body size in bytes.",
            EPP_REQUEST, buckets=RESPONSE_SIZE_BUCKETS,
        )  # fmt: skip
        self.epp_input_tokens = Histogram(
            "llm_d_epp_request_input_tokens", "Input tokens per request.",
            EPP_REQUEST, buckets=INPUT_TOKEN_BUCKETS,
        )  # fmt: skip
        self.epp_output_tokens = Histogram(
            "llm_d_epp_request_output_tokens", "Output tokens per request.",
            EPP_REQUEST, buckets=OUTPUT_TOKEN_BUCKETS,
        )  # fmt: skip
        self.epp_cached_tokens = Histogram(
            "llm_d_epp_request_cached_tokens", "Prompt tokens served from the prefix cache.",
            EPP_REQUEST, buckets=INPUT_TOKEN_BUCKETS,
        )  # fmt: skip
        self.epp_ntpot = Histogram(
            "llm_d_epp_request_ntpot_seconds", "Request latency divided by output tokens.",
            EPP_REQUEST, buckets=NTPOT_BUCKETS,
        )  # fmt: skip
        self.epp_running = Gauge(
            "llm_d_epp_request_running", "Number of running requests.",
            ("model_name", "target_model_name"),
        )  # fmt: skip
        self.epp_scheduler_e2e = Histogram(
            "llm_d_epp_scheduler_e2e_duration_seconds",
            "End-to-end scheduling latency distribution in seconds.",
            (), buckets=SCHEDULER_BUCKETS,
        )  # fmt: skip
        self.epp_plugin_duration = Histogram(
            "llm_d_epp_plugin_duration_seconds", "Plugin processing latency in seconds.",
            ("extension_point", "plugin_type", "plugin_name"), buckets=SCHEDULER_BUCKETS,
        )  # fmt: skip
        self.epp_request_processing = Histogram(
            "llm_d_epp_request_processing_duration_seconds",
            "Time the picker spent on the request phase (parse to routing decision).",
            (), buckets=SCHEDULER_BUCKETS,
        )  # fmt: skip
        # The legacy families: views of their current twins, or recorded (no twin).
        self.request_total = RollUp(
            self.epp_request_total, "inference_objective_request_total",
            "Counter of inference objective requests broken out for each model and target model.",
            MODEL_PRIORITY,
        )  # fmt: skip
        self.request_error_total = RollUp(
            self.epp_request_error_total, "inference_objective_request_error_total",
            "Counter of inference objective requests errors broken out for each model and "
            "target model.",
            (*MODEL, "error_code"),
        )  # fmt: skip
        self.request_duration = RollUp(
            self.epp_request_duration, "inference_objective_request_duration_seconds",
            "Inference objective response latency distribution in seconds.", MODEL,
        )  # fmt: skip
        self.request_sizes = RollUp(
            self.epp_request_size, "inference_objective_request_sizes",
            "Inference objective requests size distribution in bytes.", MODEL,
        )  # fmt: skip
        self.response_sizes = RollUp(
            self.epp_response_size, "inference_objective_response_sizes",
            "Inference objective responses size distribution in bytes.", MODEL,
        )  # fmt: skip
        self.input_tokens = RollUp(
            self.epp_input_tokens, "inference_objective_input_tokens",
            "Inference objective input token count distribution for requests in each model.",
            MODEL,
        )  # fmt: skip
        self.output_tokens = RollUp(
            self.epp_output_tokens, "inference_objective_output_tokens",
            "Inference objective output token count distribution for requests in each model.",
            MODEL,
        )  # fmt: skip
        self.cached_tokens = RollUp(
            self.epp_cached_tokens, "inference_objective_prompt_cached_tokens",
            "Inference objective prompt cached token count distribution.", MODEL,
        )  # fmt: skip
        self.running = RollUp(
            self.epp_running, "inference_objective_running_requests",
            "Inference objective number of running requests in each model.", ("model_name",),
        )  # fmt: skip
        self.ntpot = RollUp(
            self.epp_ntpot, "inference_objective_normalized_time_per_output_token_seconds",
            "Inference objective latency divided by number of output tokens in seconds.", MODEL,
        )  # fmt: skip
        self.scheduler_e2e = RollUp(
            self.epp_scheduler_e2e, "inference_extension_scheduler_e2e_duration_seconds",
            "End-to-end scheduling latency distribution in seconds.",
        )  # fmt: skip
        # pod_name here, endpoint_name in the reference's current family, which igw does not
        # export: recorded.
        self.scheduler_attempts = Counter(
            "inference_extension_scheduler_attempts_total",
            "Total number of scheduling attempts.",
            ("status", "target_model_name", "pod_name", "namespace", "port"),
        )  # fmt: skip
        self.plugin_duration = RollUp(
            self.epp_plugin_duration, "inference_extension_plugin_duration_seconds",
            "Plugin processing latency distribution in seconds for each extension point, "
            "plugin type and plugin name.",
        )  # fmt: skip
        self.rewrite_decisions = Counter(
            "inference_extension_model_rewrite_decisions_total",
            "Total number of inference model rewrite decisions.",
            ("model_rewrite_name", "model_name", "target_model"),
        )  # fmt: skip
        self.info = Gauge(
            "inference_extension_info", "General information of the current build.",
            ("commit", "build_ref"),
        )  # fmt: skip
        # Registration order is exposition order: legacy families first, as before.
        for collector in (
            _ApplyPending(self),
            self.request_total, self.request_error_total, self.request_duration,
            self.request_sizes, self.response_sizes, self.input_tokens, self.output_tokens,
            self.cached_tokens, self.running, self.ntpot, self.scheduler_e2e,
            self.scheduler_attempts, self.plugin_duration, self.rewrite_decisions, self.info,
            self.epp_request_total, self.epp_request_error_total, self.epp_request_duration,
            self.epp_ttft, self.epp_request_size, self.epp_response_size,
            self.epp_input_tokens, self.epp_output_tokens, self.epp_cached_tokens,
            self.epp_ntpot, self.epp_running, self.epp_scheduler_e2e, self.epp_plugin_duration,
            self.epp_request_processing, _PoolGauges(self),
        ):  # fmt: skip
            self.registry.register(collector)
        self._by_labels: dict[tuple[str, str, str, int], _RequestSeries] = {}
        self._series_list: list[_RequestSeries] = []  # by index; reset with _by_labels
        from igw import __version__

        self.info.labels(commit="", build_ref=__version__).set(1)

    # -- pools ---------------------------------------------------------------------------
    def add_pool(self, pool: Pool) -> None:
        """Export ``inference_pool_*`` gauges for this pool (computed at scrape time)."""
        if pool not in self._pools:
            self._pools.append(pool)

    def pools(self) -> Iterable[Pool]:
        return list(self._pools)

    # -- request phase -------------------------------------------------------------------
    def _series(self, request: Request) -> _RequestSeries:
        """The children for this request's label values (one dict lookup once seen)."""
        key = (request.incoming_model, request.target_model, request.fairness_id,
               request.priority)  # fmt: skip
        series = self._by_labels.get(key)
        if series is None:
            series = self._new_series(key)
        return series

    def _new_series(self, key: tuple[str, str, str, int]) -> _RequestSeries:
        if len(self._by_labels) >= MAX_CACHED_SERIES:
            self.flush()  # the journals name series by index: apply them before the reset
            self._by_labels.clear()  # bounded: children stay in the families
            self._series_list.clear()
        series = _RequestSeries(self, *key, len(self._series_list))
        self._series_list.append(series)
        self._by_labels[key] = series
        return series

    # -- journals --------------------------------------------------------------------------
    #
    # A request's measurements (its count and size when scheduled, the scheduler's timings,
    # its latency, sizes and tokens when it ends) are appended as one tuple to a journal; the
    # journals are applied together, with numpy over the whole batch, when one holds BATCH
    # entries (after the current event-loop step) or when anything reads the registry (a
    # scrape, ``get_sample_value``: ``_ApplyPending`` runs first). The request path so pays
    # for one append per measurement group instead of one bucket search and sum per
    # histogram. Nothing is lost or reordered: every entry is applied once, in the order it
    # was made, and the counts and sums are those of one ``observe`` per value.
    def _flush_soon(self) -> None:
        """Apply the journals after the current event-loop step (at once with no loop)."""
        scheduled = self._flush_loop
        if scheduled is not None and not scheduled.is_closed():
            return  # a flush is already scheduled on the running loop
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_loop = loop
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Apply every journal entry recorded so far."""
        self._flush_loop = None
        if not (self._scheduled_log or self._response_log or self._engine_pending):
            return
        clock = time.time() - time.monotonic()  # wall = monotonic + clock (for _created)
        # A batch that cannot be applied is logged and dropped: metrics never stop a server.
        if self._scheduled_log:
            log, self._scheduled_log = self._scheduled_log, []
            try:
                self._apply_scheduled(log, clock)
            except Exception:
                _log.exception("metrics: %d scheduled-request updates dropped", len(log))
        if self._response_log:
            log, self._response_log = self._response_log, []
            try:
                self._apply_responses(log, clock)
            except Exception:
                _log.exception("metrics: %d finished-request updates dropped", len(log))
        if self._engine_pending:
            self._engine_pending = False
            try:
                self._apply_engine()
            except Exception:
                _log.exception("metrics: scheduler timings dropped")
                for values in self._engine_log.values():
                    values.clear()

    def _created(self, clock: float, stamp: float) -> float:
        """The wall time of the monotonic ``stamp``, within [metrics start, now]."""
        return min(max(clock + stamp, self._started), time.time())

    def _only_series(self, index: np.ndarray) -> _RequestSeries | None:
        """The series of every entry when ``index`` names one only (the usual batch)."""
        first = int(index[0])
        return self._series_list[first] if (index == first).all() else None

    def _groups(self, index: np.ndarray):
        """(series, positions or None for all) per series index in ``index``, in order of
        first appearance."""
        only = self._only_series(index)
        if only is not None:
            yield only, None
            return
        values, firsts = np.unique(index, return_index=True)
        for value in values[np.argsort(firsts)].tolist():
            yield self._series_list[value], np.flatnonzero(index == value)

    def _apply_scheduled(self, log: list[tuple], clock: float) -> None:
        # columns by zip(*log), counts by Counter: no Python-level step per entry
        positions, sizes_in, endpoints, stamps = zip(*log, strict=True)
        index = np.array(positions, dtype=np.intp)
        sizes = np.array(sizes_in, dtype=np.float64)
        only = self._only_series(index)  # one series (usual): no grouping
        for series, where in ((only, None),) if only is not None else self._groups(index):
            at = 0 if where is None else int(where[0])
            created = self._created(clock, stamps[at])
            total = series.child("epp_request_total", created)
            total.value += float(len(log) if where is None else len(where))
            series.child("epp_request_size", created).observe_many(
                sizes if where is None else sizes[where]
            )
        # scheduling attempts, counted per (series, endpoint) and added once each (in the
        # order first seen, the order the children were made in before); with one series in
        # the batch (the usual case) the endpoints alone are counted, with no pairs to build
        ids = list(map(id, endpoints))
        by_id = dict(zip(ids, endpoints, strict=True))
        skip = id(_NOT_AN_ATTEMPT)
        if only is not None:
            tally = (((positions[0], key), times) for key, times in _Tally(ids).items())
        else:
            tally = _Tally(zip(positions, ids, strict=True)).items()
        for (position, key), times in tally:
            if key == skip:
                continue
            endpoint = by_id[key]
            target = self._series_list[position]._pair[1]
            if endpoint is None:
                pod = namespace = port = ""
            else:
                pod, namespace, port = endpoint.name, endpoint.namespace, str(endpoint.port)
            self.scheduler_attempts.labels("success", target, pod, namespace, port).inc(times)

    def _apply_responses(self, log: list[tuple], clock: float) -> None:
        try:
            data = np.fromiter(
                chain.from_iterable(log), dtype=np.float64, count=len(log) * _RESPONSE_FIELDS
            ).reshape(len(log), _RESPONSE_FIELDS)
        except (OverflowError, ValueError, TypeError):  # a count beyond float64
            if len(log) > 1:  # apply the others; the entry that cannot be is dropped
                for entry in log:
                    self._apply_responses([entry], clock)
            return
        index = data[:, 0].astype(np.intp)
        received, finished, first_byte = data[:, 1], data[:, 2], data[:, 3]
        size, prompt, completion, cached = data[:, 4], data[:, 5], data[:, 6], data[:, 7]
        elapsed = finished - received
        latency = np.where(elapsed > 0.0, elapsed, 0.0)  # max(0.0, x), as record_response did
        seen = ~np.isnan(first_byte)
        ttft = first_byte - received
        ttft = np.where(ttft > 0.0, ttft, 0.0)
        produced = completion > 0
        ntpot = np.full(len(log), np.nan)
        np.divide(latency, completion, out=ntpot, where=produced)
        measures = (
            ("epp_request_duration", latency, None),
            ("epp_ttft", ttft, seen),
            ("epp_response_size", size, size >= 0),  # -1: not all of the body was seen
            ("epp_input_tokens", prompt, prompt > 0),
            ("epp_output_tokens", completion, produced),
            ("epp_ntpot", ntpot, produced & np.isfinite(ntpot)),
            ("epp_cached_tokens", cached, cached > 0),
        )
        # family by family, series in the order of their first value (the order observe
        # made them in, which is the exposition's order)
        only = self._only_series(index)  # one series (usual): no grouping per family
        for name, values, mask in measures:
            if only is not None:
                first = 0 if mask is None else int(mask.argmax())  # the first kept entry
                if mask is not None:
                    if not mask[first]:
                        continue  # nothing kept
                    values = values[mask]
                child = only.child(name, self._created(clock, float(finished[first])))
                child.observe_many(values)
                continue
            if mask is None:
                which, stamps = index, finished
            else:
                if not mask.any():
                    continue
                which, stamps, values = index[mask], finished[mask], values[mask]
            for series, where in self._groups(which):
                first = 0 if where is None else int(where[0])
                child = series.child(name, self._created(clock, float(stamps[first])))
                child.observe_many(values if where is None else values[where])

    def _apply_engine(self) -> None:
        log = self._engine_log
        for (plugin_type, plugin_name), values in log.items():
            if not values:
                continue
            if plugin_type == "scheduler" and plugin_name == "e2e":
                child = self.epp_scheduler_e2e.labels()
            else:
                child = self.epp_plugin_duration.labels("scheduling", plugin_type, plugin_name)
            child.observe_many(np.asarray(values, dtype=np.float64))
            values.clear()
        if len(log) > MAX_CACHED_SERIES:
            log.clear()  # bounded (plugin names come from the configuration)

    # -- recording -------------------------------------------------------------------------
    def record_request(self, request: Request) -> None:
        """A request entered scheduling: count it and its size."""
        log = self._scheduled_log
        log.append((self._series(request).index, len(request.upstream_body), _NOT_AN_ATTEMPT,
                    request.received_at))  # fmt: skip
        if len(log) >= BATCH:
            self._flush_soon()

    def record_error(self, request: Request, code_label: str) -> None:
        self.epp_request_error_total.labels(
            request.incoming_model, request.target_model, request.fairness_id,
            str(request.priority), code_label,
        ).inc()  # fmt: skip

    def record_rewrite(self, rule_name: str, model: str, target: str) -> None:
        self.rewrite_decisions.labels(rule_name, model, target).inc()

    def scheduled(self, request: Request) -> None:
        """A request was scheduled: ``record_scheduled(request, "success")``,
        ``record_request`` and ``running_started`` in one step (one series lookup, one
        journal entry; the schedule stage calls this per request)."""
        series = self._series(request)
        series.epp_running.value += 1.0
        decision = request.decision
        endpoint = decision.endpoints[0] if decision is not None and decision.endpoints else None
        log = self._scheduled_log
        log.append((series.index, len(request.upstream_body), endpoint, request.received_at))
        if len(log) >= BATCH:
            self._flush_soon()

    def record_scheduled(self, request: Request, status: str = "success") -> None:
        """A scheduling attempt ended (``status`` success or failure)."""
        decision = request.decision
        if decision is not None and decision.endpoints:
            endpoint = decision.primary
            pod, namespace, port = endpoint.name, endpoint.namespace, str(endpoint.port)
        else:
            pod = namespace = port = ""
        self.scheduler_attempts.labels(status, request.target_model, pod, namespace, port).inc()

    def record_request_processing(self, seconds: float) -> None:
        self.epp_request_processing.observe(seconds)

    def engine_recorder(self, plugin_type: str, plugin_name: str, seconds: float) -> None:
        """The scheduling engine's latency recorder: ``("scheduler", "e2e", s)`` is the whole
        schedule call; anything else is one plugin (or the fused core pass)."""
        values = self._engine_log.get((plugin_type, plugin_name))
        if values is None:
            values = self._engine_log[(plugin_type, plugin_name)] = []
        values.append(seconds)
        self._engine_pending = True
        if len(values) >= BATCH:
            self._flush_soon()

    def running_started(self, request: Request) -> None:
        self._series(request).epp_running.value += 1.0

    def running_ended(self, request: Request) -> None:
        self._series(request).epp_running.value -= 1.0

    # -- response phase ------------------------------------------------------------------
    def record_response(self, request: Request, response_bytes: int | None) -> None:
        """The response ended normally: latency, size, tokens, normalized TPOT."""
        self.request_finished(request, response_bytes, running=False)

    def request_finished(
        self, request: Request, response_bytes: int | None, *, running: bool, answered=True
    ) -> None:
        """The end of a request: ``running_ended`` when ``running``, and ``record_response``
        when ``answered`` (``response_bytes`` None: the body was not all seen), with one
        series lookup and one journal entry (the account stage calls this per request)."""
        series = self._series(request)
        if running:
            series.epp_running.value -= 1.0
        if not answered:
            return
        received = request.received_at
        first_byte = request.first_byte_at
        usage = request.usage
        log = self._response_log
        log.append((
            series.index, received, request.finished_at or received,
            _NAN if first_byte is None else first_byte,
            -1 if response_bytes is None else response_bytes,
            usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens,
        ))  # fmt: skip
        if len(log) >= BATCH:
            self._flush_soon()

    # -- exposition ----------------------------------------------------------------------
    def generate(self) -> bytes:
        """The text exposition of every family (for a ``/metrics`` handler)."""
        return generate_latest(self.registry)
