"""Pure-Python reference implementation of the ``igw._core`` API (see ``_core.pyi``).

Why it exists: it is the executable specification of the core. Property tests run random
workloads through it and through the C++ module and require the same answers; benchmarks
report the C++ speed-up against it. It is written to be obviously correct, not fast: plain
dicts, sets and ``OrderedDict`` LRUs, one lock per object, formulas spelled out once.

It must not depend on test-only packages, so XXH64 is written here from the published
xxHash specification (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md).
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import random
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

__version__ = "reference"

MAX_ADAPTERS = 256
UNKNOWN_ADAPTER = MAX_ADAPTERS  # pick(lora=...) for a requested adapter no endpoint has
DEMAND_KEY_BLOCKS = 8  # a prompt's prefix group: the hash of its first blocks (see route)
MAX_TABLE_CAPACITY = 65535


class Error(Exception):
    """The one error type raised by the core (bad arguments, unknown ids, full tables)."""


# ---------------------------------------------------------------------- argument checks
# The C++ core converts every argument itself and raises Error naming it; these helpers give
# the reference the same behaviour (Python's own float()/bool() would accept "3" or anything).


def _int_arg(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise Error(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def _seed_arg(name: str, value: object) -> int:
    seed = _int_arg(name, value)
    if not 0 <= seed <= _M64:
        raise Error(f"{name} must be an int in 0..2**64-1, got {seed}")
    return seed


def _float_arg(name: str, value: object) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise Error(f"{name} must be a number (int or float), got {type(value).__name__}")
    return float(value)


def _bool_arg(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise Error(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _str_arg(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise Error(f"{name} must be a str, got {type(value).__name__}")
    return value


def _bytes_arg(name: str, value: object) -> bytes:
    try:
        view = memoryview(value)  # type: ignore[arg-type]
    except TypeError:
        raise Error(
            f"{name} must be bytes, bytearray or a contiguous buffer, got {type(value).__name__}"
        ) from None
    return view.tobytes()  # copies a strided view (the C++ core rejects one instead)


def _strict(fn):
    """Turn a call of the wrong shape (missing / unexpected / surplus arguments) into Error,
    as the C++ core does; free on calls that fit (the signature is only checked on failure)."""
    sig = inspect.signature(fn)
    name = fn.__qualname__.replace(".__init__", "")

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TypeError:
            try:
                sig.bind(*args, **kwargs)
            except TypeError as exc:
                raise Error(f"{name}(): {exc}") from None
            raise

    return call


def _strict_methods(cls):
    """Apply ``_strict`` to a class's constructor and public methods."""
    for attr, value in list(vars(cls).items()):
        if inspect.isfunction(value) and (attr == "__init__" or not attr.startswith("_")):
            setattr(cls, attr, _strict(value))
    return cls


# ---------------------------------------------------------------------------- hashing

_M64 = (1 << 64) - 1
_P1 = 0x9E3779B185EBCA87
_P2 = 0xC2B2AE3D27D4EB4F
_P3 = 0x165667B19E3779F9
_P4 = 0x85EBCA77C2B2AE63
_P5 = 0x27D4EB2F165667C5


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _round(acc: int, lane: int) -> int:
    acc = (acc + lane * _P2) & _M64
    return (_rotl(acc, 31) * _P1) & _M64


def _merge(acc: int, val: int) -> int:
    acc ^= _round(0, val)
    return (acc * _P1 + _P4) & _M64


@_strict
def xxh64(data: bytes | bytearray | memoryview, seed: int = 0) -> int:
    """XXH64 of ``data`` per the published xxHash specification (matches ``xxhash.xxh64``)."""
    b = _bytes_arg("data", data)
    seed = _seed_arg("seed", seed)
    n = len(b)
    i = 0
    if n >= 32:
        v1 = (seed + _P1 + _P2) & _M64
        v2 = (seed + _P2) & _M64
        v3 = seed
        v4 = (seed - _P1) & _M64
        while i + 32 <= n:
            a, c, d, e = struct.unpack_from("<4Q", b, i)
            v1, v2, v3, v4 = _round(v1, a), _round(v2, c), _round(v3, d), _round(v4, e)
            i += 32
        acc = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _M64
        for v in (v1, v2, v3, v4):
            acc = _merge(acc, v)
    else:
        acc = (seed + _P5) & _M64
    acc = (acc + n) & _M64
    while i + 8 <= n:
        (lane,) = struct.unpack_from("<Q", b, i)
        acc ^= _round(0, lane)
        acc = (_rotl(acc, 27) * _P1 + _P4) & _M64
        i += 8
    if i + 4 <= n:
        (lane,) = struct.unpack_from("<I", b, i)
        acc ^= (lane * _P1) & _M64
        acc = (_rotl(acc, 23) * _P2 + _P3) & _M64
        i += 4
    while i < n:
        acc ^= (b[i] * _P5) & _M64
        acc = (_rotl(acc, 11) * _P1) & _M64
        i += 1
    acc ^= acc >> 33
    acc = (acc * _P2) & _M64
    acc ^= acc >> 29
    acc = (acc * _P3) & _M64
    acc ^= acc >> 32
    return acc


