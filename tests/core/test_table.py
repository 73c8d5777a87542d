"""EndpointTable: dense ids, row updates, snapshots, in-flight counters, adapter registry."""

from __future__ import annotations

import math

import numpy as np
import pytest


def test_add_hands_out_lowest_free_id_and_reuses_removed(core):
    t = core.EndpointTable(8)
    assert [t.add() for _ in range(3)] == [0, 1, 2]
    t.remove(1)
    assert t.add() == 1
    assert len(t) == 3


def test_high_water_shrinks_when_top_ids_are_removed(core):
    t = core.EndpointTable(8)
    for _ in range(4):
        t.add()
    t.remove(3)
    t.remove(2)
    assert t.high_water == 2
    t.remove(0)
    assert t.high_water == 2  # id 1 still live


def test_new_row_is_zeroed_and_not_ready(core):
    t = core.EndpointTable(4)
    e = t.add()
    t.update(e, waiting=5, running=6, kv_util=0.5, now=3.0)
    t.add_inflight(e, 2, 100)
    t.remove(e)
    e2 = t.add()
    s = t.snapshot()
    assert e2 == e
    assert s.active[e] and not s.ready[e]
    assert s.waiting[e] == 0 and s.inflight_tokens[e] == 0 and s.updated_at[e] == 0.0


def test_update_writes_row_and_keeps_unset_optional_fields(core):
    t = core.EndpointTable(4)
    e = t.add()
    t.update(e, waiting=3, running=4, kv_util=0.25, now=10.0, kv_blocks=1000, block_size=16)
    t.update(e, waiting=1, running=2, kv_util=0.5, now=11.0)
    s = t.snapshot()
    assert (s.waiting[e], s.running[e], s.kv_util[e]) == (1, 2, np.float32(0.5))
    assert (s.kv_blocks[e], s.block_size[e], s.updated_at[e]) == (1000, 16, 11.0)


def test_snapshot_arrays_have_documented_dtypes_and_lengths(core):
    t = core.EndpointTable(16)
    for _ in range(5):
        t.add()
    s = t.snapshot()
    expected = {
        "active": np.bool_, "ready": np.bool_, "waiting": np.int32, "running": np.int32,
        "kv_util": np.float32, "kv_blocks": np.int64, "block_size": np.int32,
        "max_lora": np.int32, "inflight_requests": np.int32, "inflight_tokens": np.int64,
        "updated_at": np.float64, "prefill_rate": np.float32,
    }  # fmt: skip
    for name, dtype in expected.items():
        arr = getattr(s, name)
        assert arr.dtype == dtype, name
        assert arr.shape == (5,), name
    assert s.lora_active.shape == (5, 4) and s.lora_active.dtype == np.uint64


def test_snapshot_is_a_copy_unaffected_by_later_updates(core):
    t = core.EndpointTable(4)
    e = t.add()
    t.update(e, waiting=1, running=0, kv_util=0.0, now=1.0)
    s = t.snapshot()
    t.update(e, waiting=9, running=0, kv_util=0.0, now=2.0)
    assert s.waiting[e] == 1


def test_kv_util_slightly_out_of_range_is_clamped(core):
    t = core.EndpointTable(4)
    e = t.add()
    t.update(e, waiting=0, running=0, kv_util=1.0 + 5e-7, now=1.0)
    assert t.snapshot().kv_util[e] == np.float32(1.0)
    t.update(e, waiting=0, running=0, kv_util=-5e-7, now=1.0)
    assert t.snapshot().kv_util[e] == np.float32(0.0)


def test_add_inflight_adjusts_and_clamps_at_zero(core):
    t = core.EndpointTable(4)
    e = t.add()
    t.add_inflight(e, 2, 500)
    t.add_inflight(e, -1, -200)
    s = t.snapshot()
    assert (s.inflight_requests[e], s.inflight_tokens[e]) == (1, 300)
    t.add_inflight(e, -5, -1000)
    s = t.snapshot()
    assert (s.inflight_requests[e], s.inflight_tokens[e]) == (0, 0)


def test_adapter_registry_assigns_stable_ids_and_bitsets(core):
    t = core.EndpointTable(4)
    ids = [t.adapter_id(f"lora-{i}") for i in range(70)]
    assert ids == list(range(70))
    assert t.adapter_id("lora-3") == 3
    assert t.adapter_name(65) == "lora-65"
    e = t.add()
    t.update(e, waiting=0, running=0, kv_util=0.0, now=1.0, lora_active=[1, 65], max_lora=4)
    s = t.snapshot()
    assert s.lora_active[e].tolist() == [2, 2, 0, 0]
    assert s.max_lora[e] == 4


def test_adapter_registry_rejects_the_257th_name(core):
    t = core.EndpointTable(4)
    for i in range(256):
        t.adapter_id(f"a{i}")
    with pytest.raises(core.Error, match="256"):
        t.adapter_id("one-too-many")
    assert t.adapter_id("a255") == 255  # still usable


