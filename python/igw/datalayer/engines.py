"""Which metric names each model-server engine exposes, and how to read them off a page.

The engine of an endpoint comes from its label ``llm-d.ai/engine-type`` (default ``vllm``),
as in the reference picker (REFERENCE.md Part 1 section 5.1). Each engine is described as
data (an ``EngineSpec``); ``extract`` turns a scanned page into a ``Scraped`` record.

Differences from the reference, on purpose:
* When several series of a family match (data-parallel engines label each rank, Triton
  labels each model), queue and running counts are summed and KV utilization averaged, so
  the figure describes the whole server; the reference takes one series.
* Triton's plain backend has no KV-cache figure; its utilization is reported as 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from igw.datalayer.promtext import (
    MetricsParseError,
    Sample,
    family,
    has_labels,
    is_finite,
    parse_labels,
)

ENGINE_LABEL = "llm-d.ai/engine-type"
DEFAULT_ENGINE = "vllm"

Labels = tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Series:
    """A metric family, optionally narrowed to series carrying given label values."""

    name: bytes
    labels: Labels = ()


@dataclasses.dataclass(slots=True)
class Scraped:
    """One endpoint's figures from one page; ``None`` = not on the page (keep the old one)."""

    waiting: int
    running: int
    kv_util: float
    block_size: int | None = None
    num_blocks: int | None = None
    max_lora: int | None = None
    lora_running: list[str] | None = None
    lora_waiting: list[str] | None = None


class Page(dict[bytes, list[Sample]]):
    """A page whose families are scanned on first use (an absent one costs a full pass, so
    fallbacks such as vLLM's old KV name are only looked for when needed)."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        super().__init__()
        self.raw = raw

    def __missing__(self, name: bytes) -> list[Sample]:
        samples = family(self.raw, name)
        self[name] = samples
        return samples


CacheReader = Callable[[Page], tuple[int | None, int | None]]


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """Where one engine keeps each figure. Alternatives are tried in order."""

    name: str
    waiting: tuple[Series, ...]
    running: tuple[Series, ...]
    kv_util: tuple[Series, ...]  # empty: the engine has no KV figure (reported as 0)
    cache: CacheReader | None = None
    cache_families: tuple[bytes, ...] = ()
    lora_family: bytes | None = None
    families: frozenset[bytes] = frozenset()

    def __post_init__(self) -> None:
        names = {s.name for s in (*self.waiting, *self.running, *self.kv_util)}
        names.update(self.cache_families)
        if self.lora_family:
            names.add(self.lora_family)
        object.__setattr__(self, "families", frozenset(names))


def custom_engine(
    name: str,
    *,
    waiting: str,
    running: str,
    kv_util: str | None = None,
    labels: dict[str, str] | None = None,
) -> EngineSpec:
    """An engine spec from plain metric names, for servers igw does not know (e.g. a
    vLLM fork with renamed gauges). ``labels`` narrows every family to matching series."""
    for field, value in (("name", name), ("waiting", waiting), ("running", running)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"custom engine {field} must be a non-empty string, got {value!r}")
    wanted: Labels = tuple(sorted((labels or {}).items()))
    return EngineSpec(
        name=name,
        waiting=(Series(waiting.encode(), wanted),),
        running=(Series(running.encode(), wanted),),
        kv_util=(Series(kv_util.encode(), wanted),) if kv_util else (),
    )


def _int_label(labels: dict[str, str], key: str) -> int | None:
    text = labels.get(key, "")
    try:
        value = int(float(text))
    except ValueError:
        return None  # e.g. num_gpu_blocks="None" before the engine has profiled memory
    return value if value > 0 else None


def _info_labels(family: bytes, size_key: str, count_key: str) -> CacheReader:
    """Cache geometry from an ``*_info`` gauge whose labels carry the numbers."""

    def read(found: Page) -> tuple[int | None, int | None]:
        samples = found[family]
        if not samples:
            return None, None
        labels = parse_labels(samples[-1][0])
        return _int_label(labels, size_key), _int_label(labels, count_key)

    return read


def _gauges(size: Series, count: Series) -> CacheReader:
    """Cache geometry from two plain gauges (TensorRT-LLM)."""

    def read(found: Page) -> tuple[int | None, int | None]:
        size_value = _pick(found, (size,))
        count_value = _pick(found, (count,))
        return _positive(size_value), _positive(count_value)

    return read


def _positive(value: float | None) -> int | None:
    if value is None or not is_finite(value) or value <= 0:
        return None
    return int(value)


_TRITON_TRT_KV = b"nv_trt_llm_kv_cache_block_metrics"
_TRITON_TRT_REQ = b"nv_trt_llm_request_metrics"

ENGINES: dict[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec(
            name="vllm",
            waiting=(Series(b"vllm:num_requests_waiting"),),
            running=(Series(b"vllm:num_requests_running"),),
            kv_util=(Series(b"vllm:kv_cache_usage_perc"), Series(b"vllm:gpu_cache_usage_perc")),
            cache=_info_labels(b"vllm:cache_config_info", "block_size", "num_gpu_blocks"),
            cache_families=(b"vllm:cache_config_info",),
            lora_family=b"vllm:lora_requests_info",
        ),
        EngineSpec(
            name="sglang",
            waiting=(Series(b"sglang:num_queue_reqs"),),
            running=(Series(b"sglang:num_running_reqs"),),
            kv_util=(Series(b"sglang:token_usage"),),
            cache=_info_labels(b"sglang:cache_config_info", "page_size", "num_pages"),
            cache_families=(b"sglang:cache_config_info",),
        ),
        EngineSpec(
            name="trtllm-serve",
            waiting=(Series(b"trtllm_num_requests_waiting"),),
            running=(Series(b"trtllm_num_requests_running"),),
            kv_util=(Series(b"trtllm_kv_cache_utilization"),),
            cache=_gauges(
                Series(b"trtllm_kv_cache_tokens_per_block"), Series(b"trtllm_kv_cache_max_blocks")
            ),
            cache_families=(b"trtllm_kv_cache_tokens_per_block", b"trtllm_kv_cache_max_blocks"),
        ),
        EngineSpec(
            name="triton-tensorrt-llm",
            waiting=(Series(_TRITON_TRT_REQ, (("request_type", "waiting"),)),),
            running=(Series(_TRITON_TRT_REQ, (("request_type", "scheduled"),)),),
            kv_util=(Series(_TRITON_TRT_KV, (("kv_cache_block_type", "fraction"),)),),
            cache=_gauges(
                Series(_TRITON_TRT_KV, (("kv_cache_block_type", "tokens_per"),)),
                Series(_TRITON_TRT_KV, (("kv_cache_block_type", "max"),)),
            ),
            cache_families=(_TRITON_TRT_KV,),
        ),
        EngineSpec(
            name="triton",
            waiting=(Series(b"nv_inference_pending_request_count"),),
            running=(Series(b"nv_inference_exec_count"),),
            kv_util=(),
        ),
    )
}


def engine_of(labels: dict[str, str], default: str = DEFAULT_ENGINE) -> str:
    """The engine named by an endpoint's labels, else ``default``."""
    return labels.get(ENGINE_LABEL) or default


