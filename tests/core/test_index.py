"""PrefixIndex: per-endpoint contiguous match, LRU order and eviction, removal, memory."""

from __future__ import annotations

import numpy as np
import pytest


def h(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def test_match_counts_contiguous_prefix_per_endpoint(core):
    ix = core.PrefixIndex(8, 100)
    ix.record(0, h(1, 2, 3, 4))
    ix.record(1, h(1, 2))
    ix.record(2, h(2, 3, 4))  # lacks block 0: no prefix at all
    assert ix.match(h(1, 2, 3, 4, 5)).tolist() == [4, 2, 0]


def test_match_stops_at_first_gap_per_endpoint(core):
    ix = core.PrefixIndex(8, 100)
    ix.record(0, h(1, 2, 4))  # holds 1, 2 and 4 but not 3
    ix.record(1, h(1, 2, 3, 4))
    assert ix.match(h(1, 2, 3, 4)).tolist() == [2, 4]


def test_match_of_unknown_or_empty_prompt_is_all_zero(core):
    ix = core.PrefixIndex(8, 100)
    ix.record(3, h(1, 2))
    assert ix.match(h(9, 1, 2)).tolist() == [0, 0, 0, 0]
    assert ix.match(h()).tolist() == [0, 0, 0, 0]


def test_match_length_is_one_past_highest_endpoint_seen(core):
    ix = core.PrefixIndex(16, 100)
    assert len(ix.match(h(1))) == 0
    ix.set_capacity(5, 10)
    assert len(ix.match(h(1))) == 6


def test_match_with_identical_holder_runs_and_changes(core):
    # Long runs with the same holders are skipped in C++; the answer must not change.
    ix = core.PrefixIndex(8, 1000)
    shared = list(range(100, 150))
    for e in range(4):
        ix.record(e, h(*shared))
    ix.record(4, h(*shared[:10]))
    ix.record(1, h(*shared, 7, 8))
    assert ix.match(h(*shared, 7, 8, 9)).tolist() == [50, 52, 50, 50, 10]


def test_record_evicts_least_recently_used_beyond_capacity(core):
    ix = core.PrefixIndex(4, 3)
    ix.record(0, h(1, 2, 3))
    ix.record(0, h(10))  # evicts block 3: the last block of the older prompt
    assert ix.endpoint_entries(0) == 3
    assert ix.match(h(1, 2, 3)).tolist() == [2]
    assert ix.match(h(10)).tolist() == [1]


def test_record_touch_moves_blocks_to_most_recent(core):
    ix = core.PrefixIndex(4, 3)
    ix.record(0, h(1))
    ix.record(0, h(2))
    ix.record(0, h(1))  # 1 is now the most recent, 2 the least
    ix.record(0, h(3))
    ix.record(0, h(4))  # evicts 2
    assert ix.match(h(1)).tolist() == [1]
    assert ix.match(h(2)).tolist() == [0]


def test_match_does_not_touch_lru_order(core):
    ix = core.PrefixIndex(4, 2)
    ix.record(0, h(1))
    ix.record(0, h(2))
    ix.match(h(1))
    ix.record(0, h(3))  # evicts 1 (match did not refresh it)
    assert ix.match(h(1)).tolist() == [0]


def test_set_capacity_evicts_at_once(core):
    ix = core.PrefixIndex(4, 100)
    ix.record(0, h(*range(1, 11)))
    ix.set_capacity(0, 4)
    assert ix.capacity_of(0) == 4
    assert ix.endpoint_entries(0) == 4
    assert ix.match(h(*range(1, 11))).tolist() == [4]


def test_zero_capacity_holds_nothing(core):
    ix = core.PrefixIndex(4, 100)
    ix.set_capacity(1, 0)
    ix.record(1, h(1, 2, 3))
    assert ix.entries() == 0


def test_remove_endpoint_forgets_its_blocks_only(core):
    ix = core.PrefixIndex(4, 100)
    ix.record(0, h(1, 2))
    ix.record(1, h(1, 2, 3))
    ix.set_capacity(1, 50)
    ix.remove_endpoint(1)
    assert ix.match(h(1, 2, 3)).tolist() == [2, 0]
    assert ix.entries() == 2
    assert ix.capacity_of(1) == 100  # back to the default for a reused id


def test_entries_count_block_endpoint_pairs(core):
    ix = core.PrefixIndex(4, 100)
    ix.record(0, h(1, 2, 3))
    ix.record(1, h(1, 2))
    ix.record(1, h(1, 2))  # touching does not add
    assert ix.entries() == 5
    assert (ix.endpoint_entries(0), ix.endpoint_entries(1)) == (3, 2)


def test_memory_bytes_is_positive_and_grows_with_entries(core):
    ix = core.PrefixIndex(64, 100000)
    before = ix.memory_bytes()
    for e in range(64):
        ix.record(e, np.arange(1, 2001, dtype=np.uint64))
    assert ix.memory_bytes() > before
    assert ix.memory_bytes() >= ix.entries() * 8


def test_cpp_bytes_per_entry_on_shared_prefixes_is_small():
    from igw import _core

    ix = _core.PrefixIndex(1024, 100000)
    prompts = [np.arange(p * 1000, p * 1000 + 100, dtype=np.uint64) for p in range(16)]
    for e in range(1024):
        for p in range(4):
            ix.record(e, prompts[(e + p * 5) % 16])
    assert ix.entries() == 1024 * 400
    assert ix.memory_bytes() / ix.entries() <= 24


def test_cpp_bytes_per_entry_at_100_endpoints_is_within_24():
    """The bench fleet at 100 endpoints (blocks shared by ~12 holders): fixed and tail
    allocations (slab tails, per-class spare slabs, the power-of-two table) used to push
    this to 28 B while 1,000+ endpoints sat at 21 B."""
    from igw import _core
    from igw.bench import core as corebench

    fleet = corebench.build_fleet(100)
    ix = _core.PrefixIndex(100, 31250)
    for e, hashes in fleet.recordings:
        ix.record(e, hashes)
    assert ix.entries() > 60000
    assert ix.memory_bytes() / ix.entries() <= 24


@pytest.mark.parametrize("bad", [-1, 4, 1 << 20])
def test_out_of_range_endpoint_raises(core, bad):
    ix = core.PrefixIndex(4, 100)
    with pytest.raises(core.Error, match="endpoint"):
        ix.record(bad, h(1))
    with pytest.raises(core.Error, match="endpoint"):
        ix.set_capacity(bad, 3)


@pytest.mark.parametrize(
    "bad",
    [
        np.array([1, 2], dtype=np.int64),
        np.array([1.0], dtype=np.float64),
        np.zeros((2, 2), dtype=np.uint64),
        [1, 2, 3],
    ],
    ids=["int64", "float64", "2d", "list"],
)
def test_wrong_hash_array_raises(core, bad):
    ix = core.PrefixIndex(4, 100)
    with pytest.raises(core.Error, match="hashes"):
        ix.match(bad)
    with pytest.raises(core.Error, match="hashes"):
        ix.record(0, bad)


def test_negative_capacity_raises(core):
    with pytest.raises(core.Error, match="blocks"):
        core.PrefixIndex(4, 100).set_capacity(0, -1)


def test_non_contiguous_hash_arrays_are_read_correctly(core):
    ix = core.PrefixIndex(4, 100)
    wide = np.arange(1, 21, dtype=np.uint64)
    ix.record(0, wide[::2])  # 1, 3, 5, ...
    assert ix.match(wide[::2]).tolist() == [10]
    assert ix.match(np.ascontiguousarray(wide[::2])).tolist() == [10]
