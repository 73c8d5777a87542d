"""The simulator's latency model as pure logic, driven by a fake clock (no asyncio)."""

from __future__ import annotations

import pytest

from igw.sim import text
from igw.sim.model import Engine, EngineParams, KVCache, Seq
from igw.sim.profiles import make_params


def params(**kw) -> EngineParams:
    base = dict(
        block_size=4,
        num_gpu_blocks=64,
        max_num_seqs=8,
        max_num_batched_tokens=64,
        max_model_len=256,
        decode_ms_per_step=10.0,
        decode_ms_per_seq=0.5,
        decode_ms_per_kv_token=0.01,
        prefill_ms_per_token=1.0,
        lora_load_ms=30.0,
    )
    base.update(kw)
    return EngineParams(**base)


def seq_for(data: bytes, p: EngineParams, target: int = 4, lora: str | None = None) -> Seq:
    tokens = text.estimate_tokens(data, p.bytes_per_token)
    hashes = text.block_hashes(data, p.block_bytes, text.chain_seed(lora, None))
    return Seq(tokens, hashes, target, lora=lora)


class FakeClock:
    """Runs an engine step by step on virtual time, like the replica's driver."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.now = 0.0
        self.durations: list[float] = []

    def step(self) -> list[Seq]:
        step = self.engine.schedule(self.now)
        assert step.seqs, "engine had nothing to run"
        self.now += step.duration_ms
        self.durations.append(step.duration_ms)
        return self.engine.finish_step(step, self.now)

    def run(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            if not self.engine.has_work():
                return
            self.step()
        raise AssertionError("engine did not drain")

    def submit(self, seq: Seq) -> Seq:
        seq.arrival = self.now
        self.engine.add(seq)
        return seq


def ttft(seq: Seq) -> float:
    assert seq.first_token_at is not None
    return seq.first_token_at - seq.arrival


# ------------------------------------------------------------------------------ KV cache


def test_kv_cache_evicts_least_recently_freed_block_first():
    cache = KVCache(3)
    for h in (1, 2, 3):
        assert cache.allocate(1)
        cache.register(h)
    for h in (1, 2, 3):
        cache.release(h)
    assert cache.in_use == 0 and cache.resident_hashed == 3
    assert cache.allocate(1)  # needs one slot: evicts block 1, the oldest free
    assert cache.match([1]) == 0
    assert cache.match([2, 3]) == 2


def test_kv_cache_refuses_allocation_beyond_capacity_of_blocks_in_use():
    cache = KVCache(4)
    assert cache.allocate(3)
    assert not cache.allocate(2)
    assert cache.allocate(1)
    assert cache.usage == 1.0


def test_kv_cache_acquiring_a_free_block_protects_it_from_eviction():
    cache = KVCache(2)
    for h in (10, 20):
        cache.allocate(1)
        cache.register(h)
        cache.release(h)
    cache.acquire(10)
    assert cache.allocate(1)  # must evict 20, not the acquired 10
    assert cache.match([10]) == 1 and cache.match([20]) == 0


def test_kv_cache_registering_a_resident_hash_shares_the_block():
    cache = KVCache(4)
    cache.allocate(1)
    cache.register(7)
    cache.allocate(1)
    cache.register(7)  # a second request computed the same block
    assert cache.in_use == 1
    cache.release(7)
    assert cache.in_use == 1
    cache.release(7)
    assert cache.in_use == 0 and cache.resident_hashed == 1


@pytest.fixture(params=["core", "python"])
def hasher(request, monkeypatch):
    """Run a test with the C++ core's hash chain (when built) and with the Python one."""
    if request.param == "python":
        monkeypatch.setattr(text, "_core_hash_blocks", None)
    elif text._core_hash_blocks is None:
        pytest.skip("igw._core is not built")
    return text.block_hashes


def test_block_hashes_chain_so_equal_blocks_after_different_prefixes_differ(hasher):
    a = hasher(b"AAAABBBB", 4, 0)
    b = hasher(b"CCCCBBBB", 4, 0)
    assert len(a) == 2 and a[1] != b[1]
    assert hasher(b"AAAABB", 4, 0) == a[:1]  # only full blocks
    assert hasher(b"AAAABBBB", 4, 0, limit=1) == a[:1]
    assert hasher(b"AAAABBBB", 4, 1) != a  # another seed, another chain
    assert hasher(b"AAA", 4, 0) == []


# ---------------------------------------------------------------------------- scheduling


def test_prefix_cache_hit_cuts_prefill_of_a_repeated_prompt():
    p = params()
    engine = Engine(p)
    clock = FakeClock(engine)
    prompt = b"x" * 4 * 40  # 40 tokens = 10 blocks
    first = clock.submit(seq_for(prompt, p))
    clock.run()
    second = clock.submit(seq_for(prompt, p))
    clock.run()
    assert first.cached_tokens == 0
    assert second.cached_tokens == 36  # 9 blocks: the last token is always computed
    assert ttft(second) < ttft(first) - 30 * p.prefill_ms_per_token
    assert engine.stats.prefix_hits == 36 and engine.stats.prefix_queries == 80


