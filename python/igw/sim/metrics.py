"""A replica's ``/metrics``: Prometheus text with vLLM's metric names and labels.

``engine_type`` switches the names to another server's (``sglang``, ``trtllm-serve``; the
names the endpoint pickers scrape, REFERENCE.md 5.1) so every metrics extractor of the
gateway can be exercised against the same simulated engine.

Gauges and counters are read from the engine when scraped (a custom collector, so the
request path pays nothing for them); latency histograms are observed when a request
finishes. Latencies are reported in wall-clock seconds as the simulated GPU would show
them at this ``--speed`` (model time / speed), i.e. what a client of the simulator measures.
Names and bucket bounds follow vLLM's V1 ``loggers.py``; both ``kv_cache_usage_perc`` and
the older ``gpu_cache_usage_perc`` (and ``gpu_prefix_cache_*``) are exported, since pickers
in the field read either.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from igw.sim.model import Seq
    from igw.sim.replica import SimReplica

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENGINE_TYPES = ("vllm", "sglang", "trtllm-serve")

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
TPOT_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)


def tokens_buckets(max_value: int) -> tuple[float, ...]:
    """1, 2, 5, 10, 20, 50, ... up to ``max_value`` (vLLM's token-count buckets)."""
    out = []
    scale = 1
    while True:
        for m in (1, 2, 5):
            if m * scale > max_value:
                return tuple(out)
            out.append(float(m * scale))
        scale *= 10


class _EngineCollector:
    """Reads gauges and counters straight from the engine at scrape time."""

    def __init__(self, replica: SimReplica) -> None:
        self._replica = replica
        self._names = ["model_name", "engine"]
        self._values = [replica.models[0], "0"]

    def describe(self):  # no fixed description: keeps registration from calling collect()
        return []

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=self._names)
        family.add_metric(self._values, value)
        return family

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=self._names)
        family.add_metric(self._values, value)
        return family

    def collect(self):
        replica = self._replica
        yield self._counter(
            "igw_sim_engine_lag_seconds",
            "Wall seconds the simulated engine fell behind its latency model (CPU starved) "
            "and skipped; non-zero means latencies are longer than the model's.",
            replica.lag_s,
        )
        kind = replica.engine_type
        if kind == "sglang":
            yield from self._sglang()
        elif kind == "trtllm-serve":
            yield from self._trtllm()
        else:
            yield from self._vllm()

    def _vllm(self):
        replica = self._replica
        engine = replica.engine
        params = replica.params
        stats = engine.stats
        gauge, counter = self._gauge, self._counter
        usage = engine.cache.usage
        yield gauge(
            "vllm:num_requests_running", "Requests in model execution batches.", len(engine.running)
        )
        yield gauge(
            "vllm:num_requests_waiting", "Requests waiting to be processed.", len(engine.waiting)
        )
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", usage)
        yield gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage (older name).", usage)
        for prefix in ("vllm:", "vllm:gpu_"):
            yield counter(
                prefix + "prefix_cache_queries",
                "Prefix cache queries, in terms of number of queried tokens.",
                stats.prefix_queries,
            )
            yield counter(
                prefix + "prefix_cache_hits",
                "Prefix cache hits, in terms of number of cached tokens.",
                stats.prefix_hits,
            )
        yield counter(
            "vllm:num_preemptions", "Cumulative number of preemptions.", stats.preemptions
        )
        yield counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens
        )
        yield counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            stats.generation_tokens,
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*self._names, "finished_reason"],
        )
        for reason in ("stop", "length", *sorted(set(stats.finished) - {"stop", "length"})):
            success.add_metric([*self._values, reason], stats.finished.get(reason, 0))
        yield success
        lora = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
        )
        lora.add_metric(
            [
                str(params.max_lora),
                ",".join(engine.running_loras()),
                ",".join(engine.waiting_loras()),
            ],
            time.time(),
        )
        yield lora
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=["block_size", "num_gpu_blocks", "enable_prefix_caching", "engine"],
        )
        info.add_metric([str(params.block_size), str(params.num_gpu_blocks), "True", "0"], 1.0)
        yield info

    def _sglang(self):
        engine = self._replica.engine
        params = self._replica.params
        stats = engine.stats
        gauge, counter = self._gauge, self._counter
        yield gauge(
            "sglang:num_running_reqs", "The number of running requests.", len(engine.running)
        )
        yield gauge(
            "sglang:num_queue_reqs",
            "The number of requests in the waiting queue.",
            len(engine.waiting),
        )
        yield gauge("sglang:token_usage", "The token usage.", engine.cache.usage)
        hit_rate = stats.prefix_hits / stats.prefix_queries if stats.prefix_queries else 0.0
        yield gauge("sglang:cache_hit_rate", "The prefix cache hit rate.", hit_rate)
        yield counter(
            "sglang:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens
        )
        yield counter(
            "sglang:generation_tokens",
            "Number of generation tokens processed.",
            stats.generation_tokens,
        )
        yield counter(
            "sglang:num_requests", "The number of processed requests.", sum(stats.finished.values())
        )
        info = GaugeMetricFamily(
            "sglang:cache_config_info", "Cache configuration.", labels=["page_size", "num_pages"]
        )
        info.add_metric([str(params.block_size), str(params.num_gpu_blocks)], 1.0)
        yield info

    def _trtllm(self):
        engine = self._replica.engine
        params = self._replica.params
        gauge = self._gauge
        yield gauge("trtllm_num_requests_waiting", "Requests waiting.", len(engine.waiting))
        yield gauge("trtllm_num_requests_running", "Requests running.", len(engine.running))
        yield gauge(
            "trtllm_kv_cache_utilization", "KV-cache utilization (0..1).", engine.cache.usage
        )
        yield gauge(
            "trtllm_kv_cache_tokens_per_block", "Tokens per KV-cache block.", params.block_size
        )
        yield gauge(
            "trtllm_kv_cache_max_blocks", "KV-cache capacity in blocks.", params.num_gpu_blocks
        )


