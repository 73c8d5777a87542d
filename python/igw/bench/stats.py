"""Statistics for one bench run: per-request samples in, one summary row out.

Kept free of I/O so the numbers can be checked on known inputs. Percentiles use numpy's
default linear interpolation; a metric with no samples is ``None`` (printed as "-"), never
0, so an all-failed run cannot look fast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np


@dataclasses.dataclass(slots=True)
class Sample:
    """What the client saw for one request (times in seconds)."""

    index: int
    ok: bool
    sent_at: float = 0.0  # offset from the run start
    ttft: float | None = None
    e2e: float | None = None
    itls: list[float] = dataclasses.field(default_factory=list)  # gaps between content chunks
    output_tokens: int = 0
    prompt_tokens: int = 0
    bytes_in: int = 0
    status: int = 0
    error: str = ""
    served_by: str | None = None  # from a response header, when the router sets one


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) or None for no values."""
    if not len(values):
        return None
    return float(np.percentile(np.asarray(values, dtype=float), q))


def hot_spot_factor(counts: Mapping[str, float]) -> float | None:
    """workers × max share: 1.0 is a perfectly even split, N means one worker got it all."""
    total = float(sum(counts.values()))
    if not counts or total <= 0:
        return None
    return len(counts) * max(counts.values()) / total


def hit_rate(hits: float, queries: float) -> float | None:
    """Prefix-cache hit rate from counter deltas summed over replicas."""
    return hits / queries if queries > 0 else None


def summarize(
    name: str,
    samples: Sequence[Sample],
    wall_seconds: float,
    per_replica: Mapping[str, float] | None = None,
    cache_hits: float = 0.0,
    cache_queries: float = 0.0,
) -> dict[str, float | int | str | None]:
    """One table row. Latencies in milliseconds; throughput over the run's wall time.

    ``per_replica`` is requests served per replica (metric deltas, or header counts when the
    fleet has no metrics); it gives the hot-spot factor.
    """
    ok = [s for s in samples if s.ok]
    ttft = [s.ttft * 1e3 for s in ok if s.ttft is not None]
    e2e = [s.e2e * 1e3 for s in ok if s.e2e is not None]
    itl = [g * 1e3 for s in ok for g in s.itls]
    out_tokens = sum(s.output_tokens for s in ok)
    wall = max(wall_seconds, 1e-9)
    return {
        "policy": name,
        "requests": len(samples),
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p90_ms": percentile(ttft, 90),
        "ttft_p99_ms": percentile(ttft, 99),
        "itl_p50_ms": percentile(itl, 50),
        "e2e_p50_ms": percentile(e2e, 50),
        "e2e_p90_ms": percentile(e2e, 90),
        "throughput_rps": len(ok) / wall,
        "output_tok_s": out_tokens / wall,
        "cache_hit_rate": hit_rate(cache_hits, cache_queries),
        "errors": len(samples) - len(ok),
        "hot_spot": hot_spot_factor(per_replica or {}),
        "bytes_in": sum(s.bytes_in for s in samples),
        "wall_s": wall_seconds,
    }


# (key, header, format) for the printed table
COLUMNS: list[tuple[str, str, str]] = [
    ("policy", "policy", "{}"),
    ("ttft_p50_ms", "TTFT p50", "{:.0f}"),
    ("ttft_p90_ms", "TTFT p90", "{:.0f}"),
    ("ttft_p99_ms", "TTFT p99", "{:.0f}"),
    ("itl_p50_ms", "ITL p50", "{:.1f}"),
    ("e2e_p50_ms", "E2E p50", "{:.0f}"),
    ("e2e_p90_ms", "E2E p90", "{:.0f}"),
    ("throughput_rps", "req/s", "{:.2f}"),
    ("output_tok_s", "out tok/s", "{:.0f}"),
    ("cache_hit_rate", "hit rate", "{:.1%}"),
    ("errors", "errors", "{}"),
    ("hot_spot", "hot-spot", "{:.2f}"),
]


def format_table(rows: Sequence[Mapping[str, object]], markdown: bool = False) -> str:
    """Rows as an aligned text table (latencies in ms), or as a Markdown table."""
    head = [h + (" (ms)" if k.endswith("_ms") and markdown else "") for k, h, _ in COLUMNS]
    body = [
        [("-" if row.get(k) is None else fmt.format(row[k])) for k, _, fmt in COLUMNS]
        for row in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
    fmt_row = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt_row.format(*head), fmt_row.format(*("-" * w for w in widths))]
    lines += [fmt_row.format(*r) for r in body]
    return "\n".join(lines)
