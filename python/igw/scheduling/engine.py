"""The scheduling engine: one request in, a ranked ``Decision`` out.

Per request: choose the profile (profile handler) -> candidate mask from the subset hint ->
Python filters (masks) -> the prompt's block hashes (computed once per request, cached in
``request.attrs``) -> Python scorers (numpy over snapshot views) -> one core ``pick`` that
runs the built-in scorers, adds the Python scores, ranks ``k`` endpoints and, atomically with
the choice, reserves the winner's in-flight counters and records the prompt's blocks for it.
A profile without Python filters or scorers skips the snapshot. The hashes are computed here
rather than by ``pick(prompt=...)``: hashing inside the pick saves ~0.1 us of crossing at
2k tokens, less than the extra keyword arguments cost, and the hashes cached in
``request.attrs`` serve a retry of the same request and plugins that read them.

Snapshots for Python plugins are shared between picks: a snapshot of every endpoint costs
~10 us at 1,000 endpoints but ~300 us at 10,000, more than the pick itself. The engine keeps
one per pool and reuses it while the table's ``version`` is unchanged (no add, remove,
readiness or metrics update since), or while it is younger than ``snapshot_max_age`` (5 ms by
default; scraped metrics are themselves tens of ms old) and no endpoint id was added past it.
Its in-flight counters, which change on every pick, are always refreshed from the live table
(``table.inflight()``, ~2 us at 1,000 endpoints); readiness and liveness are re-checked by the
core on every pick regardless. Its arrays are read-only: plugins share them.

The engine, not the plugins, times things: each Python plugin and the core pick are reported
to ``recorder(plugin_type, plugin_name, seconds)``, and the whole schedule call as
``recorder("scheduler", "e2e", seconds)``. Core scorers run in one fused pass and cannot be
timed apart; their pass is reported as ``("core-pick", <profile name>)``.

Errors follow the reference picker: an empty pool -> 500 "no pods available in datastore"; a
subset hint that matches nothing -> 503 ``rejected-no-endpoints``; filters that leave nothing
-> 429 ``rejected-saturated``; no ready endpoint among the candidates -> 503. A Python plugin
that raises or returns a wrong shape is skipped for that request (a filter passes everything,
a scorer scores 0) and logged: a bug in user code must not take routing down.

Prefill gate (``predicted-ttft-scorer`` parameter ``prefillGateTokens``; see
``igw.scheduling.gate`` for why): after the pick, a streamed request with at least that many
uncached tokens asks ``hold_for_prefill``; while another such request routed to the same
endpoint has not produced its first token, it waits (still reserved, so the cost model counts
it) and is let go by that request's first token or end, or by the front end's time limit. A
shorter request whose prefix igw counts as cached there only because a held long prefill of
its group was routed there waits right behind that one (``PrefillGate.follow``).

An engine is used from one event loop thread: the core's pick is atomic, and the engine's own
bookkeeping (per-request charges, prefill-ahead estimates) is updated right after it with no
``await`` in between, so concurrent requests on that loop see each other's load.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from igw import errors
from igw.config import EndpointPickerConfig, default_config
from igw.datastore import Pool
from igw.pipeline import Decision, Request
from igw.scheduling._backend import core_of, is_core_error
from igw.scheduling.calibration import PrefillCalibrator
from igw.scheduling.framework import PREFIX_ATTR
from igw.scheduling.gate import Notify, PrefillGate
from igw.scheduling.profiles import BuiltProfile
from igw.scheduling.registry import PluginRegistry

log = logging.getLogger(__name__)

Recorder = Callable[[str, str, float], None]


@dataclasses.dataclass(slots=True)
class _Held:
    """What one decision holds beyond the core's reservation, until its release."""

    endpoint: Any
    charge: int = 0  # per-request tokens added to the endpoint's in-flight count
    ahead: int = 0  # uncached tokens counted in the engine's prefill-ahead estimate
    work: float | None = None  # prefill work ahead at pick time (streamed requests only)
    prefilled: bool = False
    picked_at: float = 0.0  # engine clock at the pick
    gated: bool = False  # owns or waits for its endpoint's prefill gate


@dataclasses.dataclass(slots=True)
class _CachedSnapshot:
    """One pool's shared snapshot and what it was taken against."""

    table: Any
    snapshot: Any
    version: int
    taken_at: float  # time.perf_counter()
    high_water: int


