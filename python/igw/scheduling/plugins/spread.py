"""``new-prefix-spread-filter`` (igw): place a prefix nobody holds on the endpoints that hold
the fewest prefixes, so the fleet's prefixes (and the traffic each will pin) spread evenly.

Why: a cache-aware policy keeps a prefix on the endpoint that first prefilled it, so where a
*new* prefix lands decides where its future requests go. The cost model alone places it on
the endpoint with the least prefill work at that instant, which in a burst of new prefixes
(every group's first request at once) left one replica with five prefix groups and another
with three; that imbalance then lasts as long as the prefixes do. Measured with
``igw.scheduling.replay`` (bursty, seed 1: TTFT p90 114 -> 101 ms). sglang-router's
``cache_aware`` does the same with its smallest-tree rule, but load-blind and for every
request below its match threshold; here it only narrows the candidates and the cost model
still chooses among them by load. REFERENCE Part 2 §7 idea 8 (cold-start spreading).

A request is *new* when no endpoint holds more than ``newPrefixFraction`` of its blocks. Then
the candidates kept are those whose prefix-index size (blocks held) is within ``tolerance``
(relative) of the smallest; the default 0 keeps exactly the smallest (ties included). Measured
with a half-speed replica (replay, 12 runs): largest hot-spot 1.60 with 0.1, 1.46 with 0.
Sizes are not divided by the calibrated prefill rates, although a
faster replica could hold more: calibrated from first tokens that include step overheads and
queueing, the rates of identical replicas differ by 10-30%, and dividing by them placed 16
uniform groups 6/4/3/3 instead of 4/4/4/4 (replay, shared-prefix at 1.1 load, seed 0). A slow
replica is left to the cost model, which decides every request after the first of a prefix.
Requests with no prompt, or with a cached prefix, pass through.

It runs in the core (``_core.pyi``: ``Profile``, filter types), inside the pick that already
matches the prompt against the index: no snapshot, no second match, no Python call per
candidate. As a Python filter it cost one index match per request and one size lookup per
candidate for new prefixes, more than the whole core pick at thousands of endpoints
(bench/test_core_bench.py, predicted-ttft schedule + release at 1,000 endpoints: 22 us with
the filter in the core, as without it; 67 us warm and 311 us for new prefixes as Python).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from igw.scheduling.plugins.core_plugins import CoreFilter

TYPE = "new-prefix-spread-filter"


class SpreadParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    newPrefixFraction: float = Field(default=0.3, ge=0.0, le=1.0)
    tolerance: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)


def spread_filter_factory(name: str, params: SpreadParams) -> CoreFilter:
    return CoreFilter(
        name=name,
        type=TYPE,
        params={"newPrefixFraction": params.newPrefixFraction, "tolerance": params.tolerance},
    )
