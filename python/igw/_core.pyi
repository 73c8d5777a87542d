"""Type stubs and contract of the C++ core, ``igw._core``.

This file is the interface every other part of igw codes against. The pure-Python
reference implementation in ``igw.core_reference`` exposes exactly the same names and
semantics; property tests check the two agree, and benchmarks report the ratio.

Conventions
-----------
* Endpoint ids are dense ints in ``[0, capacity)``; a removed id is reused by a later ``add``.
* Arrays returned "per endpoint" have length ``table.high_water`` (1 + the largest id ever
  handed out and not since trimmed); entries of removed ids hold zeros / False.
* Every error raised by the core is ``igw._core.Error`` (re-exported as ``igw.Error``), with a
  message naming the argument and what was expected -- wrongly typed arguments (``"3"`` for an
  int, ``1`` for a bool, ``True`` for an int) and calls of the wrong shape (missing, unexpected
  or surplus arguments) included, never ``TypeError``. Ints accept Python ints and numpy
  integer scalars; numbers accept ints, floats and numpy scalars; bools accept ``bool`` and
  ``numpy.bool_``. The core never aborts the process.
* All methods are safe to call from several threads at once and release the GIL around
  work that does not touch Python objects.
"""

from typing import Final

import numpy as np
import numpy.typing as npt

__version__: Final[str]

DEMAND_KEY_BLOCKS: Final[int] = 8
"""A prompt's prefix group for ``Scheduler.hot`` is the hash of its first this-many blocks."""
UNKNOWN_ADAPTER: Final[int] = 256
"""``Scheduler.pick(lora=UNKNOWN_ADAPTER)``: the request names an adapter that is not in the
registry (``find_adapter`` returned -1), so no endpoint has it running or waiting."""

class Error(Exception):
    """The one error type raised by the core (bad arguments, unknown ids, full tables)."""

# ---------------------------------------------------------------------------- hashing

def xxh64(data: bytes | bytearray | memoryview, seed: int = 0) -> int:
    """XXH64 of ``data`` per the published xxHash specification (matches ``xxhash.xxh64``)."""

def model_seed(model: str, cache_salt: str = "", lora: str = "") -> int:
    """Root of a prompt's hash chain: ``xxh64(model + b"\\0" + cache_salt + b"\\0" + lora)``.

    Equal text under a different model, salt or adapter gets unrelated block hashes.
    """

def hash_blocks(
    data: bytes | bytearray | memoryview, block_bytes: int, seed: int, max_blocks: int = 0
) -> npt.NDArray[np.uint64]:
    """Chained block hashes of prompt bytes.

    The data is cut into ``block_bytes``-sized blocks; the last partial block is hashed too.
    ``id_i = xxh64(block_i)``, ``h_{-1} = seed``, ``h_i = xxh64(le64(id_i) + le64(h_{i-1}))``.
    ``max_blocks`` > 0 stops after that many blocks. ``block_bytes`` must be >= 1.
    """

def hash_token_blocks(
    tokens: npt.NDArray[np.uint32], block_tokens: int, seed: int, max_blocks: int = 0
) -> npt.NDArray[np.uint64]:
    """As ``hash_blocks`` but over token ids: block i's id is xxh64 of the little-endian
    uint32 bytes of its ``block_tokens`` tokens."""

# ---------------------------------------------------------------------- endpoint table

class Snapshot:
    """A consistent copy of every endpoint's metrics, one numpy array per field.

    Each endpoint's row is taken atomically (never a mix of two updates). Arrays have length
    ``high_water``; LoRA bitsets are ``uint64[high_water, 4]`` (adapter id a is bit a%64 of
    word a//64; at most 256 adapters).
    """

    active: npt.NDArray[np.bool_]  # slot holds a live endpoint
    ready: npt.NDArray[np.bool_]  # live and marked ready
    waiting: npt.NDArray[np.int32]  # scraped waiting-queue length
    running: npt.NDArray[np.int32]  # scraped running requests
    kv_util: npt.NDArray[np.float32]  # scraped KV-cache utilization, 0..1
    kv_blocks: npt.NDArray[np.int64]  # KV capacity in blocks (0 = unknown)
    block_size: npt.NDArray[np.int32]  # tokens per KV block (0 = unknown)
    max_lora: npt.NDArray[np.int32]  # max LoRA slots (0 = unknown / no LoRA)
    lora_active: npt.NDArray[np.uint64]  # [n, 4] bitset of running adapters
    lora_waiting: npt.NDArray[np.uint64]  # [n, 4] bitset of waiting adapters
    inflight_requests: npt.NDArray[np.int32]  # requests igw sent and not yet finished
    inflight_tokens: npt.NDArray[np.int64]  # uncached prompt tokens of those requests
    updated_at: npt.NDArray[np.float64]  # monotonic seconds of the last metrics update (0 = never)
    prefill_rate: npt.NDArray[np.float32]  # calibrated prompt tokens/second (0 = unknown)

