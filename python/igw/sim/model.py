"""The latency model of one simulated vLLM replica, as pure logic over a virtual clock.

Nothing here touches asyncio or sockets: ``Engine.schedule()`` picks the next batch and says
how long that forward pass takes (model milliseconds), ``Engine.finish_step(step, now)``
applies it. The replica's asyncio task (``igw.sim.replica``) sleeps ``duration / speed``
between the two; unit tests drive the same engine with a fake clock, so the model is
deterministic given arrival order.

What is modelled, and why it matters for routing:

* **KV cache of token blocks with prefix caching** (``KVCache``). A prompt's full blocks are
  identified by chained hashes (block i's hash covers blocks 0..i), so a block hits only when
  the whole prefix up to it matches. Blocks of finished requests stay resident (reference
  count 0) and are evicted least-recently-used, tail blocks first, when space is needed -
  the behaviour that makes prefix-aware routing pay off and that round-robin thrashes.
* **Continuous batching** like vLLM's V1 scheduler: each step first serves running requests
  (one decode token each, or the next chunk of a chunked prefill) within a token budget
  (``max_num_batched_tokens``), then admits waiting requests in FCFS order while there is
  budget, a free sequence slot (``max_num_seqs``), KV room and a LoRA slot. When a decoding
  request needs a block and none is free, the most recently admitted request is preempted
  (its blocks freed, recomputed later), as vLLM does.
* **Step time** = fixed cost per forward pass (reading the weights) + prefill cost per
  uncached token (+ an attention term growing with the context already in the KV cache) +
  per decoding sequence cost + per KV token attended by decoding sequences + LoRA loads.
  Only *uncached* tokens are prefilled, so a cache hit cuts time to first token.
* **LoRA**: at most ``max_lora`` adapters resident; admitting a request whose adapter is not
  resident costs ``lora_load_ms`` and needs a slot not used by any running request.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any


def _f(default: float, help_text: str):
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(slots=True)
class EngineParams:
    """Every constant of the latency model; times in model milliseconds.

    The defaults are the ``default`` profile (a mid-range GPU); see ``igw.sim.profiles``.
    """

    block_size: int = _f(16, "tokens per KV-cache block (vLLM's default)")
    num_gpu_blocks: int = _f(2048, "KV-cache capacity in blocks")
    max_num_seqs: int = _f(256, "most requests running in one step")
    max_num_batched_tokens: int = _f(2048, "token budget of one step (chunked prefill)")
    max_model_len: int = _f(32768, "most prompt + output tokens of one request")
    max_lora: int = _f(4, "LoRA adapters resident at once (0: no LoRA)")
    decode_ms_per_step: float = _f(10.0, "fixed cost of any forward pass (reading the weights)")
    decode_ms_per_seq: float = _f(0.05, "cost per decoding request in a step")
    decode_ms_per_kv_token: float = _f(8e-5, "cost per KV-cache token a decoding request reads")
    prefill_ms_per_token: float = _f(0.1, "cost per uncached prompt token")
    prefill_ms_per_token_ctx: float = _f(
        0.0, "attention cost per prompt token per token of context before it"
    )
    lora_load_ms: float = _f(25.0, "cost of loading an adapter into a slot")
    bytes_per_token: int = _f(4, "prompt length estimate: bytes of text per token")
    output_len_min: int = _f(16, "shortest natural answer (tokens) when max_tokens allows")
    output_len_max: int = _f(128, "longest natural answer; chosen per prompt in [min, max]")

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "int":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"{field.name}: expected an integer, got {value!r}")
                least = 0 if field.name == "max_lora" else 1
                if value < least:
                    raise ValueError(f"{field.name}: expected an integer >= {least}, got {value}")
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{field.name}: expected a number, got {value!r}")
                if not (value >= 0 and math.isfinite(value)):  # also rejects NaN and inf
                    raise ValueError(f"{field.name}: expected a finite number >= 0, got {value}")
        if self.output_len_max < self.output_len_min:
            raise ValueError(
                f"output_len_max: expected >= output_len_min ({self.output_len_min}), "
                f"got {self.output_len_max}"
            )

    @property
    def block_bytes(self) -> int:
        """Bytes of prompt text per KV block (the unit the prefix cache hashes)."""
        return self.block_size * self.bytes_per_token

    def kv_token_capacity(self) -> int:
        return self.block_size * self.num_gpu_blocks


class KVCache:
    """Block accounting with a prefix cache: hashed blocks stay resident until evicted (LRU).

    A block is in one of three states: in use (reference count > 0; hashed or anonymous),
    cached-free (hashed, count 0, evictable, kept in LRU order) or empty. Capacity is
    ``num_blocks`` in total.
    """

    __slots__ = ("_free_lru", "_ref", "in_use", "num_blocks")

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._ref: dict[int, int] = {}  # hash -> reference count (resident hashed blocks)
        self._free_lru: OrderedDict[int, None] = OrderedDict()  # count-0 hashes, oldest first
        self.in_use = 0

    @property
    def usage(self) -> float:
        """Fraction of blocks held by requests (vLLM's ``kv_cache_usage_perc``)."""
        return self.in_use / self.num_blocks

    @property
    def resident_hashed(self) -> int:
        return len(self._ref)

    def match(self, hashes: list[int]) -> int:
        """How many leading blocks of ``hashes`` are resident."""
        ref = self._ref
        n = 0
        for h in hashes:
            if h not in ref:
                break
            n += 1
        return n

    def acquire(self, h: int) -> None:
        """Take a reference on resident block ``h``."""
        count = self._ref[h]
        if count == 0:
            del self._free_lru[h]
            self.in_use += 1
        self._ref[h] = count + 1

    def allocate(self, n: int) -> bool:
        """Claim ``n`` anonymous blocks, evicting cached-free ones if needed; False if full."""
        if n <= 0:
            return True
        if self.num_blocks - self.in_use < n:
            return False
        shortfall = n - (self.num_blocks - self.in_use - len(self._free_lru))
        for _ in range(shortfall):
            h, _ = self._free_lru.popitem(last=False)
            del self._ref[h]
        self.in_use += n
        return True

    def register(self, h: int) -> None:
        """Give one held anonymous block the identity ``h`` (its content is now known).

        If ``h`` is already resident (another request computed it meanwhile), the request
        shares that block and its anonymous one goes back to the pool.
        """
        if h in self._ref:
            self.in_use -= 1
            self.acquire(h)
        else:
            self._ref[h] = 1

    def release(self, h: int) -> None:
        """Drop one reference on hashed block ``h``; at zero it becomes most-recently freed."""
        count = self._ref[h] - 1
        self._ref[h] = count
        if count == 0:
            self._free_lru[h] = None
            self.in_use -= 1

    def release_anonymous(self, n: int) -> None:
        self.in_use -= n


# Hook the engine calls when a finished request's output blocks get their identity:
# (number of KV tokens held) -> hashes of every full block of prompt+output text, in order.
BlockHasher = Callable[[int], list[int]]


class Seq:
    """One request inside the engine. Times are model milliseconds on the engine's clock."""

    __slots__ = (
        "aborted",
        "anon_held",
        "arrival",
        "cached_tokens",
        "chunk",
        "computed",
        "finish_reason",
        "finished_at",
        "first_token_at",
        "full_hasher",
        "hashed_held",
        "hashes",
        "id",
        "listener",
        "lora",
        "output",
        "preemptions",
        "prefill_target",
        "prompt_tokens",
        "scheduled_at",
        "stop_reason",
        "target",
    )

    _ids = itertools.count()

    def __init__(
        self,
        prompt_tokens: int,
        hashes: list[int],
        target: int,
        *,
        lora: str | None = None,
        stop_reason: str = "length",
        arrival: float = 0.0,
        full_hasher: BlockHasher | None = None,
        listener: Any = None,
    ) -> None:
        if prompt_tokens < 1:
            raise ValueError(f"prompt_tokens: expected >= 1, got {prompt_tokens}")
        if target < 1:
            raise ValueError(f"target: expected >= 1 output token, got {target}")
        self.id = next(Seq._ids)
        self.prompt_tokens = prompt_tokens
        self.hashes = hashes  # chained hashes of the prompt's full blocks
        self.target = target  # output tokens to produce
        self.stop_reason = stop_reason  # finish_reason once target is reached
        self.lora = lora
        self.arrival = arrival
        self.full_hasher = full_hasher
        self.listener = listener  # opaque to the engine; the driver notifies it
        self.prefill_target = prompt_tokens  # tokens to compute before the next sample
        self.computed = 0  # tokens whose KV is computed
        self.output = 0  # tokens sampled
        self.hashed_held = 0  # leading blocks held by hash
        self.anon_held = 0  # further blocks held without identity
        self.chunk = 0  # tokens scheduled in the current step
        self.cached_tokens: int | None = None  # prefix-cache hit at first admission
        self.scheduled_at: float | None = None
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.finish_reason: str | None = None
        self.preemptions = 0
        self.aborted = False

    @property
    def blocks_held(self) -> int:
        return self.hashed_held + self.anon_held

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def __repr__(self) -> str:
        return (
            f"Seq(id={self.id}, prompt={self.prompt_tokens}, out={self.output}/{self.target}, "
            f"computed={self.computed})"
        )


@dataclasses.dataclass(slots=True)
class Step:
    """One forward pass: who runs in it and what it costs."""

    seqs: list[Seq] = dataclasses.field(default_factory=list)
    prefill_tokens: int = 0
    prefill_ctx: float = 0.0  # sum over prefill tokens of the context before them
    decode_seqs: int = 0
    decode_kv_tokens: int = 0
    lora_loads: int = 0
    duration_ms: float = 0.0


@dataclasses.dataclass(slots=True)
class EngineStats:
    """Monotonic counters exported as vLLM's ``*_total`` metrics."""

    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_hits: int = 0  # of which found
    prompt_tokens: int = 0
    generation_tokens: int = 0
    preemptions: int = 0
    steps: int = 0
    lora_loads: int = 0
    finished: dict[str, int] = dataclasses.field(default_factory=dict)  # by finish_reason


class Engine:
    """Continuous-batching scheduler over a ``KVCache``; see the module docstring."""

    def __init__(self, params: EngineParams) -> None:
        self.params = params
        self.cache = KVCache(params.num_gpu_blocks)
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        self.lora_resident: OrderedDict[str, None] = OrderedDict()  # LRU of loaded adapters
        self._lora_running: dict[str, int] = {}  # adapter -> running requests using it
        self.stats = EngineStats()

    # ------------------------------------------------------------------ requests in and out

    def check(self, prompt_tokens: int, max_output: int, lora: str | None = None) -> str | None:
        """Why a request can never be served here (a client error), or None."""
        p = self.params
        if lora is not None and p.max_lora == 0:
            return f"LoRA adapter {lora!r} requested but this server has max_lora=0."
        if prompt_tokens + max_output > p.max_model_len:
            return (
                f"This model's maximum context length is {p.max_model_len} tokens. However, "
                f"you requested {prompt_tokens + max_output} tokens ({prompt_tokens} in the "
                f"messages, {max_output} in the completion). Please reduce the length of the "
                "messages or completion."
            )
        need = -(-(prompt_tokens + max_output) // p.block_size)
        if need > p.num_gpu_blocks:
            return (
                f"The request needs {need} KV-cache blocks ({prompt_tokens} prompt + "
                f"{max_output} output tokens) but the cache holds only {p.num_gpu_blocks}."
            )
        return None

    def add(self, seq: Seq) -> None:
        self.waiting.append(seq)

    def abort(self, seq: Seq) -> None:
        """Drop a request (client went away); its blocks are freed at once."""
        if seq.aborted or seq.finished:
            return
        seq.aborted = True
        try:
            self.waiting.remove(seq)
            return
        except ValueError:
            pass
        if seq in self.running:
            self.running.remove(seq)
            self._free(seq)
            self._lora_release(seq)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    # --------------------------------------------------------------------------- stepping

    def schedule(self, now: float = 0.0) -> Step:
        """Choose the next batch starting at ``now`` (mutates block and slot state) and
        price it."""
        p = self.params
        step = Step()
        budget = p.max_num_batched_tokens
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            if seq.computed < seq.prefill_target:  # (chunked) prefill in progress
                self._schedule_prefill(seq, min(seq.prefill_target - seq.computed, budget), step)
                budget -= seq.chunk
                i += 1
                continue
            # Decode: the KV slot of the token being computed must exist.
            need = -(-(seq.computed + 1) // p.block_size) - seq.blocks_held
            if need > 0 and not self._allocate_or_preempt(seq, need):
                break  # seq itself was preempted (it was the last one)
            seq.anon_held += max(need, 0)
            seq.chunk = 1
            budget -= 1
            step.seqs.append(seq)
            step.decode_seqs += 1
            step.decode_kv_tokens += seq.computed + 1
            i += 1
        for seq in running[i:]:
            seq.chunk = 0
        self._admit(step, budget, now)
        step.duration_ms = (
            p.decode_ms_per_step
            + p.prefill_ms_per_token * step.prefill_tokens
            + p.prefill_ms_per_token_ctx * step.prefill_ctx
            + p.decode_ms_per_seq * step.decode_seqs
            + p.decode_ms_per_kv_token * step.decode_kv_tokens
            + p.lora_load_ms * step.lora_loads
        )
        return step

    def finish_step(self, step: Step, now: float) -> list[Seq]:
        """Apply a step that ended at ``now``; returns the requests that produced a token."""
        self.stats.steps += 1
        progressed = []
        for seq in step.seqs:
            if seq.aborted or seq.chunk == 0:
                continue
            seq.computed += seq.chunk
            seq.chunk = 0
            if seq.computed < seq.prefill_target:
                continue  # a prefill chunk, no token yet
            seq.output += 1
            self.stats.generation_tokens += 1
            if seq.first_token_at is None:
                seq.first_token_at = now
            if seq.output >= seq.target:
                self._finish(seq, now)
            progressed.append(seq)
        return progressed

    # -------------------------------------------------------------------------- internals

    def _schedule_prefill(self, seq: Seq, chunk: int, step: Step) -> None:
        seq.chunk = chunk
        step.seqs.append(seq)
        step.prefill_tokens += chunk
        step.prefill_ctx += chunk * (seq.computed + (chunk - 1) / 2)
        # Blocks fully covered once this chunk is computed get their identity now, so a
        # request admitted later finds them (vLLM caches blocks when they are scheduled).
        full = min((seq.computed + chunk) // self.params.block_size, len(seq.hashes))
        cache = self.cache
        while seq.hashed_held < full:
            cache.register(seq.hashes[seq.hashed_held])
            seq.hashed_held += 1
            seq.anon_held -= 1

    def _admit(self, step: Step, budget: int, now: float) -> None:
        p = self.params
        cache = self.cache
        skipped: list[Seq] = []
        while self.waiting and budget > 0 and len(self.running) < p.max_num_seqs:
            seq = self.waiting[0]
            load = seq.lora is not None and seq.lora not in self.lora_resident
            if load and not self._lora_slot_free():
                skipped.append(self.waiting.popleft())  # wait for a slot; others may go
                continue
            # Always compute at least one token, as vLLM does on a full hit.
            hits = min(cache.match(seq.hashes), (seq.prefill_target - 1) // p.block_size)
            for h in seq.hashes[:hits]:
                cache.acquire(h)
            total = -(-seq.prefill_target // p.block_size)
            if not cache.allocate(total - hits):
                for h in reversed(seq.hashes[:hits]):
                    cache.release(h)
                break  # KV full: FCFS, later requests wait too
            self.waiting.popleft()
            if load:
                self._lora_load(seq.lora, step)
            if seq.lora is not None:
                self.lora_resident.move_to_end(seq.lora)
                self._lora_running[seq.lora] = self._lora_running.get(seq.lora, 0) + 1
            seq.hashed_held = hits
            seq.anon_held = total - hits
            seq.computed = hits * p.block_size
            if seq.cached_tokens is None:
                seq.cached_tokens = seq.computed
                seq.scheduled_at = now
                self.stats.prefix_queries += seq.prompt_tokens
                self.stats.prefix_hits += seq.computed
                self.stats.prompt_tokens += seq.prompt_tokens
            self.running.append(seq)
            chunk = min(seq.prefill_target - seq.computed, budget)
            self._schedule_prefill(seq, chunk, step)
            budget -= chunk
        if skipped:
            self.waiting.extendleft(reversed(skipped))

    def _allocate_or_preempt(self, seq: Seq, need: int) -> bool:
        """Allocate for ``seq``, preempting the newest running requests until it fits.

        Returns False if ``seq`` itself had to be preempted.
        """
        while not self.cache.allocate(need):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Seq) -> None:
        self.running.remove(seq)
        self._free(seq)
        self._lora_release(seq)
        seq.computed = 0
        seq.chunk = 0
        seq.prefill_target = seq.prompt_tokens + seq.output  # recompute what it had
        seq.preemptions += 1
        self.stats.preemptions += 1
        self.waiting.appendleft(seq)

    def _free(self, seq: Seq) -> None:
        """Return a request's blocks; tail blocks become evictable before the prefix."""
        cache = self.cache
        cache.release_anonymous(seq.anon_held)
        for h in reversed(seq.hashes[: seq.hashed_held]):
            cache.release(h)
        seq.hashed_held = 0
        seq.anon_held = 0

    def _finish(self, seq: Seq, now: float) -> None:
        seq.finished_at = now
        seq.finish_reason = seq.stop_reason
        self.stats.finished[seq.stop_reason] = self.stats.finished.get(seq.stop_reason, 0) + 1
        self.running.remove(seq)
        self._lora_release(seq)
        # The answer's full blocks keep their identity, so a follow-up turn that repeats
        # the conversation hits them, as with vLLM's prefix caching of generated tokens.
        if seq.full_hasher is not None:
            full = min(seq.computed // self.params.block_size, seq.blocks_held)
            if full > seq.hashed_held:
                all_hashes = seq.full_hasher(seq.computed)
                extra = all_hashes[seq.hashed_held : full]
                for h in extra:
                    self.cache.register(h)
                seq.hashes = seq.hashes[: seq.hashed_held] + extra
                seq.hashed_held += len(extra)
                seq.anon_held -= len(extra)
        self._free(seq)

    def _lora_slot_free(self) -> bool:
        """Whether an adapter can be loaded now (an empty slot or an idle one to evict)."""
        if len(self.lora_resident) < self.params.max_lora:
            return True
        return any(name not in self._lora_running for name in self.lora_resident)

    def _lora_load(self, name: str, step: Step) -> None:
        if len(self.lora_resident) >= self.params.max_lora:
            for victim in self.lora_resident:
                if victim not in self._lora_running:
                    del self.lora_resident[victim]
                    break
        self.lora_resident[name] = None
        step.lora_loads += 1
        self.stats.lora_loads += 1

    def _lora_release(self, seq: Seq) -> None:
        if seq.lora is None:
            return
        left = self._lora_running.get(seq.lora, 0) - 1
        if left > 0:
            self._lora_running[seq.lora] = left
        else:
            self._lora_running.pop(seq.lora, None)

    # --------------------------------------------------------------------------- metrics

    def running_loras(self) -> list[str]:
        return sorted(self._lora_running)

    def waiting_loras(self) -> list[str]:
        return sorted({s.lora for s in self.waiting if s.lora is not None})