# Latency/size histograms by name without the engine prefix -> help text.
_HISTOGRAMS = {
    "time_to_first_token_seconds": "Histogram of time to first token in seconds.",
    "time_per_output_token_seconds": "Histogram of time per output token in seconds.",
    "inter_token_latency_seconds": "Histogram of inter-token latency in seconds.",
    "e2e_request_latency_seconds": "Histogram of end to end request latency in seconds.",
    "request_queue_time_seconds": "Histogram of time spent in WAITING phase for request.",
    "request_prefill_time_seconds": "Histogram of time spent in PREFILL phase for request.",
    "request_decode_time_seconds": "Histogram of time spent in DECODE phase for request.",
    "request_inference_time_seconds": "Histogram of time spent in RUNNING phase for request.",
    "request_prompt_tokens": "Number of prefill tokens processed.",
    "request_generation_tokens": "Number of generation tokens processed.",
}
_SGLANG_HISTOGRAMS = (
    "time_to_first_token_seconds",
    "inter_token_latency_seconds",
    "e2e_request_latency_seconds",
)


def _buckets(name: str, max_model_len: int) -> tuple[float, ...]:
    if name.endswith("_tokens"):
        return tokens_buckets(max_model_len)
    if name.startswith("time_to_first"):
        return TTFT_BUCKETS
    if "output_token" in name or "inter_token" in name:
        return TPOT_BUCKETS
    return E2E_BUCKETS


class ReplicaMetrics:
    """One registry per replica (several replicas share a process)."""

    def __init__(self, replica: SimReplica) -> None:
        self._replica = replica
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineCollector(replica))
        labels = ("model_name", "engine")
        values = (replica.models[0], "0")
        if replica.engine_type == "vllm":
            prefix, names = "vllm:", tuple(_HISTOGRAMS)
        elif replica.engine_type == "sglang":
            prefix, names = "sglang:", _SGLANG_HISTOGRAMS
        else:
            prefix, names = "", ()
        max_len = replica.params.max_model_len
        # Children bound to the label values once: observing is then one call each.
        self._hist = {
            name: Histogram(
                prefix + name,
                _HISTOGRAMS[name],
                labels,
                registry=self.registry,
                buckets=_buckets(name, max_len),
            ).labels(*values)
            for name in names
        }

    def observe_finished(self, seq: Seq) -> None:
        """Record a finished request's latencies (model ms -> wall-equivalent seconds).

        Inter-token latency is observed once per request, as its mean gap (every gap is a
        whole engine step; per-token observations would cost a loop per token).
        """
        hist = self._hist
        if not hist:
            return
        scale = 1.0 / (1000.0 * self._replica.speed)
        arrival = seq.arrival
        first = seq.first_token_at if seq.first_token_at is not None else arrival
        end = seq.finished_at if seq.finished_at is not None else first
        scheduled = seq.scheduled_at if seq.scheduled_at is not None else arrival
        values = {
            "time_to_first_token_seconds": (first - arrival) * scale,
            "e2e_request_latency_seconds": (end - arrival) * scale,
            "request_queue_time_seconds": (scheduled - arrival) * scale,
            "request_prefill_time_seconds": (first - scheduled) * scale,
            "request_decode_time_seconds": (end - first) * scale,
            "request_inference_time_seconds": (end - scheduled) * scale,
            "request_prompt_tokens": seq.prompt_tokens,
            "request_generation_tokens": seq.output,
        }
        if seq.output > 1:
            per_token = (end - first) * scale / (seq.output - 1)
            values["time_per_output_token_seconds"] = per_token
            values["inter_token_latency_seconds"] = per_token
        for name, value in values.items():
            child = hist.get(name)
            if child is not None:
                child.observe(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)