@_strict
def model_seed(model: str, cache_salt: str = "", lora: str = "") -> int:
    """Root of a prompt's hash chain: ``xxh64(model + b"\\0" + cache_salt + b"\\0" + lora)``."""
    args = (("model", model), ("cache_salt", cache_salt), ("lora", lora))
    parts = [_str_arg(name, value) for name, value in args]
    try:
        return xxh64(b"\0".join(p.encode() for p in parts))
    except UnicodeEncodeError:
        raise Error("model, cache_salt and lora must be text encodable as UTF-8") from None


def _chain(block_ids: list[int], seed: int) -> np.ndarray:
    out = np.empty(len(block_ids), dtype=np.uint64)
    prev = seed & _M64
    for i, block_id in enumerate(block_ids):
        prev = xxh64(struct.pack("<QQ", block_id, prev))
        out[i] = prev
    return out


def _check_blocks(size: int, max_blocks: int, what: str) -> None:
    size, max_blocks = _int_arg(what, size), _int_arg("max_blocks", max_blocks)
    if size < 1:
        raise Error(f"{what} must be >= 1, got {size}")
    if max_blocks < 0:
        raise Error(f"max_blocks must be >= 0, got {max_blocks}")


@_strict
def hash_blocks(
    data: bytes | bytearray | memoryview, block_bytes: int, seed: int, max_blocks: int = 0
) -> np.ndarray:
    """Chained block hashes of prompt bytes (see ``_core.pyi``)."""
    _check_blocks(block_bytes, max_blocks, "block_bytes")
    b = _bytes_arg("data", data)
    seed = _seed_arg("seed", seed)
    starts = range(0, len(b), block_bytes)
    if max_blocks:
        starts = starts[:max_blocks]
    return _chain([xxh64(b[s : s + block_bytes]) for s in starts], seed)


@_strict
def hash_token_blocks(
    tokens: np.ndarray, block_tokens: int, seed: int, max_blocks: int = 0
) -> np.ndarray:
    """As ``hash_blocks`` over the little-endian uint32 bytes of token ids."""
    _check_blocks(block_tokens, max_blocks, "block_tokens")
    arr = np.asarray(tokens)
    if arr.dtype != np.uint32 or arr.ndim != 1:
        raise Error(f"tokens must be a 1-d uint32 array, got {arr.dtype}[{arr.shape}]")
    return hash_blocks(arr.astype("<u4").tobytes(), block_tokens * 4, seed, max_blocks)


# ---------------------------------------------------------------------- endpoint table


