"""A replica's ``/metrics``: Prometheus text with vLLM's metric names and labels.

``engine_type`` switches the names to another server's (``sglang``, ``trtllm-serve``; the
names the endpoint pickers scrape, REFERENCE.md 5.1) so every metrics extractor of the
gateway can be exercised against the same simulated engine.

Gauges and counters are read from the engine when scraped, so the request path pays
nothing for them; latency histograms are observed when a request finishes. Latencies are
reported in wall-clock seconds as the simulated GPU would show them at this ``--speed``
(model time / speed), i.e. what a client of the simulator measures. Names and bucket bounds
follow vLLM's V1 ``loggers.py``; both ``kv_cache_usage_perc`` and the older
``gpu_cache_usage_perc`` (and ``gpu_prefix_cache_*``) are exported, since pickers in the
field read either.

Why the text is written here rather than by ``prometheus_client``: a gateway scrapes every
replica every 50 ms, and ``generate_latest`` took 3.5-7 ms for this page (ten histograms,
~250 sample lines, each through regex escaping) - with 4 replicas that is half a core of
the simulator's 2-core machine spent on scrapes, which skews the very benchmarks the
simulator exists for. Label values are escaped once and bucket lines pre-rendered, so a
scrape costs tens of microseconds. The format is the plain text exposition format 0.0.4.
"""

from __future__ import annotations

import bisect
import math
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from igw.sim.model import Seq
    from igw.sim.replica import SimReplica

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENGINE_TYPES = ("vllm", "sglang", "trtllm-serve")

# fmt: off
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
# fmt: on

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


def _buckets(name: str, max_model_len: int) -> tuple[float, ...]:
    if name.endswith("_tokens"):
        return tokens_buckets(max_model_len)
    if name.startswith("time_to_first"):
        return TTFT_BUCKETS
    if "output_token" in name or "inter_token" in name:
        return TPOT_BUCKETS
    return E2E_BUCKETS


def _num(value: float) -> str:
    """A sample value as Prometheus text (Go's float formatting for the special values)."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    return repr(float(value))


def escape(value: str) -> str:
    """A label value escaped for the text format (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: dict[str, str]) -> str:
    return ",".join(f'{k}="{escape(v)}"' for k, v in sorted(pairs.items()))