def test_different_lora_adapter_does_not_share_cached_blocks():
    p = params()
    clock = FakeClock(Engine(p))
    prompt = b"y" * 4 * 40
    clock.submit(seq_for(prompt, p))
    clock.run()
    other = clock.submit(seq_for(prompt, p, lora="fr"))
    clock.run()
    assert other.cached_tokens == 0


def test_requests_beyond_max_num_seqs_wait_and_their_latency_rises():
    p = params(max_num_seqs=2)
    engine = Engine(p)
    clock = FakeClock(engine)
    seqs = [clock.submit(seq_for(bytes([65 + i]) * 16, p, target=5)) for i in range(6)]
    clock.step()
    assert len(engine.running) == 2 and len(engine.waiting) == 4
    clock.run()
    waits = [ttft(s) for s in seqs]
    assert waits[0] == waits[1]
    assert waits[2] > waits[1] and waits[4] > waits[2]


def test_step_time_grows_with_batch_size_and_attended_kv_tokens():
    p = params()

    def decode_step_ms(n_seqs: int, prompt_tokens: int) -> float:
        engine = Engine(p)
        clock = FakeClock(engine)
        for i in range(n_seqs):
            clock.submit(seq_for(bytes([97 + i]) * 4 * prompt_tokens, p, target=3))
        clock.step()  # prefill
        return engine.schedule(clock.now).duration_ms

    assert decode_step_ms(4, 8) > decode_step_ms(1, 8)
    assert decode_step_ms(1, 40) > decode_step_ms(1, 8)


def test_long_prompt_prefills_in_chunks_of_the_token_budget():
    p = params(max_num_batched_tokens=16, num_gpu_blocks=64)
    engine = Engine(p)
    clock = FakeClock(engine)
    seq = clock.submit(seq_for(b"z" * 4 * 50, p, target=2))
    progressed = [clock.step() for _ in range(4)]
    assert [len(x) for x in progressed] == [0, 0, 0, 1]  # 16+16+16+2 tokens
    assert seq.output == 1


def test_kv_exhaustion_preempts_the_newest_request_and_it_still_finishes():
    p = params(num_gpu_blocks=12, max_num_seqs=4)
    engine = Engine(p)
    clock = FakeClock(engine)
    a = clock.submit(seq_for(b"a" * 4 * 16, p, target=20))  # 4 blocks, grows to 9
    b = clock.submit(seq_for(b"b" * 4 * 16, p, target=20))
    clock.run()
    assert engine.stats.preemptions >= 1
    assert b.preemptions >= 1 and a.preemptions == 0
    assert a.output == 20 and b.output == 20
    assert engine.cache.in_use == 0


def test_kv_usage_counts_blocks_held_by_running_requests():
    p = params(num_gpu_blocks=20)
    engine = Engine(p)
    clock = FakeClock(engine)
    clock.submit(seq_for(b"k" * 4 * 20, p, target=3))  # 5 blocks
    clock.step()
    assert engine.cache.usage == pytest.approx(5 / 20)
    clock.run()
    assert engine.cache.usage == 0.0


def test_lora_load_cost_is_paid_once_while_the_adapter_stays_resident():
    p = params(max_lora=1)
    engine = Engine(p)
    clock = FakeClock(engine)
    first = clock.submit(seq_for(b"q" * 8, p, lora="fr"))
    clock.run()
    second = clock.submit(seq_for(b"r" * 8, p, lora="fr"))
    clock.run()
    assert ttft(first) - ttft(second) == pytest.approx(p.lora_load_ms)
    assert engine.stats.lora_loads == 1


def test_lora_slots_limit_concurrent_adapters_and_report_running_and_waiting():
    p = params(max_lora=1)
    engine = Engine(p)
    clock = FakeClock(engine)
    fr = clock.submit(seq_for(b"f" * 8, p, lora="fr", target=5))
    es = clock.submit(seq_for(b"e" * 8, p, lora="es", target=5))
    base = clock.submit(seq_for(b"b" * 8, p, target=5))
    clock.step()
    assert engine.running_loras() == ["fr"]
    assert engine.waiting_loras() == ["es"]
    assert base in engine.running  # a base-model request is not held up behind "es"
    clock.run()
    assert es.first_token_at > fr.finished_at
    assert engine.stats.lora_loads == 2