def _bits(ids: list[int]) -> np.ndarray:
    words = np.zeros(4, dtype=np.uint64)
    for a in ids:
        words[a // 64] |= np.uint64(1 << (a % 64))
    return words


@dataclass
class _Row:
    live: bool = False
    ready: bool = False
    waiting: int = 0
    running: int = 0
    kv_util: float = 0.0
    kv_blocks: int = 0
    block_size: int = 0
    max_lora: int = 0
    lora_active: frozenset[int] = frozenset()
    lora_waiting: frozenset[int] = frozenset()
    inflight_requests: int = 0
    inflight_tokens: int = 0
    updated_at: float = 0.0
    prefill_rate: float = 0.0


class Snapshot:
    """A consistent copy of every endpoint's metrics, one numpy array per field."""

    def __init__(self, rows: list[_Row]) -> None:
        n = len(rows)
        self.active = np.array([r.live for r in rows], dtype=np.bool_)
        self.ready = np.array([r.live and r.ready for r in rows], dtype=np.bool_)
        self.waiting = np.array([r.waiting for r in rows], dtype=np.int32)
        self.running = np.array([r.running for r in rows], dtype=np.int32)
        self.kv_util = np.array([r.kv_util for r in rows], dtype=np.float32)
        self.kv_blocks = np.array([r.kv_blocks for r in rows], dtype=np.int64)
        self.block_size = np.array([r.block_size for r in rows], dtype=np.int32)
        self.max_lora = np.array([r.max_lora for r in rows], dtype=np.int32)
        self.lora_active = np.zeros((n, 4), dtype=np.uint64)
        self.lora_waiting = np.zeros((n, 4), dtype=np.uint64)
        for i, r in enumerate(rows):
            self.lora_active[i] = _bits(sorted(r.lora_active))
            self.lora_waiting[i] = _bits(sorted(r.lora_waiting))
        self.inflight_requests = np.array([r.inflight_requests for r in rows], dtype=np.int32)
        self.inflight_tokens = np.array([r.inflight_tokens for r in rows], dtype=np.int64)
        self.updated_at = np.array([r.updated_at for r in rows], dtype=np.float64)
        self.prefill_rate = np.array([r.prefill_rate for r in rows], dtype=np.float32)


@_strict_methods
class EndpointTable:
    """Structure-of-arrays metrics of up to ``capacity`` endpoints (capacity <= 65535)."""

    def __init__(self, capacity: int = 4096) -> None:
        capacity = _int_arg("capacity", capacity)
        if not 1 <= capacity <= MAX_TABLE_CAPACITY:
            raise Error(f"capacity must be in 1..{MAX_TABLE_CAPACITY}, got {capacity}")
        self._capacity = capacity
        self._rows: list[_Row] = []
        self._adapters: list[str] = []
        self._adapter_ids: dict[str, int] = {}
        self._version = 0  # see the version property
        self._lock = threading.RLock()

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def version(self) -> int:
        """Bumped by add, remove, update, set_ready and set_prefill_rate (not add_inflight)."""
        return self._version

    @property
    def high_water(self) -> int:
        return len(self._rows)

    def __len__(self) -> int:
        with self._lock:
            return sum(r.live for r in self._rows)

    def add(self) -> int:
        with self._lock:
            for i, r in enumerate(self._rows):
                if not r.live:
                    self._rows[i] = _Row(live=True)
                    self._version += 1
                    return i
            if len(self._rows) >= self._capacity:
                raise Error(f"endpoint table is full (capacity {self._capacity})")
            self._rows.append(_Row(live=True))
            self._version += 1
            return len(self._rows) - 1

    def _row(self, endpoint: int) -> _Row:
        endpoint = _int_arg("endpoint", endpoint)
        if not 0 <= endpoint < len(self._rows) or not self._rows[endpoint].live:
            raise Error(f"endpoint {endpoint} is not a live endpoint id")
        return self._rows[endpoint]

    def remove(self, endpoint: int) -> None:
        with self._lock:
            self._row(endpoint)
            self._rows[endpoint] = _Row()
            while self._rows and not self._rows[-1].live:
                self._rows.pop()
            self._version += 1

    def is_live(self, endpoint: int) -> bool:
        endpoint = _int_arg("endpoint", endpoint)
        with self._lock:
            return 0 <= endpoint < len(self._rows) and self._rows[endpoint].live

    def _adapter_set(self, name: str, ids: list[int] | None, old: frozenset[int]):
        if ids is None:
            return old
        if not isinstance(ids, (list, tuple)):
            got = type(ids).__name__
            raise Error(f"{name} must be a list of adapter ids (int) or None, got {got}")
        out = set()
        for a in ids:
            a = _int_arg(name, a)
            if not 0 <= a < len(self._adapters):
                raise Error(f"{name}: adapter id {a} is not registered (see adapter_id)")
            out.add(a)
        return frozenset(out)

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
        with self._lock:
            row = self._row(endpoint)
            waiting, running = _int_arg("waiting", waiting), _int_arg("running", running)
            if waiting < 0 or running < 0:
                raise Error(f"waiting and running must be >= 0, got {waiting}, {running}")
            kv = _float_arg("kv_util", kv_util)
            if not (-1e-6 <= kv <= 1 + 1e-6):
                raise Error(f"kv_util must be within 0..1, got {kv_util}")
            now = _float_arg("now", now)
            if not math.isfinite(now):
                raise Error(f"now must be finite, got {now}")
            opts = {"kv_blocks": kv_blocks, "block_size": block_size, "max_lora": max_lora}
            for name, value in opts.items():
                if _int_arg(name, value) < -1:
                    raise Error(f"{name} must be >= 0 (or -1 to keep), got {value}")
            active = self._adapter_set("lora_active", lora_active, row.lora_active)
            waiting_set = self._adapter_set("lora_waiting", lora_waiting, row.lora_waiting)
            row.waiting, row.running = waiting, running
            row.kv_util = min(1.0, max(0.0, kv))
            row.updated_at = float(now)
            for name, value in opts.items():
                if value >= 0:
                    setattr(row, name, int(value))
            row.lora_active, row.lora_waiting = active, waiting_set
            self._version += 1

    def set_ready(self, endpoint: int, ready: bool) -> None:
        with self._lock:
            row = self._row(endpoint)
            row.ready = _bool_arg("ready", ready)
            self._version += 1

    def set_prefill_rate(self, endpoint: int, tokens_per_second: float) -> None:
        with self._lock:
            row = self._row(endpoint)
            rate = _float_arg("tokens_per_second", tokens_per_second)
            if not math.isfinite(rate) or rate < 0:
                raise Error(f"tokens_per_second must be finite and >= 0, got {tokens_per_second}")
            row.prefill_rate = rate
            self._version += 1

    def add_inflight(self, endpoint: int, requests: int, tokens: int) -> None:
        requests, tokens = _int_arg("requests", requests), _int_arg("tokens", tokens)
        with self._lock:
            row = self._row(endpoint)
            row.inflight_requests = max(0, row.inflight_requests + requests)
            row.inflight_tokens = max(0, row.inflight_tokens + tokens)

    def inflight_requests_of(self, endpoint: int) -> int:
        with self._lock:
            return self._row(endpoint).inflight_requests

    def adapter_id(self, name: str) -> int:
        name = _str_arg("name", name)
        with self._lock:
            if name in self._adapter_ids:
                return self._adapter_ids[name]
            if len(self._adapters) >= MAX_ADAPTERS:
                raise Error(f"adapter registry is full ({MAX_ADAPTERS} names); cannot add {name!r}")
            self._adapter_ids[name] = len(self._adapters)
            self._adapters.append(name)
            return len(self._adapters) - 1

    def find_adapter(self, name: str) -> int:
        """Id of a registered adapter name, -1 if unknown; never registers."""
        name = _str_arg("name", name)
        with self._lock:
            return self._adapter_ids.get(name, -1)

    def adapter_name(self, adapter: int) -> str:
        adapter = _int_arg("adapter", adapter)
        with self._lock:
            if not 0 <= adapter < len(self._adapters):
                raise Error(f"adapter id {adapter} is not registered")
            return self._adapters[adapter]

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot([_Row(**vars(r)) for r in self._rows])

    def inflight(self) -> tuple[np.ndarray, np.ndarray]:
        """The snapshot's ``inflight_requests`` and ``inflight_tokens`` arrays alone."""
        with self._lock:
            requests = np.array([r.inflight_requests for r in self._rows], dtype=np.int32)
            tokens = np.array([r.inflight_tokens for r in self._rows], dtype=np.int64)
            return requests, tokens


# ------------------------------------------------------------------------ prefix index


def _hash_array(hashes: object) -> list[int]:
    arr = hashes if isinstance(hashes, np.ndarray) else None
    if arr is None or arr.dtype != np.uint64 or arr.ndim != 1:
        got = f"{arr.dtype}[{arr.shape}]" if arr is not None else type(hashes).__name__
        raise Error(f"hashes must be a 1-d uint64 numpy array, got {got}")
    return [int(h) for h in arr]


@_strict_methods
class PrefixIndex:
    """Block hash -> endpoints holding it, with a bounded LRU of blocks per endpoint."""

    def __init__(self, max_endpoints: int = 4096, default_capacity: int = 31250) -> None:
        max_endpoints = _int_arg("max_endpoints", max_endpoints)
        default_capacity = _int_arg("default_capacity", default_capacity)
        if not 1 <= max_endpoints <= MAX_TABLE_CAPACITY:
            raise Error(f"max_endpoints must be in 1..{MAX_TABLE_CAPACITY}, got {max_endpoints}")
        if default_capacity < 0:
            raise Error(f"default_capacity must be >= 0, got {default_capacity}")
        self._max = max_endpoints
        self._default = default_capacity
        self._holders: dict[int, set[int]] = {}
        self._lru: dict[int, OrderedDict[int, None]] = {}  # last item = most recent
        self._capacity: dict[int, int] = {}
        self._seen = 0
        self._lock = threading.RLock()

    def _check(self, endpoint: int) -> int:
        endpoint = _int_arg("endpoint", endpoint)
        if not 0 <= endpoint < self._max:
            raise Error(f"endpoint {endpoint} out of range 0..{self._max - 1}")
        self._seen = max(self._seen, endpoint + 1)
        return endpoint

    def _evict_to(self, endpoint: int, limit: int) -> None:
        lru = self._lru.get(endpoint)
        while lru and len(lru) > limit:
            h, _ = lru.popitem(last=False)
            holders = self._holders[h]
            holders.discard(endpoint)
            if not holders:
                del self._holders[h]

    def set_capacity(self, endpoint: int, blocks: int) -> None:
        blocks = _int_arg("blocks", blocks)
        if blocks < 0:
            raise Error(f"blocks must be >= 0, got {blocks}")
        with self._lock:
            endpoint = self._check(endpoint)
            self._capacity[endpoint] = blocks
            self._evict_to(endpoint, blocks)

    def capacity_of(self, endpoint: int) -> int:
        with self._lock:
            return self._capacity.get(self._check(endpoint), self._default)

    def record(self, endpoint: int, hashes: np.ndarray) -> None:
        values = _hash_array(hashes)
        with self._lock:
            endpoint = self._check(endpoint)
            cap = self._capacity.get(endpoint, self._default)
            lru = self._lru.setdefault(endpoint, OrderedDict())
            for h in reversed(values):  # block 0 ends most recent
                if h in lru:
                    lru.move_to_end(h)
                else:
                    lru[h] = None
                    self._holders.setdefault(h, set()).add(endpoint)
                    self._evict_to(endpoint, cap)

    def match(self, hashes: np.ndarray) -> np.ndarray:
        values = _hash_array(hashes)
        with self._lock:
            out = np.zeros(self._seen, dtype=np.int32)
            alive = set(range(self._seen))
            for i, h in enumerate(values):
                alive &= self._holders.get(h, set())
                if not alive:
                    break
                for e in alive:
                    out[e] = i + 1
            return out

    def remove_endpoint(self, endpoint: int) -> None:
        with self._lock:
            endpoint = self._check(endpoint)
            self._evict_to(endpoint, 0)
            self._lru.pop(endpoint, None)
            self._capacity.pop(endpoint, None)

    def entries(self) -> int:
        with self._lock:
            return sum(len(lru) for lru in self._lru.values())

    def endpoint_entries(self, endpoint: int) -> int:
        with self._lock:
            return len(self._lru.get(self._check(endpoint), ()))

    def blocks(self) -> int:
        with self._lock:
            return len(self._holders)

    def memory_bytes(self) -> int:
        """A rough count: CPython dict/set entries are ~100 bytes per (block, endpoint)."""
        return 100 * self.entries()


# --------------------------------------------------------------------------- scheduler

_PARAMS: dict[str, dict[str, float]] = {
    "queue-scorer": {},
    "running-requests-size-scorer": {},
    "kv-cache-utilization-scorer": {},
    "prefix-cache-scorer": {"matchLengthWeight": 0.0, "scaleTokens": 8192.0},
    "lora-affinity-scorer": {},
    "active-request-scorer": {"idleThreshold": 0.0, "maxBusyScore": 1.0},
    "token-load-scorer": {"queueThresholdTokens": 4194304.0},
    "load-aware-scorer": {"queueThreshold": 128.0},
    "predicted-ttft-scorer": {"defaultPrefillRate": 8000.0, "waitingTokens": 512.0},
}
_FILTERS: dict[str, dict[str, float]] = {
    "new-prefix-spread-filter": {"newPrefixFraction": 0.3, "tolerance": 0.0},
}
_PICKERS = ("max-score-picker", "weighted-random-picker", "random-picker")


def _check_param(kind: str, key: str, value: float) -> None:
    """Range checks shared with the C++ core (which keys must be positive etc.)."""
    positive = {"scaleTokens", "queueThresholdTokens", "queueThreshold", "defaultPrefillRate"}
    if key in {"matchLengthWeight", "newPrefixFraction"} and not 0.0 <= value <= 1.0:
        raise Error(f"{kind}: parameter {key} must be within 0..1, got {value}")
    if key in positive and not value > 0:
        raise Error(f"{kind}: parameter {key} must be > 0, got {value}")
    if key in {"idleThreshold", "maxBusyScore", "waitingTokens", "tolerance"} and value < 0:
        raise Error(f"{kind}: parameter {key} must be >= 0, got {value}")


@_strict_methods
class Profile:
    """A scheduling profile: filters, weighted scorers and one picker (see ``_core.pyi``)."""

    def __init__(
        self,
        scorers: list[tuple[str, float, dict[str, float]]],
        picker: str = "max-score-picker",
    ) -> None:
        self._scorers: list[tuple[str, float, dict[str, float]]] = []
        self._filters: list[tuple[str, dict[str, float]]] = []
        if isinstance(scorers, (str, bytes)) or not isinstance(scorers, (list, tuple)):
            raise Error("scorers must be a list of (type, weight, params) tuples")
        for n, item in enumerate(scorers):
            if isinstance(item, str) or not isinstance(item, (list, tuple)) or len(item) != 3:
                raise Error(f"scorers[{n}] must be a (type, weight, params) tuple")
            kind, weight, params = item
            if not isinstance(kind, str):
                raise Error(f"scorers[{n}]: type must be a str")
            defaults = _PARAMS.get(kind, _FILTERS.get(kind))
            if defaults is None:
                known, filters = ", ".join(sorted(_PARAMS)), ", ".join(sorted(_FILTERS))
                raise Error(
                    f"scorers[{n}]: unknown scorer type {kind!r}; known: {known}; "
                    f"filters: {filters}"
                )
            try:
                weight = _float_arg("weight", weight)
            except Error:
                raise Error(
                    f"scorers[{n}] ({kind}): weight must be a number, got {type(weight).__name__}"
                ) from None
            if not math.isfinite(weight) or weight < 0:
                raise Error(f"scorers[{n}] ({kind}): weight must be finite and >= 0, got {weight}")
            merged = dict(defaults)
            if params is not None and not isinstance(params, dict):
                raise Error(f"scorers[{n}]: params must be a dict")
            for key, value in (params or {}).items():
                if key not in merged:
                    allowed = ", ".join(sorted(defaults)) or "none"
                    raise Error(f"{kind}: unknown parameter {key!r}; allowed: {allowed}")
                try:
                    value = _float_arg("value", value)
                except Error:
                    raise Error(
                        f"{kind}: parameter {key} must be a number, got {type(value).__name__}"
                    ) from None
                if not math.isfinite(value):
                    raise Error(f"{kind}: parameter {key} must be finite, got {value}")
                _check_param(kind, key, value)
                merged[key] = value
            if kind in _FILTERS:
                self._filters.append((kind, merged))
            else:
                self._scorers.append((kind, weight, merged))
        picker = _str_arg("picker", picker)
        if picker not in _PICKERS:
            raise Error(f"unknown picker {picker!r}; known: {', '.join(_PICKERS)}")
        self.picker = picker

    @property
    def scorer_types(self) -> list[str]:
        return [kind for kind, _, _ in self._scorers]

    @property
    def filter_types(self) -> list[str]:
        return [kind for kind, _ in self._filters]


@dataclass
class PickResult:
    endpoints: list[int]
    matched_blocks: np.ndarray
    total_blocks: int
    uncached_tokens: int
    scores: dict[str, np.ndarray] | None


def _minmax(values: list[float]) -> list[float]:
    lo, hi = min(values), max(values)
    if hi == lo:
        return [1.0] * len(values)
    return [(hi - v) / (hi - lo) for v in values]


def _sq(x: float) -> float:
    return x * x


def _score(
    kind: str, p: dict[str, float], rows: list[_Row], matched: list[int], ctx: dict
) -> list[float]:
    """One scorer's value for each eligible row, before clamping to [0, 1]."""
    if kind == "queue-scorer":
        return _minmax([float(r.waiting) for r in rows])
    if kind == "running-requests-size-scorer":
        return _minmax([float(r.running) for r in rows])
    if kind == "kv-cache-utilization-scorer":
        return [1.0 - float(np.float32(r.kv_util)) for r in rows]
    if kind == "load-aware-scorer":
        t = p["queueThreshold"]
        return [0.5 if r.waiting == 0 else 0.5 * (1.0 - min(r.waiting, t) / t) for r in rows]
    if kind == "active-request-scorer":
        top = max(r.inflight_requests for r in rows)
        return [
            1.0
            if r.inflight_requests <= p["idleThreshold"]
            else (top - r.inflight_requests) / top * p["maxBusyScore"]
            for r in rows
        ]
    if kind == "token-load-scorer":
        t = p["queueThresholdTokens"]
        out = []
        for r, unc in zip(rows, ctx["uncached"], strict=True):
            tokens = r.inflight_tokens + unc
            out.append(1.0 if tokens == 0 else 1.0 - min(tokens, t) / t)
        return out
    if kind == "lora-affinity-scorer":
        adapter = ctx["lora"]
        if adapter < 0:
            return [1.0] * len(rows)
        out = []
        for r in rows:
            if adapter in r.lora_active:
                out.append(1.0)
            elif len(r.lora_active) + len(r.lora_waiting) < r.max_lora:
                out.append(0.8)
            elif adapter in r.lora_waiting:
                out.append(0.6)
            else:
                out.append(0.0)
        return out
    if kind == "prefix-cache-scorer":
        total = ctx["total_blocks"]
        if total == 0:
            return [0.0] * len(rows)
        w, scale, bt = p["matchLengthWeight"], p["scaleTokens"], ctx["block_tokens"]
        return [w * _sq(min(1.0, m * bt / scale)) + (1.0 - w) * m / total for m in matched]
    if kind == "predicted-ttft-scorer":
        ttft = []
        for r, unc in zip(rows, ctx["uncached"], strict=True):
            rate = float(np.float32(r.prefill_rate)) or p["defaultPrefillRate"]
            work = r.inflight_tokens + r.waiting * p["waitingTokens"] + unc
            ttft.append(work / rate)
        best = min(ttft)
        return [1.0 if t <= 0.0 else best / t for t in ttft]
    raise Error(f"unknown scorer type {kind!r}")  # unreachable: Profile validates


def _spread(
    p: dict[str, float], eligible: list[int], matched: np.ndarray, total: int, index: PrefixIndex
) -> list[int]:
    """new-prefix-spread-filter (see ``_core.pyi``): the eligible endpoints it keeps.

    New means no endpoint of the table, eligible or not, holds more than
    ``newPrefixFraction`` of the prompt's blocks; then the endpoints with the fewest
    prefix-index entries (within ``tolerance``, relative) stay."""
    if total == 0 or len(eligible) < 2:
        return eligible
    most = int(matched.max()) if len(matched) else 0
    if most > p["newPrefixFraction"] * total:
        return eligible
    sizes = [float(len(index._lru.get(e, ()))) for e in eligible]  # no _check: it bumps _seen
    limit = min(sizes) * (1.0 + p["tolerance"])
    return [e for e, size in zip(eligible, sizes, strict=True) if size <= limit]


def _apply_filters(
    profile: Profile, eligible: list[int], matched: np.ndarray, total: int, index: PrefixIndex
) -> list[int]:
    for kind, params in profile._filters:
        if kind == "new-prefix-spread-filter":
            eligible = _spread(params, eligible, matched, total, index)
    return eligible


@_strict_methods
class Scheduler:
    """Runs profiles over an EndpointTable and PrefixIndex (see ``_core.pyi``)."""

    def __init__(self, table: EndpointTable, index: PrefixIndex, seed: int = 0) -> None:
        if not isinstance(table, EndpointTable):
            raise Error(f"table must be a core_reference EndpointTable, got {type(table).__name__}")
        if not isinstance(index, PrefixIndex):
            raise Error(f"index must be a core_reference PrefixIndex, got {type(index).__name__}")
        seed = _seed_arg("seed", seed)
        if index._max < table.capacity:
            raise Error(
                f"PrefixIndex max_endpoints ({index._max}) must be >= EndpointTable "
                f"capacity ({table.capacity})"
            )
        self._table = table
        self._index = index
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        # imported here: igw.scheduling imports this module's users (no cycle at load time)
        from igw.scheduling.demand import PrefixDemand

        self._demand = PrefixDemand()

    def pick(
        self,
        profile: Profile,
        *,
        hashes: np.ndarray | None = None,
        prompt: bytes | None = None,
        block_bytes: int = 256,
        seed: int = 0,
        max_blocks: int = 0,
        prompt_tokens: int = 0,
        block_tokens: int = 64,
        lora: int = -1,
        candidates: np.ndarray | None = None,
        k: int = 1,
        extra_scores: np.ndarray | None = None,
        extra_weights: list[float] | None = None,
        reserve: bool = True,
        record: bool = True,
        with_scores: bool = False,
        charge: int = 0,
    ) -> PickResult:
        if not isinstance(profile, Profile):
            raise Error(f"profile must be a core_reference Profile, got {type(profile).__name__}")
        charge = _int_arg("charge", charge)
        if charge < 0:
            raise Error(f"charge must be >= 0, got {charge}")
        block_bytes = _int_arg("block_bytes", block_bytes)
        max_blocks = _int_arg("max_blocks", max_blocks)
        seed = _seed_arg("seed", seed)
        prompt_tokens = _int_arg("prompt_tokens", prompt_tokens)
        block_tokens = _int_arg("block_tokens", block_tokens)
        lora, k = _int_arg("lora", lora), _int_arg("k", k)
        reserve, record = _bool_arg("reserve", reserve), _bool_arg("record", record)
        with_scores = _bool_arg("with_scores", with_scores)
        if k < 1:
            raise Error(f"k must be >= 1, got {k}")
        if prompt_tokens < 0 or block_tokens < 1:
            raise Error("prompt_tokens must be >= 0 and block_tokens >= 1")
        if lora > UNKNOWN_ADAPTER:
            raise Error(
                "lora must be -1 (none), an adapter id in 0..255 or 256 (unknown adapter), "
                f"got {lora}"
            )
        lora = max(lora, -1)
        if prompt is not None:
            if hashes is not None:
                raise Error("pass either hashes or prompt, not both")
            hashes = hash_blocks(_bytes_arg("prompt", prompt), block_bytes, seed, max_blocks)
        with self._lock, self._table._lock, self._index._lock:
            rows = self._table._rows
            n = len(rows)
            if candidates is not None:
                cand = candidates
                if not isinstance(cand, np.ndarray) or cand.dtype != np.bool_ or cand.ndim != 1:
                    raise Error("candidates must be a 1-d bool numpy array")
                if len(cand) < n:
                    raise Error(f"candidates has length {len(cand)}, expected >= {n}")
            extra = self._extra(extra_scores, extra_weights, n)
            hash_list = [] if hashes is None else hashes
            total_blocks = 0 if hashes is None else len(_hash_array(hashes))
            full = self._index.match(hashes) if hashes is not None else np.zeros(0, np.int32)
            matched_all = np.zeros(n, dtype=np.int32)
            m = min(n, len(full))
            matched_all[:m] = full[:m]
            eligible = [
                e
                for e in range(n)
                if rows[e].live and rows[e].ready and (candidates is None or bool(candidates[e]))
            ]
            eligible = _apply_filters(profile, eligible, matched_all, total_blocks, self._index)
            unc_all = [max(0, prompt_tokens - int(matched_all[e]) * block_tokens) for e in range(n)]
            scores: dict[str, np.ndarray] = {}
            total = [0.0] * len(eligible)
            if with_scores:  # every scorer gets an array, even with nothing eligible
                for kind, _, _ in profile._scorers:
                    scores[kind] = np.zeros(n, dtype=np.float32)
                for j in range(len(extra)):
                    scores[f"extra[{j}]"] = np.zeros(n, dtype=np.float32)
            if eligible:
                erows = [rows[e] for e in eligible]
                ctx = {
                    "uncached": [unc_all[e] for e in eligible],
                    "lora": lora,
                    "total_blocks": total_blocks,
                    "block_tokens": block_tokens,
                }
                ematched = [int(matched_all[e]) for e in eligible]
                for kind, weight, params in profile._scorers:
                    raw = _score(kind, params, erows, ematched, ctx)
                    vals = [min(1.0, max(0.0, v)) for v in raw]
                    total = [t + weight * v for t, v in zip(total, vals, strict=True)]
                    if with_scores:
                        arr = scores.setdefault(kind, np.zeros(n, dtype=np.float32))
                        arr[eligible] = vals
                for j, (weight, row) in enumerate(extra):
                    vals = [min(1.0, max(0.0, float(row[e]))) for e in eligible]
                    total = [t + weight * v for t, v in zip(total, vals, strict=True)]
                    if with_scores:
                        scores[f"extra[{j}]"] = np.zeros(n, dtype=np.float32)
                        scores[f"extra[{j}]"][eligible] = vals
            if with_scores:
                tot = np.zeros(n, dtype=np.float32)
                tot[eligible] = total
                scores["total"] = tot
            ranked = self._rank(profile.picker, eligible, total, k)
            uncached = unc_all[ranked[0]] if ranked else 0
            if ranked and reserve:
                self._table.add_inflight(ranked[0], 1, uncached + charge)
            if ranked and record and len(hash_list):
                self._index.record(ranked[0], hashes)
            return PickResult(
                endpoints=ranked,
                matched_blocks=matched_all,
                total_blocks=total_blocks,
                uncached_tokens=uncached,
                scores=scores if with_scores else None,
            )

    def pick_reserve(
        self,
        profile: Profile,
        hashes: np.ndarray | None,
        prompt_tokens: int,
        block_tokens: int,
        lora: int,
        k: int,
        charge: int = 0,
    ) -> tuple[list[int], int, int, int]:
        result = self.pick(
            profile, hashes=hashes, prompt_tokens=prompt_tokens, block_tokens=block_tokens,
            lora=lora, k=k, charge=charge,
        )  # fmt: skip
        ranked = result.endpoints
        matched = 0
        if ranked and ranked[0] < len(result.matched_blocks):
            matched = int(result.matched_blocks[ranked[0]])
        return ranked, matched, result.total_blocks, result.uncached_tokens

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
    ) -> tuple[list[int], int, int, int, np.ndarray, bool]:
        if hot_charge < 0:
            raise Error(f"hot_charge must be >= 0, got {hot_charge}")
        if not math.isfinite(hot_factor):
            raise Error("hot_factor must be finite")
        hashes = hash_blocks(prompt, block_bytes, seed, max_blocks)
        hot = False
        if hot_factor > 0 and len(hashes):
            hot = self.hot(int(hashes[max(min(len(hashes) - 1, DEMAND_KEY_BLOCKS), 1) - 1]),
                           hot_factor)  # fmt: skip
            if hot:
                charge = hot_charge
        if record:
            ranked, matched, total, uncached = self.pick_reserve(
                profile, hashes, prompt_tokens, block_tokens, lora, k, charge
            )
            return ranked, matched, total, uncached, hashes, hot
        result = self.pick(
            profile, hashes=hashes, prompt_tokens=prompt_tokens, block_tokens=block_tokens,
            lora=lora, k=k, charge=charge, record=False,
        )  # fmt: skip
        ranked = result.endpoints
        matched = 0
        if ranked and ranked[0] < len(result.matched_blocks):
            matched = int(result.matched_blocks[ranked[0]])
        return ranked, matched, result.total_blocks, result.uncached_tokens, hashes, hot

    def hot(self, key: int, factor: float) -> bool:
        key = _seed_arg("key", key)
        factor = _float_arg("factor", factor)
        if not math.isfinite(factor):
            raise Error("factor must be finite")
        with self._lock:
            return self._demand.is_hot(key, len(self._table), factor)

    def demand_groups(self) -> int:
        with self._lock:
            return len(self._demand)

    def filter(
        self,
        profile: Profile,
        *,
        hashes: np.ndarray | None = None,
        candidates: np.ndarray | None = None,
    ) -> np.ndarray:
        if not isinstance(profile, Profile):
            raise Error(f"profile must be a core_reference Profile, got {type(profile).__name__}")
        with self._lock, self._table._lock, self._index._lock:
            rows = self._table._rows
            n = len(rows)
            if candidates is not None:
                if (
                    not isinstance(candidates, np.ndarray)
                    or candidates.dtype != np.bool_
                    or candidates.ndim != 1
                ):
                    raise Error("candidates must be a 1-d bool numpy array")
                if len(candidates) < n:
                    raise Error(f"candidates has length {len(candidates)}, expected >= {n}")
                keep = candidates.copy()
            else:
                keep = np.ones(n, dtype=np.bool_)
            total = 0 if hashes is None else len(_hash_array(hashes))
            full = self._index.match(hashes) if hashes is not None else np.zeros(0, np.int32)
            matched = np.zeros(n, dtype=np.int32)
            m = min(n, len(full))
            matched[:m] = full[:m]
            eligible = [e for e in range(n) if rows[e].live and rows[e].ready and keep[e]]
            kept = set(_apply_filters(profile, eligible, matched, total, self._index))
            for e in eligible:
                if e not in kept:
                    keep[e] = False
            return keep

    @staticmethod
    def _extra(extra_scores, extra_weights, n) -> list[tuple[float, np.ndarray]]:
        if extra_scores is None and extra_weights is None:
            return []
        if extra_scores is None or extra_weights is None:
            raise Error("extra_scores and extra_weights must be given together")
        arr = extra_scores
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.ndim != 2:
            raise Error("extra_scores must be a 2-d float32 numpy array [m, high_water]")
        if arr.shape[0] != len(extra_weights) or arr.shape[1] < n:
            raise Error(
                f"extra_scores has shape {arr.shape}, expected ({len(extra_weights)}, >= {n})"
            )
        out = []
        for j, w in enumerate(extra_weights):
            w = _float_arg(f"extra_weights[{j}]", w)
            if not math.isfinite(w) or w < 0:
                raise Error(f"extra_weights[{j}] must be finite and >= 0, got {w}")
            out.append((w, np.nan_to_num(arr[j], nan=0.0)))
        return out

    def _rank(self, picker: str, eligible: list[int], total: list[float], k: int) -> list[int]:
        order = list(range(len(eligible)))
        self._rng.shuffle(order)
        if picker == "max-score-picker":
            order.sort(key=lambda j: -total[j])
        elif picker == "weighted-random-picker" and any(t > 0 for t in total):
            keys = {}
            for j in order:
                u = 1.0 - self._rng.random()  # (0, 1]
                keys[j] = u ** (1.0 / total[j]) if total[j] > 0 else 0.0
            order.sort(key=lambda j: -keys[j])
        return [eligible[j] for j in order[:k]]