class EndpointTable:
    """Structure-of-arrays metrics of up to ``capacity`` endpoints (capacity <= 65535)."""

    def __init__(self, capacity: int = 4096) -> None: ...
    @property
    def capacity(self) -> int: ...
    @property
    def high_water(self) -> int: ...
    @property
    def version(self) -> int:
        """A counter incremented after every ``add``, ``remove``, ``update``, ``set_ready`` and
        ``set_prefill_rate`` -- not ``add_inflight``, which changes on every pick. Read it
        before ``snapshot()``; while it is unchanged the snapshot's membership, readiness and
        metrics are current (its in-flight counters may be stale). Cheap: one atomic load."""
    def __len__(self) -> int:
        """Number of live endpoints."""
    def add(self) -> int:
        """Allocate a dense id (lowest free); the new row is zeroed, not ready. Error when full."""
    def remove(self, endpoint: int) -> None:
        """Free an id. Readers holding snapshots are unaffected. Error if not live."""
    def is_live(self, endpoint: int) -> bool: ...
    def update(
        self,
        endpoint: int,
        *,
        waiting: int,
        running: int,
        kv_util: float,
        now: float,
        kv_blocks: int = -1,
        block_size: int = -1,
        max_lora: int = -1,
        lora_active: list[int] | None = None,
        lora_waiting: list[int] | None = None,
    ) -> None:
        """Write one endpoint's scraped metrics as one atomic row update.

        Fields left at -1 / None keep their previous value. ``kv_util`` must be within 0..1
        (values within 1e-6 outside are clamped); negative counts are errors. Adapter ids in
        ``lora_active`` / ``lora_waiting`` must come from ``adapter_id`` (registered names).
        """
    def set_ready(self, endpoint: int, ready: bool) -> None: ...
    def set_prefill_rate(self, endpoint: int, tokens_per_second: float) -> None: ...
    def add_inflight(self, endpoint: int, requests: int, tokens: int) -> None:
        """Adjust igw's own in-flight counters (negative to release); clamped at zero."""
    def inflight_requests_of(self, endpoint: int) -> int:
        """igw's in-flight requests on one live endpoint (``inflight()`` copies every row)."""
    def adapter_id(self, name: str) -> int:
        """Id of a LoRA adapter name in the registry, registering it if new (max 256).

        For names servers report (scraped adapter lists); a name a client chose must go
        through ``find_adapter``, or clients could fill the registry."""
    def find_adapter(self, name: str) -> int:
        """Id of a registered adapter name, or -1 if no endpoint ever reported it. Never
        registers (so client-chosen model names cannot fill the 256-name registry)."""
    def adapter_name(self, adapter: int) -> str: ...
    def snapshot(self) -> Snapshot: ...
    def inflight(self) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        """``(inflight_requests, inflight_tokens)`` as a snapshot would hold them (length
        ``high_water``), without copying the rest: with ``version``, a caller can keep one
        snapshot and refresh only the counters that change on every pick."""

# ------------------------------------------------------------------------ prefix index

class PrefixIndex:
    """Block hash -> endpoints holding it, with a bounded LRU of blocks per endpoint."""

    def __init__(self, max_endpoints: int = 4096, default_capacity: int = 31250) -> None: ...
    def set_capacity(self, endpoint: int, blocks: int) -> None:
        """Capacity of one endpoint's LRU in blocks (e.g. its num_gpu_blocks); evicts the
        least recently used blocks at once if it now holds more."""
    def capacity_of(self, endpoint: int) -> int: ...
    def record(self, endpoint: int, hashes: npt.NDArray[np.uint64]) -> None:
        """Mark the blocks as held by the endpoint and most recently used (in order, so the
        first block is evicted last among them: later blocks are less likely to be reused)."""
    def match(self, hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.int32]:
        """For every endpoint id in [0, max_endpoints_seen) the number of leading blocks of
        ``hashes`` it holds contiguously from block 0. Does not touch LRU order."""
    def remove_endpoint(self, endpoint: int) -> None:
        """Forget every block of the endpoint (its id may be reused afterwards)."""
    def entries(self) -> int:
        """Number of (block, endpoint) pairs held."""
    def endpoint_entries(self, endpoint: int) -> int: ...
    def memory_bytes(self) -> int:
        """Bytes the index holds for its entries and lookup structures (not the object).

        The C++ core counts every allocated slab, arena and table byte, unused tails included,
        so ``memory_bytes() / entries()`` is the honest cost per (block, endpoint) entry. The
        reference returns a rough 100 bytes per entry.
        """
    def blocks(self) -> int:
        """Number of distinct blocks held by at least one endpoint."""

