"""A replica's ``/metrics``: Prometheus text with vLLM's metric names and labels.

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

    def describe(self):  # no fixed description: keeps registration from calling collect()
        return []

    def collect(self):
        replica = self._replica
        engine = replica.engine
        params = replica.params
        stats = engine.stats
        names = ["model_name", "engine"]
        values = [replica.models[0], "0"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=names)
            family.add_metric(values, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=names)
            family.add_metric(values, value)
            return family

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
        yield counter(
            "igw_sim_engine_lag_seconds",
            "Wall seconds the simulated engine fell behind its latency model (CPU starved) "
            "and skipped; non-zero means latencies are longer than the model's.",
            replica.lag_s,
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*names, "finished_reason"],
        )
        for reason in ("stop", "length", *sorted(set(stats.finished) - {"stop", "length"})):
            success.add_metric([*values, reason], stats.finished.get(reason, 0))
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


class ReplicaMetrics:
    """One registry per replica (several replicas share a process)."""

    def __init__(self, replica: SimReplica) -> None:
        self._replica = replica
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineCollector(replica))
        labels = ["model_name", "engine"]
        self._labels = (replica.models[0], "0")

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

        self.ttft = hist(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        )
        self.tpot = hist(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            TPOT_BUCKETS,
        )
        self.itl = hist(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            TPOT_BUCKETS,
        )
        self.e2e = hist(
            "vllm:e2e_request_latency_seconds",
            "Histogram of end to end request latency in seconds.",
            E2E_BUCKETS,
        )
        self.queue = hist(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            E2E_BUCKETS,
        )

        phases = (
            ("prefill", "Histogram of time spent in PREFILL phase for request."),
            ("decode", "Histogram of time spent in DECODE phase for request."),
            ("inference", "Histogram of time spent in RUNNING phase for request."),
        )
        self.phase = {
            name: hist(f"vllm:request_{name}_time_seconds", doc, E2E_BUCKETS)
            for name, doc in phases
        }
        token_buckets = tokens_buckets(replica.params.max_model_len)
        self.prompt_tokens = hist(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets
        )
        self.generation_tokens = hist(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            token_buckets,
        )

    def observe_finished(self, seq: Seq) -> None:
        """Record a finished request's latencies (model ms -> wall-equivalent seconds).

        Inter-token latency is observed once per request, as its mean gap (every gap is a
        whole engine step; per-token observations would cost a loop per token).
        """
        scale = 1.0 / (1000.0 * self._replica.speed)
        labels = self._labels
        arrival = seq.arrival
        first = seq.first_token_at if seq.first_token_at is not None else arrival
        end = seq.finished_at if seq.finished_at is not None else first
        scheduled = seq.scheduled_at if seq.scheduled_at is not None else arrival
        self.ttft.labels(*labels).observe((first - arrival) * scale)
        self.e2e.labels(*labels).observe((end - arrival) * scale)
        self.queue.labels(*labels).observe((scheduled - arrival) * scale)
        self.phase["prefill"].labels(*labels).observe((first - scheduled) * scale)
        self.phase["decode"].labels(*labels).observe((end - first) * scale)
        self.phase["inference"].labels(*labels).observe((end - scheduled) * scale)
        self.prompt_tokens.labels(*labels).observe(seq.prompt_tokens)
        self.generation_tokens.labels(*labels).observe(seq.output)
        if seq.output > 1:
            per_token = (end - first) * scale / (seq.output - 1)
            self.tpot.labels(*labels).observe(per_token)
            self.itl.labels(*labels).observe(per_token)

    def render(self) -> bytes:
        return generate_latest(self.registry)