@dataclasses.dataclass(slots=True)
class _RoutePlan:
    """What ``SchedulingEngine._route`` passes to the core for one profile on one pool, looked
    up once: per request it is a handful of attribute reads instead of a dozen property and
    dict lookups (~3 us of the schedule stage's Python, measured in process)."""

    scheduler: Any  # the pool's core Scheduler
    core_profile: Any
    prior: float | None  # the calibrated pool rate core_profile was built with (calibrates)
    calibrates: bool
    block_bytes: int
    max_blocks: int
    block_tokens: int
    charge: int  # per-request tokens; hot_charge for a hot prefix's requests
    hot_charge: int
    hot_factor: float
    uses_lora: bool
    narrows: bool  # core filters narrow the pick: ranked fallbacks may need a refill

    def prefix_key(self, model: str, salt: str, lora: str | None) -> tuple:
        """The key a request's hashes are cached under (``_prefix_key``)."""
        return _prefix_key(self.block_bytes, self.max_blocks, model, salt, lora)


def _prior_fits(built_with: float | None, prior: float | None) -> bool:
    """Whether a core profile built with the calibrated pool rate ``built_with`` (None: no
    rate yet) still serves for today's ``prior``: both absent, or within 10% of each other
    (``_core_profile``'s rebuild rule, also ``_plan_for``'s)."""
    if built_with is None:
        return prior is None
    return prior is not None and abs(built_with / prior - 1.0) <= 0.1


def _prefix_key(block_bytes: int, max_blocks: int, model: str, salt: str, lora: str | None):
    """What a request's cached hashes depend on: the same block settings, model, cache salt
    and adapter give the same hashes (``request.attrs[PREFIX_ATTR] = (key, hashes)``)."""
    return (block_bytes, max_blocks, model, salt, lora)


BYTES_PER_TOKEN = 4
# a prompt's prefix group for hot-prefix detection: its first DEMAND_KEY_BLOCKS blocks (512
# tokens at the default 64-token blocks; fewer for shorter prompts, never the last block),
# enough to tell system prompts apart
DEMAND_KEY_BLOCKS = 8
MAX_CACHED_SEEDS = 1024
SNAPSHOT_MAX_AGE = 0.005  # seconds a snapshot may be reused after the table changed


def _group_of(hashes: Any) -> int:
    """A prompt's prefix group: the hash of its first DEMAND_KEY_BLOCKS blocks (never the last
    block, which may be partial and holds the request's own words)."""
    return hashes.item(max(min(len(hashes) - 1, DEMAND_KEY_BLOCKS), 1) - 1)