def test_set_prefill_rate_and_ready_show_in_snapshot(core):
    t = core.EndpointTable(4)
    e = t.add()
    t.set_ready(e, True)
    t.set_prefill_rate(e, 12000.0)
    s = t.snapshot()
    assert s.ready[e] and s.prefill_rate[e] == np.float32(12000.0)
    t.set_ready(e, False)
    assert not t.snapshot().ready[e]


def test_table_full_raises(core):
    t = core.EndpointTable(2)
    t.add()
    t.add()
    with pytest.raises(core.Error, match="full"):
        t.add()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"waiting": -1, "running": 0, "kv_util": 0.1, "now": 1.0}, "waiting"),
        ({"waiting": 0, "running": -3, "kv_util": 0.1, "now": 1.0}, "running"),
        ({"waiting": 0, "running": 0, "kv_util": 1.5, "now": 1.0}, "kv_util"),
        ({"waiting": 0, "running": 0, "kv_util": math.nan, "now": 1.0}, "kv_util"),
        ({"waiting": 0, "running": 0, "kv_util": 0.1, "now": math.inf}, "now"),
        ({"waiting": 0, "running": 0, "kv_util": 0.1, "now": 1.0, "kv_blocks": -5}, "kv_blocks"),
        ({"waiting": 0, "running": 0, "kv_util": 0.1, "now": 1.0, "lora_active": [7]}, "adapter"),
    ],
)
def test_update_rejects_bad_values_and_keeps_row(core, kwargs, match):
    t = core.EndpointTable(4)
    e = t.add()
    t.update(e, waiting=2, running=2, kv_util=0.2, now=1.0)
    with pytest.raises(core.Error, match=match):
        t.update(e, **kwargs)
    assert t.snapshot().waiting[e] == 2


@pytest.mark.parametrize("method", ["remove", "set_ready", "add_inflight", "update"])
def test_unknown_or_removed_ids_raise(core, method):
    t = core.EndpointTable(4)
    e = t.add()
    t.remove(e)
    calls = {
        "remove": lambda x: t.remove(x),
        "set_ready": lambda x: t.set_ready(x, True),
        "add_inflight": lambda x: t.add_inflight(x, 1, 1),
        "update": lambda x: t.update(x, waiting=0, running=0, kv_util=0.0, now=0.0),
    }
    for bad in (e, 3, -1, 100000):
        with pytest.raises(core.Error, match="endpoint"):
            calls[method](bad)


@pytest.mark.parametrize("capacity", [0, -1, 65536])
def test_capacity_out_of_range_raises(core, capacity):
    with pytest.raises(core.Error, match="capacity"):
        core.EndpointTable(capacity)


def test_unregistered_adapter_name_lookup_raises(core):
    with pytest.raises(core.Error, match="adapter"):
        core.EndpointTable(4).adapter_name(0)


def test_find_adapter_returns_registered_id_and_never_registers(core):
    t = core.EndpointTable(4)
    a = t.adapter_id("sql-lora")
    assert t.find_adapter("sql-lora") == a
    assert t.find_adapter("client-chosen-name") == -1
    assert t.adapter_id("next") == a + 1  # the unknown name took no id


def test_find_adapter_never_fills_the_registry(core):
    t = core.EndpointTable(4)
    for i in range(300):
        assert t.find_adapter(f"model-{i}") == -1
    assert t.adapter_id("real") == 0


@pytest.mark.parametrize(
    "change",
    [
        lambda t, e: t.update(e, waiting=1, running=0, kv_util=0.1, now=1.0),
        lambda t, e: t.set_ready(e, True),
        lambda t, e: t.set_prefill_rate(e, 1000.0),
        lambda t, e: t.remove(e),
        lambda t, e: t.add(),
    ],
    ids=["update", "set_ready", "set_prefill_rate", "remove", "add"],
)
def test_version_moves_on_every_change_a_snapshot_shows(core, change):
    t = core.EndpointTable(4)
    e = t.add()
    before = t.version
    change(t, e)
    assert t.version > before


def test_version_ignores_inflight_counters(core):
    t = core.EndpointTable(4)
    e = t.add()
    before = t.version
    t.add_inflight(e, 1, 100)
    t.add_inflight(e, -1, -100)
    assert t.version == before


def test_inflight_matches_the_snapshot_counters(core):
    t = core.EndpointTable(8)
    ids = [t.add() for _ in range(4)]
    t.remove(ids[2])
    t.add_inflight(ids[1], 3, 700)
    t.add_inflight(ids[3], 1, 5)
    requests, tokens = t.inflight()
    s = t.snapshot()
    assert requests.dtype == np.int32 and tokens.dtype == np.int64
    assert requests.tolist() == s.inflight_requests.tolist() == [0, 3, 0, 1]
    assert tokens.tolist() == s.inflight_tokens.tolist() == [0, 700, 0, 5]


def test_inflight_requests_of_reads_one_live_row(core):
    t = core.EndpointTable(8)
    ids = [t.add() for _ in range(3)]
    t.add_inflight(ids[1], 3, 700)
    assert [t.inflight_requests_of(e) for e in ids] == [0, 3, 0]
    t.remove(ids[2])
    with pytest.raises(core.Error, match="is not a live endpoint id"):
        t.inflight_requests_of(ids[2])
