"""The strictest staleness threshold among the readers of a pool's endpoint table.

Calm scraping (``DataLayer.calm_cap``) must stay well inside every reader's threshold: a
saturation detector counts an endpoint whose row is older than its
``metricsStalenessThreshold`` as full (flow control fails closed). The detectors live in
the pipeline's flow-control stage and in the ``FlowControl`` controller, in a few shapes;
``strictest_staleness`` finds their thresholds so the wiring can pass them on with
``DataLayer.require_fresh`` without knowing those shapes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

# Attributes under which a reader keeps the detectors it consults (stage -> detector,
# stage -> controller, FlowControl -> per_pool plans and built controllers, the per-pool
# legacy detectors -> detectors, a pipeline -> stages).
_HOLDERS = ("detector", "controller", "per_pool", "controllers", "detectors", "stages")
_DEPTH = 5


def _thresholds(obj: Any, depth: int, seen: set[int]) -> Iterator[float]:
    if obj is None or depth > _DEPTH or id(obj) in seen or isinstance(obj, (str, bytes)):
        return
    seen.add(id(obj))
    staleness = getattr(obj, "staleness", None)
    if isinstance(staleness, (int, float)) and math.isfinite(staleness) and staleness > 0:
        yield float(staleness)
    if isinstance(obj, Mapping):
        children: Any = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = obj
    else:
        children = [getattr(obj, name, None) for name in _HOLDERS]
    for child in children:
        yield from _thresholds(child, depth + 1, seen)


def strictest_staleness(*readers: Any) -> float | None:
    """The smallest ``staleness`` (seconds) of any detector reachable from ``readers`` (a
    pipeline, a ``FlowControl``, a stage, a detector), or None when none has one."""
    seen: set[int] = set()
    found = [t for reader in readers for t in _thresholds(reader, 0, seen)]
    return min(found) if found else None