# --------------------------------------------------------------------------- scheduler

class Profile:
    """A scheduling profile: filters, weighted scorers and one picker, run over all endpoints
    at once.

    ``scorers`` is the profile's core plugins in order, each ``(type, weight, params)``: a
    scorer type is a scorer, a filter type a filter (its weight is checked like a scorer's and
    otherwise unused). Filters run first, in their order, and narrow the eligible endpoints
    every scorer then sees; a filter never empties a non-empty set. Built-in scorer types and
    their params:
      queue-scorer {}, running-requests-size-scorer {}, kv-cache-utilization-scorer {},
      prefix-cache-scorer {matchLengthWeight: 0.0, scaleTokens: 8192},
      lora-affinity-scorer {}, active-request-scorer {idleThreshold: 0, maxBusyScore: 1.0},
      token-load-scorer {queueThresholdTokens: 4194304},
      load-aware-scorer {queueThreshold: 128},
      predicted-ttft-scorer {defaultPrefillRate: 8000.0, waitingTokens: 512.0} -- the cost
        model: per endpoint ``ttft = (inflight_tokens + waiting*waitingTokens + uncached) /
        rate`` where ``uncached = max(0, prompt_tokens - matched_blocks*block_tokens)`` and
        ``rate`` is the endpoint's ``prefill_rate`` (or the default when 0); score =
        ``min_e(ttft) / ttft_e`` over eligible endpoints (1.0 for the fastest).
    Built-in filter types and their params:
      new-prefix-spread-filter {newPrefixFraction: 0.3 (0..1), tolerance: 0.0 (>= 0)} -- a
        prompt is *new* when no endpoint of the table (eligible or not) holds more than
        ``newPrefixFraction x total_blocks`` of its leading blocks; for a new prompt only the
        eligible endpoints whose ``PrefixIndex.endpoint_entries`` is
        ``<= min x (1 + tolerance)`` (min over the eligible ones) stay. No hashes, fewer than
        two eligible endpoints, or a prompt someone holds: nothing is dropped.
    ``picker`` is one of max-score-picker, weighted-random-picker, random-picker.
    Unknown types, unknown param keys, negative or non-finite weights raise ``Error``.
    """

    def __init__(
        self,
        scorers: list[tuple[str, float, dict[str, float]]],
        picker: str = "max-score-picker",
    ) -> None: ...
    @property
    def scorer_types(self) -> list[str]: ...
    @property
    def filter_types(self) -> list[str]: ...
    @property
    def picker(self) -> str: ...

class PickResult:
    endpoints: list[int]  # ranked: primary first, then fallbacks (at most k)
    matched_blocks: npt.NDArray[np.int32]  # per endpoint (the index match)
    total_blocks: int
    uncached_tokens: int  # charged to the primary's in-flight tokens when reserved
    # per scorer type, "extra[j]" per Python-plugin row, and "total"; only if with_scores
    scores: dict[str, npt.NDArray[np.float32]] | None

