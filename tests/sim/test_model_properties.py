"""Property tests of the engine: block accounting stays exact under any arrival pattern."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from igw.sim import text
from igw.sim.model import Engine, EngineParams, Seq

request = st.tuples(
    st.integers(0, 3),  # which shared prefix
    st.integers(0, 40),  # prefix length in tokens
    st.integers(1, 30),  # unique suffix length in tokens
    st.integers(1, 12),  # output tokens
    st.sampled_from([None, "fr", "es"]),  # adapter
    st.integers(0, 3),  # engine steps before the next arrival
)


def check_invariants(engine: Engine) -> None:
    cache = engine.cache
    held = Counter(h for s in engine.running for h in s.hashes[: s.hashed_held])
    assert all(cache._ref[h] == n for h, n in held.items())
    assert cache.in_use == len(held) + sum(s.anon_held for s in engine.running)
    assert 0 <= cache.in_use <= cache.num_blocks
    assert len(engine.running) <= engine.params.max_num_seqs
    assert len(engine.running_loras()) <= engine.params.max_lora
    assert not any(s.blocks_held for s in engine.waiting)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(request, min_size=1, max_size=25),
    st.integers(8, 40),  # KV blocks
    st.integers(1, 6),  # max_num_seqs
    st.integers(1, 2),  # max_lora
)
def test_blocks_slots_and_adapters_stay_consistent_and_every_request_finishes(
    requests, blocks, max_seqs, max_lora
):
    p = EngineParams(
        block_size=4, num_gpu_blocks=blocks, max_num_seqs=max_seqs, max_num_batched_tokens=16,
        max_model_len=4 * blocks, max_lora=max_lora,
    )  # fmt: skip
    engine = Engine(p)
    now = 0.0
    seqs = []
    for prefix, plen, slen, out, lora, gap in requests:
        data = bytes([65 + prefix]) * 4 * plen + bytes([97 + len(seqs) % 26]) * 4 * slen
        tokens = plen + slen
        if engine.check(tokens, out, lora) is not None:
            continue
        seed = hash(lora)

        def full_hasher(kv_tokens: int, data=data, tokens=tokens, seed=seed) -> list[int]:
            answer = text.filler(0, 0, max(kv_tokens - tokens, 0)).encode()
            return text.block_hashes(data + answer, p.block_bytes, seed, limit=kv_tokens // 4)

        hashes = text.block_hashes(data, p.block_bytes, seed)
        seq = Seq(tokens, hashes, out, lora=lora, full_hasher=full_hasher)
        seq.arrival = now
        engine.add(seq)
        seqs.append(seq)
        for _ in range(gap):
            if engine.has_work():
                step = engine.schedule(now)
                check_invariants(engine)
                now += step.duration_ms
                engine.finish_step(step, now)
                check_invariants(engine)
    for _ in range(5000):
        if not engine.has_work():
            break
        step = engine.schedule(now)
        check_invariants(engine)
        now += step.duration_ms
        engine.finish_step(step, now)
    assert not engine.has_work()
    assert engine.cache.in_use == 0
    for seq in seqs:
        assert seq.output == seq.target
        assert seq.arrival <= seq.scheduled_at <= seq.first_token_at <= seq.finished_at
        assert 0 <= seq.cached_tokens < seq.prompt_tokens