class SchedulingEngine:
    """Runs an EndpointPickerConfig's profiles against a Pool's core state."""

    def __init__(
        self,
        config: EndpointPickerConfig | None = None,
        registry: PluginRegistry | None = None,
        *,
        recorder: Recorder | None = None,
        with_scores: bool = False,
        calibrator: PrefillCalibrator | None = None,
        clock: Callable[[], float] = time.monotonic,
        source: str = "<config>",
        snapshot_max_age: float = SNAPSHOT_MAX_AGE,
    ) -> None:
        if registry is None:
            from igw.scheduling.wiring import default_registry

            registry = default_registry()
        self.config = config if config is not None else default_config()
        self.registry = registry
        self.built = registry.build(self.config, source)
        self.recorder = recorder
        self.with_scores = with_scores
        self.calibrator = calibrator if calibrator is not None else PrefillCalibrator()
        self.clock = clock
        self._core_profiles: dict[tuple[int, str, str, bool], tuple[Any, float]] = {}
        # id(decision) -> (decision, what it still holds); the decision is kept so its id
        # cannot be reused by another object before it is released
        self._held: dict[int, tuple[Decision, _Held]] = {}
        self._ahead: dict[Any, int] = {}  # Endpoint -> uncached tokens routed, not yet prefilled
        self._failures: dict[str, int] = {}  # Python plugin name -> failures so far
        if not snapshot_max_age >= 0:
            raise ValueError(f"snapshot_max_age must be >= 0 seconds, got {snapshot_max_age}")
        self.snapshot_max_age = snapshot_max_age
        self._snapshots: weakref.WeakKeyDictionary[Pool, _CachedSnapshot] = (
            weakref.WeakKeyDictionary()
        )
        self._modules: dict[type, Any] = {}  # scheduler class -> its core module (core_of)
        # (core module, model, cache salt, LoRA) -> hash seed: one core call saved per request
        self._seeds: dict[tuple[Any, str | None, str | None, str | None], int] = {}
        self._gate = PrefillGate()
        # (core module, profile name, pool name) -> _RoutePlan (see _route)
        self._plans: dict[tuple[Any, str, str], _RoutePlan] = {}

    # ------------------------------------------------------------------------ public
    @property
    def profile_names(self) -> list[str]:
        return list(self.built.profiles)

    @property
    def outstanding(self) -> int:
        """Decisions scheduled and not yet released (a number that keeps growing is a leak)."""
        return len(self._held)

    def schedule(
        self,
        request: Request,
        pool: Pool,
        *,
        k: int | None = None,
        with_scores: bool | None = None,
    ) -> Decision:
        """Pick up to ``k`` ranked endpoints and reserve the primary; see the module doc."""
        started = time.perf_counter()
        try:
            return self._schedule(
                request, pool, k, self.with_scores if with_scores is None else with_scores
            )
        finally:
            # recorded once the request is on its way (``Request.later``)
            request.later(self._record, "scheduler", "e2e", time.perf_counter() - started)

    def release(self, decision: Decision) -> None:
        """Undo the primary's in-flight reservation; safe to call more than once."""
        if not decision.reserved:
            return
        decision.reserved = False
        entry = self._held.pop(id(decision), None)
        held = entry[1] if entry is not None and entry[0] is decision else None
        if held is None:
            self._unreserve(decision, 1, decision.uncached_tokens)
            return
        if held.gated:
            self._leave_gate(decision, held)
        tokens = 0 if held.prefilled else self._end_prefill(held, decision)
        self._unreserve(decision, 1, tokens + held.charge)

    def observe_first_token(self, decision: Decision, ttft_s: float) -> None:
        """The primary sent its first token ``ttft_s`` after dispatch.

        Prefill is over, so the request's uncached tokens leave the endpoint's in-flight token
        count (the request itself stays in flight until ``release``), and the observation
        calibrates the endpoint's prefill rate for the predicted-ttft scorer.
        """
        entry = self._held.get(id(decision))
        if entry is None or entry[0] is not decision:
            return  # released already, or not this engine's
        held = entry[1]
        if held.gated:
            self._leave_gate(decision, held)
        if not decision.reserved or held.prefilled:
            return
        self._unreserve(decision, 0, self._end_prefill(held, decision))
        work = held.work
        if work is None or work < self.calibrator.min_work_tokens:
            return  # nothing to calibrate (the calibrator would skip so small a sample too)
        endpoint = decision.endpoints[0]
        # the caller may time from the request's arrival (queueing in flow control included);
        # the prefill started no earlier than the pick
        ttft_s = min(ttft_s, self.clock() - held.picked_at)
        rate = self.calibrator.observe(decision.pool.name, endpoint.address, work, ttft_s)
        if rate is not None and decision.pool.by_id(endpoint.id) is endpoint:
            try:
                decision.pool.table.set_prefill_rate(endpoint.id, rate)
            except Exception as exc:  # endpoint removed meanwhile
                if not is_core_error(exc):
                    raise

    def hold_for_prefill(self, decision: Decision, request: Request, notify: Notify) -> bool:
        """Whether ``decision`` must wait before being sent: True when it is a long streamed
        prefill and its endpoint already has one in flight; ``notify()`` is then called when
        it may go. False (go now) in every other case."""
        held = self._held_of(decision)
        if held is None or not decision.reserved or held.gated or not request.stream:
            return False
        profile = self.built.profiles.get(decision.profile)
        threshold = profile.prefill_gate_tokens if profile is not None else 0
        if threshold <= 0:
            return False
        if decision.uncached_tokens < threshold:
            # cached on the endpoint, unless only because a held long prefill was routed there
            if not self._gate.has_waiters(held.endpoint):
                return False  # the usual case: no group lookup
            group = self._group_key(request)
            held.gated = self._gate.follow(held.endpoint, decision, notify, group)
            return held.gated
        held.gated = True
        return not self._gate.enter(held.endpoint, decision, notify, self._group_key(request))

    def stop_waiting(self, decision: Decision) -> None:
        """The request stops waiting for (or gives up) its endpoint's prefill gate."""
        held = self._held_of(decision)
        if held is not None:
            self._leave_gate(decision, held)

    def prefill_gate_max_wait(self, decision: Decision) -> float:
        """Seconds a held request waits at most before it is sent anyway."""
        profile = self.built.profiles.get(decision.profile)
        return profile.prefill_gate_max_wait if profile is not None else 0.0

    @property
    def gate_tickets(self) -> int:
        """Requests owning or waiting for a prefill gate (0 when idle; a leak otherwise)."""
        return len(self._gate)

    @staticmethod
    def _group_key(request: Request) -> int | None:
        """The prompt's prefix group (as hot-prefix detection keys it), None without hashes."""
        cached = request.attrs.get(PREFIX_ATTR)
        hashes = cached[1] if cached is not None else None
        return _group_of(hashes) if hashes is not None and len(hashes) else None

    def _held_of(self, decision: Decision) -> _Held | None:
        """What ``decision`` still holds (None once released, or if it is not this engine's)."""
        entry = self._held.get(id(decision))
        return entry[1] if entry is not None and entry[0] is decision else None

    def _leave_gate(self, decision: Decision, held: _Held) -> None:
        if held.gated:
            held.gated = False
            self._gate.leave(held.endpoint, decision)

    def _end_prefill(self, held: _Held, decision: Decision) -> int:
        """Mark the decision's prefill done; returns the uncached tokens still reserved."""
        if held.prefilled:
            return 0
        held.prefilled = True
        if held.ahead:
            left = self._ahead.get(held.endpoint, 0) - held.ahead
            if left > 0:
                self._ahead[held.endpoint] = left
            else:
                self._ahead.pop(held.endpoint, None)
        return decision.uncached_tokens

    # ------------------------------------------------------------------------ internals
    def _schedule(self, request: Request, pool: Pool, k: int | None, with_scores: bool) -> Decision:
        if len(pool) == 0:
            raise errors.InferenceError(errors.ErrorCode.INTERNAL, "no pods available in datastore")
        profile = self.built.profiles[self.built.handler.select(request)]
        if k is None:
            k = profile.picker.max_endpoints
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        table = pool.table
        mask: np.ndarray | None = None
        if request.subset is not None:
            mask = pool.candidate_mask(request.subset)
            if not mask.any():
                raise errors.no_endpoints()
        python_plugins = bool(profile.filters or profile.python_scorers)
        module = self._modules.get(type(pool.scheduler))
        if module is None:
            module = self._modules[type(pool.scheduler)] = core_of(pool.scheduler)
        if not python_plugins and mask is None and not with_scores:
            routed = self._route(request, pool, profile, module, k)
            if routed is not None:
                return routed
        snapshot = self._snapshot(pool) if python_plugins else None
        hashes, prompt_tokens = self._prefix(request, profile, module)  # filters may read them
        extra_scores = extra_weights = None
        if python_plugins:
            if profile.filters:
                mask = self._run_filters(request, pool, profile, snapshot, mask)
            extra_scores, extra_weights = self._run_scorers(request, profile, snapshot, mask)
        lora = self._lora(request, pool, profile, module) if profile.uses_lora else -1
        if mask is not None or extra_scores is not None:
            high_water = table.high_water
            if mask is not None and len(mask) < high_water:
                mask = np.concatenate([mask, np.zeros(high_water - len(mask), dtype=np.bool_)])
            if extra_scores is not None and extra_scores.shape[1] < high_water:
                pad = np.zeros(
                    (extra_scores.shape[0], high_water - extra_scores.shape[1]), np.float32
                )
                extra_scores = np.concatenate([extra_scores, pad], axis=1)
        # the per-request charge (hot prefixes: another one) is reserved with the pick itself
        charge = profile.request_charge
        if profile.hot_prefix_factor > 0 and self._hot(pool, hashes, profile.hot_prefix_factor):
            charge = profile.hot_request_charge
        block_tokens = profile.prefix.block_tokens
        scheduler = pool.scheduler
        core_profile = self._core_profile(module, profile, pool)
        scores = None
        started = time.perf_counter()
        if mask is None and extra_scores is None and not with_scores:
            # the usual request: positional call, tuple back (about half pick()'s overhead)
            ranked, matched, total_blocks, uncached = scheduler.pick_reserve(
                core_profile, hashes, prompt_tokens, block_tokens, lora, k, charge
            )
        else:
            result = scheduler.pick(
                core_profile, hashes=hashes, prompt_tokens=prompt_tokens,
                block_tokens=block_tokens, lora=lora, candidates=mask, k=k,
                extra_scores=extra_scores, extra_weights=extra_weights, with_scores=with_scores,
                charge=charge,
            )  # fmt: skip
            ranked, scores = result.endpoints, result.scores
            total_blocks, uncached = result.total_blocks, result.uncached_tokens
            per_endpoint = result.matched_blocks
            first = ranked[0] if ranked else len(per_endpoint)
            matched = int(per_endpoint[first]) if first < len(per_endpoint) else 0
        request.later(self._record, "core-pick", profile.name, time.perf_counter() - started)
        if not ranked:
            raise errors.no_endpoints()
        if len(ranked) < k and profile.narrows_in_core:
            request_args = {
                "hashes": hashes, "prompt_tokens": prompt_tokens, "block_tokens": block_tokens,
                "lora": lora, "extra_scores": extra_scores, "extra_weights": extra_weights,
            }  # fmt: skip
            ranked = ranked + self._fallbacks(module, profile, pool, request_args, mask,
                                              k - len(ranked), ranked)  # fmt: skip
        decision = self._decide(request, pool, profile, ranked, matched, total_blocks,
                                uncached, charge)  # fmt: skip
        if with_scores and scores is not None:
            decision.scores = self._scores_by_address(pool, profile, scores, mask)
        return decision

    def _route(
        self, request: Request, pool: Pool, profile: BuiltProfile, module, k: int
    ) -> Decision | None:
        """The usual request (no Python plugins, no subset, no scores wanted) in one core call:
        hash, hot-prefix demand, pick, reserve and record (``Scheduler.route``). None when the
        prompt's hashes are already known (a retry): the general path reuses them.

        What the call needs from the profile and pool is looked up once (``_RoutePlan``);
        per request only the calibrated prior is re-checked (``_plan_for``)."""
        prompt = request.prompt
        if not prompt:
            return None
        attrs = request.attrs
        if PREFIX_ATTR in attrs:
            return None  # hashed before: a retry of this request takes the general path
        plan = self._plan_for(module, profile, pool)
        model = request.target_model or request.incoming_model
        salt, lora_name = request.cache_salt, request.lora
        seed = self._seed(module, model, salt, lora_name)
        tokens = request.prompt_tokens_estimate or math.ceil(len(prompt) / BYTES_PER_TOKEN)
        lora = self._lora(request, pool, profile, module) if plan.uses_lora else -1
        # The prompt's blocks go into the prefix index once the request is on its way (the
        # front end runs ``later`` work before any other request is scheduled; the schedule
        # stage runs it at once for a request the prefill gate holds, so requests behind it
        # see its blocks while it waits).
        record_now = request.after_send is None
        started = time.perf_counter()
        ranked, matched, total_blocks, uncached, hashes, hot = plan.scheduler.route(
            plan.core_profile, prompt, seed, plan.block_bytes, plan.max_blocks, tokens,
            plan.block_tokens, lora, k, plan.charge, plan.hot_charge, plan.hot_factor,
            record_now,
        )  # fmt: skip
        request.later(self._record, "core-pick", profile.name, time.perf_counter() - started)
        attrs[PREFIX_ATTR] = (plan.prefix_key(model, salt, lora_name), hashes)
        if not ranked:
            raise errors.no_endpoints()
        if not record_now and len(hashes):
            request.later(pool.index.record, ranked[0], hashes)
        if len(ranked) < k and plan.narrows:
            request_args = {
                "hashes": hashes, "prompt_tokens": tokens, "block_tokens": plan.block_tokens,
                "lora": lora, "extra_scores": None, "extra_weights": None,
            }  # fmt: skip
            ranked = ranked + self._fallbacks(module, profile, pool, request_args, None,
                                              k - len(ranked), ranked)  # fmt: skip
        return self._decide(request, pool, profile, ranked, matched, total_blocks, uncached,
                            plan.hot_charge if hot else plan.charge)  # fmt: skip

    def _plan_for(self, module, profile: BuiltProfile, pool: Pool) -> _RoutePlan:
        """``profile``'s ``_RoutePlan`` on ``pool``; rebuilt when the calibrated prior moved
        (``_core_profile``'s rule) or the pool's scheduler changed."""
        key = (module, profile.name, pool.name)
        plan = self._plans.get(key)
        scheduler = pool.scheduler
        if plan is not None and plan.scheduler is scheduler:
            if not plan.calibrates:
                return plan
            if _prior_fits(plan.prior, self.calibrator.pool_rate(pool.name)):
                return plan
        core_profile, built_with = self._core_profile_entry(module, profile, pool)
        settings = profile.prefix
        plan = self._plans[key] = _RoutePlan(
            scheduler=scheduler,
            core_profile=core_profile,
            prior=built_with or None,
            calibrates=profile.calibrates,
            block_bytes=settings.block_bytes,
            max_blocks=settings.max_blocks,
            block_tokens=settings.block_tokens,
            charge=profile.request_charge,
            hot_charge=profile.hot_request_charge,
            hot_factor=profile.hot_prefix_factor,
            uses_lora=profile.uses_lora,
            narrows=profile.narrows_in_core,
        )
        return plan

    def _decide(
        self, request: Request, pool: Pool, profile: BuiltProfile, ranked: list[int],
        matched: int, total_blocks: int, uncached: int, charge: int,
    ) -> Decision:  # fmt: skip
        """The Decision for a pick that reserved ``ranked[0]``, and what the engine holds for
        it until release (charge, prefill-ahead estimate, calibration work)."""
        by_id = pool.by_id
        endpoints = [e for e in map(by_id, ranked) if e is not None]
        # positional (the dataclasses' field order): half the cost of keywords per request
        decision = Decision(pool, endpoints, int(uncached), True, int(matched),
                            int(total_blocks), None, profile.name)  # fmt: skip
        if not endpoints:
            return decision
        endpoint = endpoints[0]
        held = _Held(endpoint, charge, 0, None, False, self.clock())
        if profile.calibrates:
            # the prefill work ahead of this request on its endpoint, from igw's own routing:
            # what it sent there and has not seen a first token for, plus this request
            ahead = self._ahead.get(endpoint, 0)
            held.ahead = decision.uncached_tokens
            self._ahead[endpoint] = ahead + held.ahead
            if request.stream:
                # only streamed responses time the first token; a buffered response's first
                # byte comes after the whole generation and would read as a slow prefill
                held.work = float(ahead + decision.uncached_tokens)
        self._held[id(decision)] = (decision, held)
        return decision

    @staticmethod
    def _hot(pool: Pool, hashes: Any, factor: float) -> bool:
        """Whether this prompt's prefix group takes more than ``factor`` endpoints' fair share
        of the pool's recent requests (a prompt with no hashes is never hot). The demand is
        the pool's core scheduler's, shared with ``Scheduler.route``."""
        if hashes is None or not len(hashes):
            return False
        return pool.scheduler.hot(_group_of(hashes), factor)

    def _run_filters(
        self, request: Request, pool: Pool, profile: BuiltProfile, snapshot: Any, mask
    ) -> np.ndarray:
        size = max(pool.table.high_water, 1)
        if mask is None:
            mask = np.ones(size, dtype=np.bool_)
        for plugin, type_name, name in profile.filters:
            started = time.perf_counter()
            try:
                out = np.asarray(plugin.filter(request, pool, snapshot, mask), dtype=np.bool_)
                if out.ndim != 1:
                    raise TypeError(f"returned a mask of shape {out.shape}, not 1-d")
            except Exception as exc:  # a broken plugin must not take requests down: fail open
                self._plugin_failed("filter", name, exc)
                continue
            finally:
                self._record(type_name, name, time.perf_counter() - started)
            if len(out) < size:
                out = np.concatenate([out, np.zeros(size - len(out), dtype=np.bool_)])
            mask = out & np.concatenate([mask, np.zeros(max(0, len(out) - len(mask)), np.bool_)])
            if not mask.any():
                raise errors.InferenceError(
                    errors.ErrorCode.RESOURCE_EXHAUSTED,
                    "no endpoints available for the given request",
                    drop_reason="rejected-saturated",
                )
        return mask

    def _run_scorers(self, request: Request, profile: BuiltProfile, snapshot: Any, mask):
        if not profile.python_scorers:
            return None, None
        n = len(snapshot.ready)
        eligible = snapshot.ready & snapshot.active
        if mask is not None:
            eligible = eligible & mask[:n]
        ids = np.flatnonzero(eligible)
        extra = np.zeros((len(profile.python_scorers), n), dtype=np.float32)
        weights = []
        for j, (plugin, weight, type_name, name) in enumerate(profile.python_scorers):
            weights.append(weight)
            if not len(ids):
                continue
            started = time.perf_counter()
            try:
                out = np.asarray(plugin.score(request, snapshot, ids), dtype=np.float32)
                if out.ndim != 1 or len(out) not in (len(ids), n):
                    raise TypeError(
                        f"returned shape {out.shape}; expected ({len(ids)},) aligned with "
                        f"endpoints or ({n},) indexed by endpoint id"
                    )
            except Exception as exc:  # a broken plugin scores 0 everywhere; routing goes on
                self._plugin_failed("scorer", name, exc)
                continue
            finally:
                self._record(type_name, name, time.perf_counter() - started)
            if len(out) == n:
                extra[j, ids] = out[ids]
            else:
                extra[j, ids] = out
        np.nan_to_num(extra, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
        return extra, weights

    def _prefix(self, request: Request, profile: BuiltProfile, module) -> tuple[Any, int]:
        """Block hashes of the prompt (once per request and block size) and its token count."""
        prompt = request.prompt
        tokens = request.prompt_tokens_estimate or math.ceil(len(prompt) / BYTES_PER_TOKEN)
        if not prompt:
            return None, tokens
        settings = profile.prefix
        model = request.target_model or request.incoming_model
        key = _prefix_key(
            settings.block_bytes, settings.max_blocks, model, request.cache_salt, request.lora
        )
        cached = request.attrs.get(PREFIX_ATTR)
        if cached is not None and cached[0] == key:
            return cached[1], tokens
        seed = self._seed(module, model, request.cache_salt, request.lora)
        hashes = module.hash_blocks(prompt, settings.block_bytes, seed, settings.max_blocks)
        request.attrs[PREFIX_ATTR] = (key, hashes)
        return hashes, tokens

    def _seed(self, module, model: str, salt: str | None, lora: str | None) -> int:
        """The prompt hash chain's root for this model, salt and adapter (cached, bounded)."""
        seed_key = (module, model, salt, lora)
        seed = self._seeds.get(seed_key)
        if seed is None:
            if len(self._seeds) >= MAX_CACHED_SEEDS:
                self._seeds.clear()  # salts are the clients' choice: stay bounded
            seed = self._seeds[seed_key] = module.model_seed(model, salt, lora or "")
        return seed

    def _snapshot(self, pool: Pool) -> Any:
        """The pool's shared snapshot for Python plugins (see the module doc for when it is
        reused); its in-flight counters are always current."""
        table = pool.table
        version = table.version
        now = time.perf_counter()
        cached = self._snapshots.get(pool)
        if cached is not None and cached.table is table:
            if cached.version == version or (
                now - cached.taken_at < self.snapshot_max_age
                and table.high_water == cached.high_water
            ):
                snapshot = cached.snapshot
                requests, tokens = table.inflight()
                if len(requests) == len(snapshot.inflight_requests):
                    requests.flags.writeable = False
                    tokens.flags.writeable = False
                    snapshot.inflight_requests = requests
                    snapshot.inflight_tokens = tokens
                    return snapshot
        high_water = table.high_water
        snapshot = table.snapshot()
        for value in vars(snapshot).values():
            if isinstance(value, np.ndarray):
                value.flags.writeable = False
        self._snapshots[pool] = _CachedSnapshot(table, snapshot, version, now, high_water)
        return snapshot

    def _lora(self, request: Request, pool: Pool, profile: BuiltProfile, module) -> int:
        """The adapter id for lora-affinity: the request's adapter, else its target model (the
        reference compares the target model name with the servers' adapter lists).

        Looked up, never registered: the name is the client's choice, and registering it
        would let clients fill the 256-name registry. A name no server reported is an adapter
        no endpoint has, scored by free adapter slots alone (``UNKNOWN_ADAPTER``)."""
        if not profile.uses_lora:
            return -1
        name = request.lora or request.target_model
        if not name:
            return -1
        adapter = pool.table.find_adapter(name)
        return adapter if adapter >= 0 else module.UNKNOWN_ADAPTER

    def _fallbacks(
        self, module, profile: BuiltProfile, pool: Pool, request_args: dict[str, Any], mask,
        count: int, taken: list[int],
    ) -> list[int]:  # fmt: skip
        """Ranked fallbacks beyond what the profile's core filters left.

        A core filter such as ``new-prefix-spread-filter`` narrows where a request *should* go,
        not where it *may* go: when it leaves fewer endpoints than the ranked list needs, the
        rest are ranked by the same scorers over the other candidates, so a replica that
        refuses connections still has somewhere to fail over to. No reservation, no record."""
        candidates = np.ones(pool.table.high_water, dtype=np.bool_) if mask is None else mask.copy()
        candidates[[i for i in taken if i < len(candidates)]] = False
        if not candidates.any():
            return []
        result = pool.scheduler.pick(
            self._core_profile(module, profile, pool, unfiltered=True),
            candidates=candidates,
            k=count,
            reserve=False,
            record=False,
            **request_args,
        )
        return list(result.endpoints)

    def _core_profile(
        self, module, profile: BuiltProfile, pool: Pool, *, unfiltered: bool = False
    ) -> Any:
        """The core Profile for ``profile``; with calibration, its default prefill rate (used
        for endpoints with no sample yet) follows the pool's mean calibrated rate, rebuilt
        when that moves by more than 10%."""
        return self._core_profile_entry(module, profile, pool, unfiltered)[0]

    def _core_profile_entry(
        self, module, profile: BuiltProfile, pool: Pool, unfiltered: bool = False
    ) -> tuple[Any, float]:
        """``(core Profile, the prior it was built with or 0.0)``; see ``_core_profile``."""
        prior = self.calibrator.pool_rate(pool.name) if profile.calibrates else None
        key = (id(module), profile.name, pool.name if prior is not None else "", unfiltered)
        cached = self._core_profiles.get(key)
        if cached is not None and _prior_fits(cached[1] or None, prior):
            return cached
        scorers = []
        for scorer, weight in profile.core_scorers:
            if unfiltered and getattr(scorer, "is_filter", False):
                continue
            params = dict(scorer.params)
            if prior is not None and scorer.type == "predicted-ttft-scorer" and scorer.calibrate:
                params["defaultPrefillRate"] = prior
            scorers.append((scorer.type, weight, params))
        entry = self._core_profiles[key] = (
            module.Profile(scorers, profile.picker.type),
            prior or 0.0,
        )
        return entry

    def _scores_by_address(self, pool: Pool, profile: BuiltProfile, scores: dict, mask):
        names: dict[str, str] = {s.type: s.name for s, _ in profile.core_scorers}
        for j, (_, _, _, name) in enumerate(profile.python_scorers):
            names[f"extra[{j}]"] = name
        out: dict[str, dict[str, float]] = {}
        for key, values in scores.items():
            plugin = names.get(key, key)
            row: dict[str, float] = {}
            for endpoint in pool.endpoints():
                if endpoint.id >= len(values) or (mask is not None and not mask[endpoint.id]):
                    continue
                row[endpoint.address] = float(values[endpoint.id])
            out[plugin] = row
        return out

    def _unreserve(self, decision: Decision, requests: int, tokens: int) -> None:
        endpoints = decision.endpoints
        if not endpoints:
            return
        endpoint = endpoints[0]
        pool = decision.pool
        if pool.by_id(endpoint.id) is not endpoint:
            return  # removed (and maybe its id reused): nothing of ours is left to release
        try:
            pool.table.add_inflight(endpoint.id, -requests, -tokens)
        except Exception as exc:
            if not is_core_error(exc):
                raise

    def _plugin_failed(self, kind: str, name: str, exc: Exception) -> None:
        """Log a Python plugin's failure: the first ten, then one in a thousand."""
        count = self._failures.get(name, 0) + 1
        self._failures[name] = count
        if count <= 10 or count % 1000 == 0:
            log.error(
                "%s %r failed (%d times so far; it is skipped for this request): %s",
                kind,
                name,
                count,
                exc,
                exc_info=count == 1,
            )

    def _record(self, plugin_type: str, name: str, seconds: float) -> None:
        if self.recorder is not None:
            try:
                self.recorder(plugin_type, name, seconds)
            except Exception:  # metrics must never break routing
                log.exception("scheduling latency recorder failed")