class Scheduler:
    """Runs profiles over an EndpointTable and PrefixIndex.

    ``pick`` is atomic with respect to other picks: the winner's in-flight counters are
    incremented (and, with ``record``, the prompt's blocks recorded for it) before the next
    pick starts, so a burst of simultaneous requests sees its own load.
    """

    def __init__(self, table: EndpointTable, index: PrefixIndex, seed: int = 0) -> None:
        """``index`` must cover every table id: ``max_endpoints >= table.capacity``."""
    def filter(
        self,
        profile: Profile,
        *,
        hashes: npt.NDArray[np.uint64] | None = None,
        candidates: npt.NDArray[np.bool_] | None = None,
    ) -> npt.NDArray[np.bool_]:
        """Run only the profile's filters (as ``pick`` would, over the live, ready endpoints
        among ``candidates``) and return a copy of ``candidates`` (all True, length
        ``high_water``, without them) with the endpoints the filters dropped cleared; entries
        of endpoints that are not live and ready are left as given. Reserves and records
        nothing. For a core filter that must run between Python filters, in profile order."""
    def pick(
        self,
        profile: Profile,
        *,
        hashes: npt.NDArray[np.uint64] | None = None,
        prompt: bytes | None = None,
        block_bytes: int = 256,
        seed: int = 0,
        max_blocks: int = 0,
        prompt_tokens: int = 0,
        block_tokens: int = 64,
        lora: int = -1,
        candidates: npt.NDArray[np.bool_] | None = None,
        k: int = 1,
        extra_scores: npt.NDArray[np.float32] | None = None,
        extra_weights: list[float] | None = None,
        reserve: bool = True,
        record: bool = True,
        with_scores: bool = False,
        charge: int = 0,
    ) -> PickResult:
        """Pick up to ``k`` ranked endpoints among live, ready endpoints (and ``candidates``,
        a bool mask of length >= high_water, when given) that the profile's filters keep.

        ``extra_scores`` is a float32 ``[m, high_water]`` array of scores from Python plugins
        with ``m`` matching ``extra_weights``; they are clamped to [0,1] and weighted like
        built-in scorers. Returns an empty ``endpoints`` list when nothing is eligible.
        ``prompt`` (instead of ``hashes``) hashes the bytes inside the same call, exactly as
        ``hash_blocks(prompt, block_bytes, seed, max_blocks)`` -- one crossing instead of two.
        ``lora`` < 0 means no adapter requested: lora-affinity-scorer gives every endpoint 1.0.
        ``lora`` = ``UNKNOWN_ADAPTER`` (256) means an adapter no endpoint has: the scorer gives
        0.8 where ``len(active) + len(waiting) < max_lora`` (a free slot) and 0.0 elsewhere,
        as the reference scores an adapter absent from every server's lists.
        Scores of ineligible endpoints are 0 in ``scores``. Totals are the weighted sums in
        float64 (``total = sum_s w_s * clamp(score_s, 0, 1)``, in profile order, then extras).
        ``reserve`` adds 1 request and the primary's uncached prompt tokens
        (prompt_tokens - matched_blocks*block_tokens, floored at 0) to its in-flight counters.
        ``charge`` (>= 0) more tokens go to the primary with the reservation, in the same step
        (a per-request charge no other pick can slip in front of).
        """

    def pick_reserve(
        self,
        profile: Profile,
        hashes: npt.NDArray[np.uint64] | None,
        prompt_tokens: int,
        block_tokens: int,
        lora: int,
        k: int,
        charge: int = 0,
    ) -> tuple[list[int], int, int, int]:
        """``pick(profile, hashes=..., prompt_tokens=..., block_tokens=..., lora=..., k=...,
        charge=...)`` with reserve and record on, no candidates and no extra scores -- the
        gateway's per-request call -- with positional arguments and a plain tuple back:
        (ranked endpoints, the primary's matched blocks (0 if none), total blocks, uncached
        tokens). About half the call overhead of ``pick``.
        """

    def route(
        self,
        profile: Profile,
        prompt: bytes,
        seed: int,
        block_bytes: int,
        max_blocks: int,
        prompt_tokens: int,
        block_tokens: int,
        lora: int,
        k: int,
        charge: int,
        hot_charge: int,
        hot_factor: float,
        record: bool = True,
    ) -> tuple[list[int], int, int, int, npt.NDArray[np.uint64], bool]:
        """The gateway's whole per-request step in one call: ``hashes = hash_blocks(prompt,
        block_bytes, seed, max_blocks)``; when ``hot_factor`` > 0 and there are hashes,
        ``hot = self.hot(hashes[DEMAND_KEY_BLOCKS group index], hot_factor)`` and a hot
        request is charged ``hot_charge`` instead of ``charge``; then ``pick_reserve``.
        Returns (ranked, primary's matched blocks, total blocks, uncached tokens, hashes, hot).
        The group index is ``max(min(len(hashes) - 1, DEMAND_KEY_BLOCKS), 1) - 1``: the first
        blocks' hash, never the last (possibly partial) block's. ``record=False`` leaves the
        prompt's blocks out of the prefix index: the caller records them itself later
        (``PrefixIndex.record(ranked[0], hashes)``), e.g. once the request is on its way.
        """

    def hot(self, key: int, factor: float) -> bool:
        """Count one request of prefix group ``key`` (uint64) in this pool's recent demand
        (exponential decay over ~256 requests, bounded to ~4,096 groups; see
        ``igw.scheduling.demand``) and say whether the group's share of recent requests times
        the live endpoint count exceeds ``factor``."""

    def demand_groups(self) -> int:
        """Prefix groups the demand tracks (bounded)."""