def _matching(found: Page, series: Series) -> list[float]:
    samples = found[series.name]
    if not samples:
        return []
    if not series.labels:
        return [value for _, value in samples]
    return [value for raw, value in samples if has_labels(raw, series.labels)]


def _pick(found: Page, options: tuple[Series, ...]) -> float | None:
    """Sum of the first alternative that has matching samples (None when none has)."""
    for series in options:
        values = _matching(found, series)
        if values:
            return sum(values)
    return None


def _mean(found: Page, options: tuple[Series, ...]) -> float | None:
    for series in options:
        values = _matching(found, series)
        if values:
            return sum(values) / len(values)
    return None


def _count(spec: EngineSpec, what: str, value: float | None) -> int:
    if value is None:
        names = " or ".join(s.name.decode() for s in getattr(spec, what))
        raise MetricsParseError(f"{spec.name} page has no {names} sample")
    if not is_finite(value) or value < 0:
        raise MetricsParseError(f"{spec.name} {what} is {value}; expected a count >= 0")
    return round(value)


def _adapters(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _lora(samples: list[Sample]) -> tuple[int | None, list[str], list[str]]:
    """vLLM emits one ``lora_requests_info`` series per change, valued with its timestamp.

    Take the newest series that names any adapter (an all-empty series is written when the
    server goes idle, but the adapters it had loaded stay loaded, as the reference assumes);
    if none names one, take the newest. ``max_lora`` comes from the chosen series.
    """
    best: tuple[float, dict[str, str]] | None = None
    best_named: tuple[float, dict[str, str]] | None = None
    for raw, value in samples:
        if not is_finite(value):
            continue
        labels = parse_labels(raw)
        if best is None or value >= best[0]:
            best = (value, labels)
        named = labels.get("running_lora_adapters") or labels.get("waiting_lora_adapters")
        if named and (best_named is None or value >= best_named[0]):
            best_named = (value, labels)
    chosen = best_named or best
    if chosen is None:
        return None, [], []
    labels = chosen[1]
    return (
        _int_label(labels, "max_lora"),
        _adapters(labels.get("running_lora_adapters", "")),
        _adapters(labels.get("waiting_lora_adapters", "")),
    )


def extract(spec: EngineSpec, page: bytes) -> Scraped:
    """Read one engine's figures from a page. Raises ``MetricsParseError`` when a wanted
    line is malformed or a required figure (waiting, running, KV when the engine has one)
    is missing, so the caller keeps the previous values."""
    found = Page(page)
    waiting = _count(spec, "waiting", _pick(found, spec.waiting))
    running = _count(spec, "running", _pick(found, spec.running))
    kv_util = 0.0
    if spec.kv_util:
        kv = _mean(found, spec.kv_util)
        if kv is None:
            names = " or ".join(s.name.decode() for s in spec.kv_util)
            raise MetricsParseError(f"{spec.name} page has no {names} sample")
        if not is_finite(kv) or kv < -1e-6 or kv > 1 + 1e-6:
            raise MetricsParseError(
                f"{spec.name} KV-cache utilization is {kv}; expected a fraction within 0..1"
            )
        kv_util = min(1.0, max(0.0, kv))
    scraped = Scraped(waiting=waiting, running=running, kv_util=kv_util)
    if spec.cache is not None:
        scraped.block_size, scraped.num_blocks = spec.cache(found)
    if spec.lora_family is not None:
        samples = found[spec.lora_family]
        if samples:
            scraped.max_lora, scraped.lora_running, scraped.lora_waiting = _lora(samples)
    return scraped
