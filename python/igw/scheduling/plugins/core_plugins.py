"""Built-in scorers, filters and pickers that run inside the core, with their strict
parameters.

Parameter names are the reference picker's (camelCase); each factory maps them onto the
core's ``Profile`` parameter names. Parameters igw accepts for compatibility but does not need
(e.g. the name of a data producer) are parsed and ignored.

Core filters (``CoreFilter``) reach the core the way core scorers do: the core ``Profile``
takes one ordered list of plugins and tells filters from scorers by type. The engine runs
Python filters before the core pick, so a profile's core filters can join its core plugins
only when no Python filter follows them (``lower_core_filters``); one that a Python filter
follows stays a filter of the engine and runs alone in the core (``Scheduler.filter``), so
the profile's filter order holds either way.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from igw.scheduling._backend import core_of
from igw.scheduling.framework import (
    PREFIX_ATTR,
    CorePicker,
    CoreScorer,
    PassivePlugin,
    PrefixSettings,
)

if TYPE_CHECKING:
    from igw.scheduling.profiles import BuiltProfile

BYTES_PER_TOKEN = 4  # the reference's tokenizer-free estimate
DEFAULT_BLOCK_TOKENS = 64
MIN_BLOCK_TOKENS = 64  # the reference clamps blockSizeTokens up to 64 (its issue #1158)
DEFAULT_MAX_BLOCKS = 2048
DEFAULT_MAX_TOKENS = 131072


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NoParams(Params):
    pass


class PrefixParams(Params):
    """prefix-cache-scorer (and approx-prefix-cache-producer) parameters.

    The scorer's own keys are ``matchLengthWeight`` / ``matchLengthScaleTokens``; the hashing
    keys belonged to the scorer in older configs and to the producer in newer ones, so both
    plugins accept them.
    """

    prefixMatchInfoProducerName: str | None = None
    matchLengthWeight: float = Field(default=0.0, ge=0.0, le=1.0)
    matchLengthScaleTokens: int = Field(default=8192, gt=0)
    autoTune: bool = True
    blockSizeTokens: int | None = Field(default=None, gt=0)
    blockSize: int | None = Field(default=None, gt=0, description="deprecated: characters")
    maxPrefixBlocksToMatch: int = Field(default=DEFAULT_MAX_BLOCKS, ge=0)
    maxPrefixTokensToMatch: int = Field(default=DEFAULT_MAX_TOKENS, ge=0)
    lruCapacityPerServer: int = Field(default=31250, gt=0)

    def prefix_settings(self) -> PrefixSettings:
        if self.blockSize is not None and self.blockSizeTokens is None:
            block_bytes = self.blockSize  # legacy: block size in characters of prompt text
            block_tokens = max(1, math.ceil(block_bytes / BYTES_PER_TOKEN))
        else:
            block_tokens = max(self.blockSizeTokens or DEFAULT_BLOCK_TOKENS, MIN_BLOCK_TOKENS)
            block_bytes = block_tokens * BYTES_PER_TOKEN
        if self.maxPrefixTokensToMatch > 0:
            max_blocks = max(1, self.maxPrefixTokensToMatch // block_tokens)
        else:
            max_blocks = self.maxPrefixBlocksToMatch  # 0 = unlimited
        return PrefixSettings(
            block_bytes=block_bytes, block_tokens=block_tokens, max_blocks=max_blocks
        )


class ActiveRequestParams(Params):
    requestTimeout: str | None = None
    idleThreshold: int = Field(default=0, ge=0)
    maxBusyScore: float = Field(default=1.0, ge=0.0, le=1.0)
    inFlightLoadProducerName: str | None = None


class TokenLoadParams(Params):
    queueThresholdTokens: int = Field(default=4194304, gt=0)
    inFlightLoadProducerName: str | None = None


class LoadAwareParams(Params):
    threshold: int = Field(default=128, gt=0)


class PredictedTtftParams(Params):
    """igw's cost model: predicted time to first token per endpoint (see ``_core.pyi``)."""

    defaultPrefillRate: float = Field(default=8000.0, gt=0)
    waitingTokens: float = Field(default=512.0, ge=0)
    # igw-only: prefill-token equivalent charged to an endpoint for each request it has in
    # flight (until release), so cache hits are not free: a hot prefix spills over to more
    # replicas as its holder's load grows instead of piling onto one (bounded-load affinity)
    inflightRequestTokens: int = Field(default=0, ge=0)
    # igw-only: > 0 charges hotRequestTokens instead of inflightRequestTokens to requests whose
    # prefix is hot (its share of recent requests times the number of endpoints exceeds this
    # factor), so a hot prefix is replicated and ordinary fluctuations of uniform traffic are
    # not; 0 turns the detection off (igw.scheduling.demand)
    hotPrefixFactor: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    hotRequestTokens: int = Field(default=0, ge=0)
    # igw-only: learn each endpoint's prefill rate from observed first tokens (else every
    # endpoint uses defaultPrefillRate)
    calibrate: bool = True
    # igw-only: > 0 holds a streamed request with at least this many uncached tokens at the
    # gateway while its endpoint has another such prefill that has not produced its first
    # token, so cache hits are not queued behind several long prefills (igw.scheduling.gate);
    # for at most prefillGateMaxWaitSeconds. 0 turns the gate off.
    prefillGateTokens: int = Field(default=0, ge=0)
    prefillGateMaxWaitSeconds: float = Field(default=10.0, gt=0, allow_inf_nan=False)

    @field_validator("defaultPrefillRate", "waitingTokens")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("expected a finite number")
        return value


class PickerParams(Params):
    maxNumOfEndpoints: int = Field(default=1, ge=1)


