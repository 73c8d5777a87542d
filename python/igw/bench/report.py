"""Outputs of a bench run: the JSON document for machines and the PNG chart for people."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_json(path: str, meta: dict[str, Any], results: Sequence[dict[str, Any]]) -> None:
    doc = {"meta": meta, "results": list(results)}
    Path(path).write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: str) -> dict[str, Any]:
    """A document written by ``write_json``, checked for the fields ``show`` needs."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read bench JSON ({exc})") from None
    if not isinstance(doc, dict) or "meta" not in doc or "results" not in doc:
        raise ValueError(f"{path}: not an igw bench result (expected 'meta' and 'results')")
    return doc


def markdown_section(doc: dict[str, Any]) -> str:
    """The run's title, command and table as Markdown (what docs/benchmarks.md shows)."""
    from igw.bench.stats import format_table

    meta = doc["meta"]
    rows = [r["summary"] for r in doc["results"]]
    lines = [meta.get("title", ""), "", "```", shlex.join(meta.get("argv", [])), "```", ""]
    lines.append(format_table(rows, markdown=True))
    shares = []
    for res in doc["results"]:
        served = res.get("per_replica_requests") or {}
        total = sum(served.values()) or 1
        split = " ".join(f"{k}={v / total:.0%}" for k, v in sorted(served.items()))
        shares.append(f"- {res['summary']['policy']}: {split}")
    lines += ["", "Requests per replica:", *shares]
    return "\n".join(lines)


def write_chart(path: str, title: str, results: Sequence[dict[str, Any]]) -> None:
    """TTFT CDF per policy (left) and E2E boxplots per policy (right).

    matplotlib is an optional extra (``igw[bench]``); without it this raises a RuntimeError
    that says how to get it, rather than failing the whole run at import time.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        raise RuntimeError(
            "--chart needs matplotlib: pip install 'igw[bench]' (or pip install matplotlib)"
        ) from None
    fig, (ax_cdf, ax_box) = plt.subplots(1, 2, figsize=(13, 5))
    labels, e2e_sets = [], []
    for res in results:
        label = res["summary"]["policy"]
        ttft = np.sort([v for v in res["samples"]["ttft_ms"] if v is not None])
        if len(ttft):
            ax_cdf.plot(ttft, np.arange(1, len(ttft) + 1) / len(ttft), label=label)
        e2e = [v for v in res["samples"]["e2e_ms"] if v is not None]
        labels.append(label)
        e2e_sets.append(e2e or [float("nan")])
    ax_cdf.set_xscale("log")
    ax_cdf.set_xlabel("time to first token (ms, log)")
    ax_cdf.set_ylabel("fraction of requests")
    ax_cdf.set_title("TTFT CDF")
    ax_cdf.grid(True, which="both", alpha=0.3)
    ax_cdf.legend(fontsize=8)
    ax_box.boxplot(e2e_sets, showfliers=False)
    ax_box.set_xticks(range(1, len(labels) + 1), labels, rotation=30, ha="right", fontsize=8)
    ax_box.set_ylabel("end-to-end latency (ms)")
    ax_box.set_title("E2E per policy (no outliers)")
    ax_box.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