def test_finished_answer_blocks_are_cached_for_the_next_turn():
    p = params()
    engine = Engine(p)
    clock = FakeClock(engine)
    prompt = b"turn one prompt!" * 4  # 16 tokens = 4 blocks
    seed = text.chain_seed(None, None)
    start = 3

    def full_hasher(kv_tokens: int) -> list[int]:
        answer = text.filler(start, 0, kv_tokens - 16).encode()
        return text.block_hashes(prompt + answer, p.block_bytes, seed, limit=kv_tokens // 4)

    first = Seq(16, text.block_hashes(prompt, p.block_bytes, seed), 9, full_hasher=full_hasher)
    clock.submit(first)
    clock.run()
    follow = prompt + text.filler(start, 0, 9).encode() + b"and the next question..."
    second = clock.submit(seq_for(follow, p))
    clock.run()
    assert second.cached_tokens == 24  # 4 prompt blocks + 2 full answer blocks


def test_engine_is_deterministic_given_arrival_order():
    def timeline() -> list[tuple[float, float]]:
        p = params(num_gpu_blocks=24, max_num_seqs=3)
        engine = Engine(p)
        clock = FakeClock(engine)
        seqs = []
        for i in range(12):
            data = (b"shared prefix..." * (1 + i % 3)) + bytes([i]) * 8
            seqs.append(clock.submit(seq_for(data, p, target=3 + i % 5)))
            if i % 4 == 3:
                clock.step()
        clock.run()
        return [(s.first_token_at, s.finished_at) for s in seqs]

    assert timeline() == timeline()


def test_engine_check_rejects_requests_that_can_never_fit():
    engine = Engine(params(max_model_len=100, num_gpu_blocks=10))
    assert "maximum context length is 100" in engine.check(90, 20)
    assert "KV-cache blocks" in engine.check(40, 10)
    assert engine.check(30, 8) is None
    assert "max_lora=0" in Engine(params(max_lora=0)).check(4, 4, lora="fr")


def test_engine_params_reject_bad_values_naming_the_field():
    with pytest.raises(ValueError, match="num_gpu_blocks"):
        EngineParams(num_gpu_blocks=0)
    with pytest.raises(ValueError, match="prefill_ms_per_token"):
        EngineParams(prefill_ms_per_token=-1.0)
    with pytest.raises(ValueError, match="decode_ms_per_step"):
        EngineParams(decode_ms_per_step=float("inf"))
    with pytest.raises(ValueError, match="output_len_max"):
        EngineParams(output_len_min=10, output_len_max=5)


@pytest.mark.parametrize(("tokens", "measured_ms"), [(2048, 62.6), (4096, 124.8), (8192, 260.0)])
def test_h100_profile_prefill_matches_measurements(tokens, measured_ms):
    p = make_params("h100-llama8b")
    engine = Engine(p)
    engine.add(Seq(tokens, [], 1))
    assert engine.schedule().duration_ms == pytest.approx(measured_ms, rel=0.03)


def test_h100_profile_decode_step_is_bounded_by_weight_reads():
    p = make_params("h100-llama8b")
    clock = FakeClock(Engine(p))
    clock.submit(Seq(1000, [], 3))
    clock.step()
    decode_ms = clock.engine.schedule(clock.now).duration_ms
    assert 4.8 < decode_ms < 5.0  # 4.8 weights + 1,001 tokens x 128 KiB at 3.35 TB/s


def replay(p: EngineParams, arrivals: list[tuple[float, bytes]]) -> list[Seq]:
    """Feed timed arrivals to one engine on a fake clock; returns the finished requests."""
    engine = Engine(p)
    clock = FakeClock(engine)
    seqs = []
    pending = sorted(arrivals, key=lambda a: a[0])
    while pending or engine.has_work():
        while pending and pending[0][0] <= clock.now:
            seqs.append(clock.submit(seq_for(pending.pop(0)[1], p, target=8)))
        if engine.has_work():
            clock.step()
        else:
            clock.now = pending[0][0]
    return seqs


def test_prefix_affinity_routing_beats_round_robin_when_caches_cannot_hold_every_group():
    # 8 groups of 240-token shared prefixes; each replica's cache holds ~4 of them.
    p = params(block_size=16, num_gpu_blocks=64, max_num_batched_tokens=512, max_model_len=512)
    prefixes = [bytes([65 + g]) * 4 * 240 for g in range(8)]
    groups = [(i * 5 + i // 2) % 8 for i in range(160)]  # every group hits both parities
    requests = [(i * 30.0, prefixes[g] + b"question %04d" % i) for i, g in enumerate(groups)]

    def mean_ttft(route) -> float:
        per_replica: list[list] = [[], []]
        for i, (at, prompt) in enumerate(requests):
            per_replica[route(i, prompt)].append((at, prompt))
        seqs = [s for arrivals in per_replica for s in replay(p, arrivals)]
        return sum(ttft(s) for s in seqs) / len(seqs)

    round_robin = mean_ttft(lambda i, prompt: i % 2)
    affinity = mean_ttft(lambda i, prompt: (prompt[0] - 65) % 2)  # a group sticks to a replica
    assert affinity < 0.5 * round_robin