class ProducerParams(PrefixParams):
    pass


class AnyParams(BaseModel):
    """Plugins whose parameters another layer parses (data sources, detectors)."""

    model_config = ConfigDict(extra="allow")


def scorer_factory(core_type: str, mapper=None):
    """Factory for a core scorer; ``mapper(params) -> dict`` renames to core params."""

    def factory(name: str, params: Params) -> CoreScorer:
        return CoreScorer(name=name, type=core_type, params=mapper(params) if mapper else {})

    return factory


def _prefix_params(p: PrefixParams) -> dict[str, float]:
    return {
        "matchLengthWeight": p.matchLengthWeight,
        "scaleTokens": float(p.matchLengthScaleTokens),
    }


def _active_params(p: ActiveRequestParams) -> dict[str, float]:
    return {"idleThreshold": float(p.idleThreshold), "maxBusyScore": p.maxBusyScore}


def _token_params(p: TokenLoadParams) -> dict[str, float]:
    return {"queueThresholdTokens": float(p.queueThresholdTokens)}


def _load_params(p: LoadAwareParams) -> dict[str, float]:
    return {"queueThreshold": float(p.threshold)}


def _ttft_params(p: PredictedTtftParams) -> dict[str, float]:
    return {"defaultPrefillRate": p.defaultPrefillRate, "waitingTokens": p.waitingTokens}


def ttft_scorer_factory(name: str, params: PredictedTtftParams) -> CoreScorer:
    return CoreScorer(
        name=name,
        type="predicted-ttft-scorer",
        params=_ttft_params(params),
        request_tokens=params.inflightRequestTokens,
        calibrate=params.calibrate,
        hot_prefix_factor=params.hotPrefixFactor,
        hot_request_tokens=params.hotRequestTokens,
        prefill_gate_tokens=params.prefillGateTokens,
        prefill_gate_max_wait=params.prefillGateMaxWaitSeconds,
    )


def prefix_scorer_factory(name: str, params: PrefixParams) -> CoreScorer:
    return CoreScorer(
        name=name,
        type="prefix-cache-scorer",
        params=_prefix_params(params),
        prefix=params.prefix_settings(),
    )


def picker_factory(core_type: str):
    def factory(name: str, params: PickerParams) -> CorePicker:
        return CorePicker(name=name, type=core_type, max_endpoints=params.maxNumOfEndpoints)

    return factory


def producer_factory(name: str, params: ProducerParams) -> PassivePlugin:
    return PassivePlugin(name=name, type="approx-prefix-cache-producer", params=params)


def passive_factory(type_name: str):
    def factory(name: str, params) -> PassivePlugin:
        return PassivePlugin(name=name, type=type_name, params=params)

    return factory


CORE_SCORERS: dict[str, tuple[type[Params], object]] = {
    "queue-scorer": (NoParams, scorer_factory("queue-scorer")),
    "kv-cache-utilization-scorer": (NoParams, scorer_factory("kv-cache-utilization-scorer")),
    "running-requests-size-scorer": (NoParams, scorer_factory("running-requests-size-scorer")),
    "lora-affinity-scorer": (NoParams, scorer_factory("lora-affinity-scorer")),
    "prefix-cache-scorer": (PrefixParams, prefix_scorer_factory),
    "active-request-scorer": (
        ActiveRequestParams,
        scorer_factory("active-request-scorer", _active_params),
    ),
    "token-load-scorer": (TokenLoadParams, scorer_factory("token-load-scorer", _token_params)),
    "load-aware-scorer": (LoadAwareParams, scorer_factory("load-aware-scorer", _load_params)),
    "predicted-ttft-scorer": (PredictedTtftParams, ttft_scorer_factory),
}

CORE_PICKERS = ("max-score-picker", "weighted-random-picker", "random-picker")


@dataclasses.dataclass(frozen=True)
class CoreFilter(CoreScorer):
    """A filter implemented by the core; ``params`` uses the core's parameter names.

    A ``CoreScorer`` so that, once ``lower_core_filters`` has moved it among a profile's core
    scorers, everything that turns those into a core ``Profile`` passes it on unchanged (its
    charge, calibration and hot-prefix fields keep their neutral defaults)."""

    is_filter = True  # a class attribute, not a field: tells it from the scorers it sits among

    def filter(self, request: Any, pool: Any, snapshot: Any, mask: np.ndarray) -> np.ndarray:
        """The same filter run on its own in the core, for a profile where a Python filter
        follows it (so it must run before that one, not inside the pick)."""
        cached = request.attrs.get(PREFIX_ATTR)
        hashes = cached[1] if cached is not None else None
        high_water = pool.table.high_water
        if len(mask) < high_water:
            mask = np.concatenate([mask, np.zeros(high_water - len(mask), dtype=np.bool_)])
        profile = _filter_profile(core_of(pool.scheduler), self.type, tuple(self.params.items()))
        return pool.scheduler.filter(profile, hashes=hashes, candidates=mask)


@functools.lru_cache(maxsize=64)
def _filter_profile(module: ModuleType, type_name: str, params: tuple[tuple[str, float], ...]):
    return module.Profile([(type_name, 0.0, dict(params))])


def lower_core_filters(profile: BuiltProfile) -> None:
    """Move the core filters that no Python filter follows from the profile's filters to the
    front of its core plugins, in order, so they run inside the core pick (no snapshot, no
    Python call). Filters that stay keep their order; the engine runs those before the pick."""
    tail: list[tuple[CoreFilter, float]] = []
    while profile.filters and isinstance(profile.filters[-1][0], CoreFilter):
        plugin, _, _ = profile.filters.pop()
        tail.insert(0, (plugin, 0.0))
    profile.core_scorers[:0] = tail