class _Histogram:
    """A fixed-bucket histogram whose exposition lines are pre-rendered but for the numbers."""

    __slots__ = (
        "_bucket_heads",
        "_count_head",
        "_counts",
        "_header",
        "_sum_head",
        "bounds",
        "count",
        "total",
    )

    def __init__(self, name: str, doc: str, labels: str, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # per bucket, the last one is +Inf
        self.count = 0
        self.total = 0.0
        self._header = f"# HELP {name} {doc}\n# TYPE {name} histogram\n"
        les = [*(_num(b) for b in bounds), "+Inf"]
        self._bucket_heads = [f'{name}_bucket{{{labels},le="{le}"}} ' for le in les]
        self._count_head = f"{name}_count{{{labels}}} "
        self._sum_head = f"{name}_sum{{{labels}}} "

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += 1  # le: value <= bound
        self.count += 1
        self.total += value

    def render(self, out: list[str]) -> None:
        out.append(self._header)
        running = 0
        for head, n in zip(self._bucket_heads, self._counts, strict=True):
            running += n
            out.append(f"{head}{running}.0\n")
        out.append(f"{self._count_head}{self.count}.0\n{self._sum_head}{_num(self.total)}\n")


class ReplicaMetrics:
    """The ``/metrics`` page of one replica (several replicas share a process)."""

    def __init__(self, replica: SimReplica) -> None:
        self._replica = replica
        self._common = _labels({"model_name": replica.models[0], "engine": "0"})
        if replica.engine_type == "vllm":
            prefix, names = "vllm:", tuple(_HISTOGRAMS)
        elif replica.engine_type == "sglang":
            prefix, names = "sglang:", _SGLANG_HISTOGRAMS
        else:
            prefix, names = "", ()
        max_len = replica.params.max_model_len
        self.histograms = {
            name: _Histogram(
                prefix + name, _HISTOGRAMS[name], self._common, _buckets(name, max_len)
            )
            for name in names
        }

    def observe_finished(self, seq: Seq) -> None:
        """Record a finished request's latencies (model ms -> wall-equivalent seconds).

        Inter-token latency is observed once per request, as its mean gap (every gap is a
        whole engine step; per-token observations would cost a loop per token).
        """
        hist = self.histograms
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
            h = hist.get(name)
            if h is not None:
                h.observe(value)

    # ------------------------------------------------------------------------- rendering

    def render(self) -> bytes:
        out: list[str] = []
        self._counter(
            out,
            "igw_sim_engine_lag_seconds",
            "Wall seconds the simulated engine fell behind its latency model (CPU starved) "
            "and skipped; non-zero means latencies are longer than the model's.",
            self._replica.lag_s,
        )
        kind = self._replica.engine_type
        if kind == "sglang":
            self._sglang(out)
        elif kind == "trtllm-serve":
            self._trtllm(out)
        else:
            self._vllm(out)
        for h in self.histograms.values():
            h.render(out)
        return "".join(out).encode()

    def _gauge(self, out: list[str], name: str, doc: str, value: float, labels: str = "") -> None:
        out.append(
            f"# HELP {name} {doc}\n# TYPE {name} gauge\n"
            f"{name}{{{labels or self._common}}} {_num(value)}\n"
        )

    def _counter(self, out: list[str], name: str, doc: str, value: float) -> None:
        out.append(
            f"# HELP {name}_total {doc}\n# TYPE {name}_total counter\n"
            f"{name}_total{{{self._common}}} {_num(value)}\n"
        )

    def _vllm(self, out: list[str]) -> None:
        engine = self._replica.engine
        params = self._replica.params
        stats = engine.stats
        usage = engine.cache.usage
        self._gauge(
            out,
            "vllm:num_requests_running",
            "Requests in model execution batches.",
            len(engine.running),
        )
        self._gauge(
            out,
            "vllm:num_requests_waiting",
            "Requests waiting to be processed.",
            len(engine.waiting),
        )
        self._gauge(
            out, "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", usage
        )
        self._gauge(out, "vllm:gpu_cache_usage_perc", "GPU KV-cache usage (older name).", usage)
        for prefix in ("vllm:", "vllm:gpu_"):
            self._counter(
                out,
                prefix + "prefix_cache_queries",
                "Prefix cache queries, in terms of number of queried tokens.",
                stats.prefix_queries,
            )
            self._counter(
                out,
                prefix + "prefix_cache_hits",
                "Prefix cache hits, in terms of number of cached tokens.",
                stats.prefix_hits,
            )
        self._counter(
            out, "vllm:num_preemptions", "Cumulative number of preemptions.", stats.preemptions
        )
        self._counter(
            out, "vllm:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens
        )
        self._counter(
            out,
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            stats.generation_tokens,
        )
        name = "vllm:request_success_total"
        out.append(
            f"# HELP {name} Count of successfully processed requests.\n# TYPE {name} counter\n"
        )
        for reason in ("stop", "length", *sorted(set(stats.finished) - {"stop", "length"})):
            labels = f'{self._common},finished_reason="{escape(reason)}"'
            out.append(f"{name}{{{labels}}} {_num(stats.finished.get(reason, 0))}\n")
        lora = _labels(
            {
                "max_lora": str(params.max_lora),
                "running_lora_adapters": ",".join(engine.running_loras()),
                "waiting_lora_adapters": ",".join(engine.waiting_loras()),
            }
        )
        self._gauge(
            out, "vllm:lora_requests_info", "Running stats on lora requests.", time.time(), lora
        )
        cache = _labels(
            {
                "block_size": str(params.block_size),
                "num_gpu_blocks": str(params.num_gpu_blocks),
                "enable_prefix_caching": "True",
                "engine": "0",
            }
        )
        self._gauge(
            out, "vllm:cache_config_info", "Information of the LLMEngine CacheConfig", 1.0, cache
        )

    def _sglang(self, out: list[str]) -> None:
        engine = self._replica.engine
        params = self._replica.params
        stats = engine.stats
        self._gauge(
            out, "sglang:num_running_reqs", "The number of running requests.", len(engine.running)
        )
        self._gauge(
            out,
            "sglang:num_queue_reqs",
            "The number of requests in the waiting queue.",
            len(engine.waiting),
        )
        self._gauge(out, "sglang:token_usage", "The token usage.", engine.cache.usage)
        hit_rate = stats.prefix_hits / stats.prefix_queries if stats.prefix_queries else 0.0
        self._gauge(out, "sglang:cache_hit_rate", "The prefix cache hit rate.", hit_rate)
        self._counter(
            out, "sglang:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens
        )
        self._counter(
            out,
            "sglang:generation_tokens",
            "Number of generation tokens processed.",
            stats.generation_tokens,
        )
        self._counter(
            out,
            "sglang:num_requests",
            "The number of processed requests.",
            sum(stats.finished.values()),
        )
        cache = _labels(
            {"page_size": str(params.block_size), "num_pages": str(params.num_gpu_blocks)}
        )
        self._gauge(out, "sglang:cache_config_info", "Cache configuration.", 1.0, cache)

    def _trtllm(self, out: list[str]) -> None:
        engine = self._replica.engine
        params = self._replica.params
        self._gauge(out, "trtllm_num_requests_waiting", "Requests waiting.", len(engine.waiting))
        self._gauge(out, "trtllm_num_requests_running", "Requests running.", len(engine.running))
        self._gauge(
            out, "trtllm_kv_cache_utilization", "KV-cache utilization (0..1).", engine.cache.usage
        )
        self._gauge(
            out, "trtllm_kv_cache_tokens_per_block", "Tokens per KV-cache block.", params.block_size
        )
        self._gauge(
            out, "trtllm_kv_cache_max_blocks", "KV-cache capacity in blocks.", params.num_gpu_blocks
        )
