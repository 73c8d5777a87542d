"""XXH64 and the prompt block-hash chain, checked against the `xxhash` package."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

LENGTHS = [0, 1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 255, 256, 1000]
SEEDS = [0, 1, 0x9E3779B185EBCA87, 2**64 - 1]


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("seed", SEEDS)
def test_xxh64_matches_xxhash_package(core, length, seed):
    data = bytes((i * 131 + 7) % 256 for i in range(length))
    assert core.xxh64(data, seed) == xxhash.xxh64_intdigest(data, seed)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), seed=st.integers(0, 2**64 - 1))
def test_xxh64_matches_xxhash_on_random_input(data, seed):
    from igw import _core

    assert _core.xxh64(data, seed) == xxhash.xxh64_intdigest(data, seed)


def test_xxh64_accepts_bytearray_and_memoryview(core):
    data = b"hello world, this is igw"
    expected = xxhash.xxh64_intdigest(data, 3)
    assert core.xxh64(bytearray(data), 3) == expected
    assert core.xxh64(memoryview(data), 3) == expected


def chain(data: bytes, block: int, seed: int, max_blocks: int = 0) -> list[int]:
    """The documented chain, written with the xxhash package."""
    out, prev = [], seed
    starts = list(range(0, len(data), block))
    if max_blocks:
        starts = starts[:max_blocks]
    for s in starts:
        block_id = xxhash.xxh64_intdigest(data[s : s + block])
        prev = xxhash.xxh64_intdigest(struct.pack("<QQ", block_id, prev))
        out.append(prev)
    return out


@pytest.mark.parametrize("length", [0, 1, 255, 256, 257, 1000, 4096])
@pytest.mark.parametrize("max_blocks", [0, 1, 3])
def test_hash_blocks_follows_documented_chain(core, length, max_blocks):
    data = bytes(range(256)) * (length // 256 + 1)
    data = data[:length]
    got = core.hash_blocks(data, 256, 12345, max_blocks)
    assert got.dtype == np.uint64
    assert got.tolist() == chain(data, 256, 12345, max_blocks)


def test_hash_token_blocks_hashes_little_endian_uint32(core):
    tokens = np.arange(200, dtype=np.uint32) * 7919
    got = core.hash_token_blocks(tokens, 64, 99)
    assert got.tolist() == chain(tokens.astype("<u4").tobytes(), 256, 99)


def test_model_seed_separates_model_salt_and_lora(core):
    assert core.model_seed("m") == xxhash.xxh64_intdigest(b"m\0\0")
    assert core.model_seed("m", "salt", "lora") == xxhash.xxh64_intdigest(b"m\0salt\0lora")
    seeds = {core.model_seed("a"), core.model_seed("b"), core.model_seed("a", "s")}
    seeds.add(core.model_seed("a", "", "l"))
    assert len(seeds) == 4


def test_same_text_under_different_models_gets_different_hashes(core):
    text = b"x" * 1000
    a = core.hash_blocks(text, 256, core.model_seed("llama"))
    b = core.hash_blocks(text, 256, core.model_seed("qwen"))
    assert not set(a.tolist()) & set(b.tolist())


def test_shared_prefix_shares_leading_hashes(core):
    seed = core.model_seed("m")
    a = core.hash_blocks(b"s" * 512 + b"a" * 300, 256, seed)
    b = core.hash_blocks(b"s" * 512 + b"b" * 300, 256, seed)
    assert a[:2].tolist() == b[:2].tolist()
    assert a[2] != b[2]


@pytest.mark.parametrize("bad", [0, -1])
def test_hash_blocks_rejects_nonpositive_block_size(core, bad):
    with pytest.raises(core.Error, match="block_bytes"):
        core.hash_blocks(b"abc", bad, 0)


def test_hash_token_blocks_rejects_wrong_dtype(core):
    with pytest.raises(core.Error, match="uint32"):
        core.hash_token_blocks(np.arange(10, dtype=np.int64), 4, 0)


def test_non_contiguous_view_is_rejected_by_cpp_and_copied_by_reference(core):
    view = memoryview(b"abcdefgh")[::2]
    if core.__name__ == "igw._core":
        with pytest.raises(core.Error, match="contiguous"):
            core.xxh64(view)
    else:
        assert core.xxh64(view) == xxhash.xxh64_intdigest(b"aceg")
