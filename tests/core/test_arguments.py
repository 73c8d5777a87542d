"""Wrongly typed or wrongly shaped arguments raise the core's Error naming the argument and the
expected type, on both implementations -- never TypeError (callers catch one error type)."""

from __future__ import annotations

import numpy as np
import pytest


def objects(core):
    table = core.EndpointTable(4)
    e = table.add()
    index = core.PrefixIndex(4, 100)
    scheduler = core.Scheduler(table, index, 0)
    return table, e, index, scheduler


OK_UPDATE = {"waiting": 1, "running": 0, "kv_util": 0.5, "now": 1.0}
TOKENS = np.zeros(2, np.uint32)

# (call, argument the message must name, expected-type words)
WRONG_TYPES = [
    (lambda c, t, e, ix, s: t.update(e, **{**OK_UPDATE, "waiting": "3"}), "waiting", "int"),
    (lambda c, t, e, ix, s: t.update(e, **{**OK_UPDATE, "running": 1.5}), "running", "int"),
    (lambda c, t, e, ix, s: t.update(e, **{**OK_UPDATE, "waiting": True}), "waiting", "int"),
    (lambda c, t, e, ix, s: t.update(e, **{**OK_UPDATE, "kv_util": "0.5"}), "kv_util", "number"),
    (lambda c, t, e, ix, s: t.update(e, **{**OK_UPDATE, "now": None}), "now", "number"),
    (lambda c, t, e, ix, s: t.update(e, **OK_UPDATE, kv_blocks=1.0), "kv_blocks", "int"),
    (lambda c, t, e, ix, s: t.update(e, **OK_UPDATE, max_lora="2"), "max_lora", "int"),
    (lambda c, t, e, ix, s: t.update(e, **OK_UPDATE, lora_active=3), "lora_active", "list"),
    (lambda c, t, e, ix, s: t.update(e, **OK_UPDATE, lora_active=["a"]), "lora_active", "int"),
    (lambda c, t, e, ix, s: t.update("0", **OK_UPDATE), "endpoint", "int"),
    (lambda c, t, e, ix, s: t.set_ready(e, "yes"), "ready", "bool"),
    (lambda c, t, e, ix, s: t.set_ready(e, 1), "ready", "bool"),
    (lambda c, t, e, ix, s: t.set_prefill_rate(e, "fast"), "tokens_per_second", "number"),
    (lambda c, t, e, ix, s: t.add_inflight(e, 1.0, 0), "requests", "int"),
    (lambda c, t, e, ix, s: t.add_inflight(e, 1, "10"), "tokens", "int"),
    (lambda c, t, e, ix, s: t.remove(None), "endpoint", "int"),
    (lambda c, t, e, ix, s: t.is_live("0"), "endpoint", "int"),
    (lambda c, t, e, ix, s: t.adapter_id(7), "name", "str"),
    (lambda c, t, e, ix, s: t.find_adapter(b"a"), "name", "str"),
    (lambda c, t, e, ix, s: t.adapter_name("0"), "adapter", "int"),
    (lambda c, t, e, ix, s: c.EndpointTable("8"), "capacity", "int"),
    (lambda c, t, e, ix, s: c.PrefixIndex(4.0), "max_endpoints", "int"),
    (lambda c, t, e, ix, s: c.PrefixIndex(4, "100"), "default_capacity", "int"),
    (lambda c, t, e, ix, s: ix.set_capacity(0, 1.5), "blocks", "int"),
    (lambda c, t, e, ix, s: ix.set_capacity("0", 1), "endpoint", "int"),
    (lambda c, t, e, ix, s: ix.capacity_of(None), "endpoint", "int"),
    (lambda c, t, e, ix, s: ix.record(0.0, np.zeros(1, np.uint64)), "endpoint", "int"),
    (lambda c, t, e, ix, s: ix.remove_endpoint("1"), "endpoint", "int"),
    (lambda c, t, e, ix, s: ix.endpoint_entries([0]), "endpoint", "int"),
    (lambda c, t, e, ix, s: c.xxh64("text"), "data", "bytes"),
    (lambda c, t, e, ix, s: c.xxh64(b"x", "1"), "seed", "int"),
    (lambda c, t, e, ix, s: c.xxh64(b"x", -1), "seed", "0..2\\*\\*64-1"),
    (lambda c, t, e, ix, s: c.model_seed(1), "model", "str"),
    (lambda c, t, e, ix, s: c.model_seed("m", cache_salt=None), "cache_salt", "str"),
    (lambda c, t, e, ix, s: c.hash_blocks(b"x", "4", 0), "block_bytes", "int"),
    (lambda c, t, e, ix, s: c.hash_blocks(b"x", 4, 0, 1.0), "max_blocks", "int"),
    (lambda c, t, e, ix, s: c.hash_token_blocks(TOKENS, 2.0, 0), "block_tokens", "int"),
    (lambda c, t, e, ix, s: c.Profile([], 3), "picker", "str"),
    (lambda c, t, e, ix, s: c.Profile([("queue-scorer", "2", {})]), "weight", "number"),
    (lambda c, t, e, ix, s: c.Scheduler(t, "index"), "index", "PrefixIndex"),
    (lambda c, t, e, ix, s: c.Scheduler(None, ix), "table", "EndpointTable"),
    (lambda c, t, e, ix, s: c.Scheduler(t, ix, "0"), "seed", "int"),
    (lambda c, t, e, ix, s: s.pick("default"), "profile", "Profile"),
    (lambda c, t, e, ix, s: s.pick(c.Profile([]), k="1"), "k", "int"),
    (lambda c, t, e, ix, s: s.pick(c.Profile([]), lora=0.0), "lora", "int"),
    (lambda c, t, e, ix, s: s.pick(c.Profile([]), reserve=1), "reserve", "bool"),
    (lambda c, t, e, ix, s: s.pick(c.Profile([]), prompt="text"), "prompt", "bytes"),
    (lambda c, t, e, ix, s: s.pick(c.Profile([]), prompt_tokens=1.5), "prompt_tokens", "int"),
]


@pytest.mark.parametrize(("call", "name", "expected"), WRONG_TYPES)
def test_wrongly_typed_argument_raises_error_naming_it(core, call, name, expected):
    table, e, index, scheduler = objects(core)
    with pytest.raises(core.Error, match=f"{name}.*{expected}"):
        call(core, table, e, index, scheduler)


def test_numpy_scalars_are_accepted_as_ints_numbers_and_bools(core):
    table, e, index, _ = objects(core)
    table.update(
        np.int64(e), waiting=np.int32(3), running=np.uint8(1), kv_util=np.float32(0.25),
        now=np.float64(2.0), max_lora=np.int16(2),
    )  # fmt: skip
    table.set_ready(e, np.bool_(True))
    index.set_capacity(np.int64(0), np.int32(10))
    s = table.snapshot()
    assert (s.waiting[e], s.running[e], s.max_lora[e], bool(s.ready[e])) == (3, 1, 2, True)
    assert s.kv_util[e] == pytest.approx(0.25)
    assert index.capacity_of(0) == 10


WRONG_SHAPES = [
    (lambda c, t, e, ix, s: t.update(e, waiting=1, running=0, now=1.0), "kv_util"),
    (lambda c, t, e, ix, s: t.update(e, 1, 0, 0.5, 1.0), "positional"),
    (lambda c, t, e, ix, s: t.update(e, **OK_UPDATE, colour=1), "colour"),
    (lambda c, t, e, ix, s: t.set_ready(e), "ready"),
    (lambda c, t, e, ix, s: t.add_inflight(e, 1, 2, 3), "positional"),
    (lambda c, t, e, ix, s: t.find_adapter(), "name"),
    (lambda c, t, e, ix, s: ix.record(0), "hashes"),
    (lambda c, t, e, ix, s: ix.entries(1), "positional"),
    (lambda c, t, e, ix, s: c.EndpointTable(4, 5), "positional"),
    (lambda c, t, e, ix, s: c.Scheduler(t), "index"),
    (lambda c, t, e, ix, s: c.hash_blocks(b"x"), "block_bytes"),
    (lambda c, t, e, ix, s: s.pick(), "profile"),
    (lambda c, t, e, ix, s: s.pick(c.Profile([]), colour=1), "colour"),
]


@pytest.mark.parametrize(("call", "name"), WRONG_SHAPES)
def test_call_of_the_wrong_shape_raises_error_naming_the_argument(core, call, name):
    table, e, index, scheduler = objects(core)
    with pytest.raises(core.Error, match=name):
        call(core, table, e, index, scheduler)


def test_unknown_adapter_constant_is_the_same_in_both(core):
    from igw import _core, core_reference

    assert core.UNKNOWN_ADAPTER == _core.UNKNOWN_ADAPTER == core_reference.UNKNOWN_ADAPTER == 256
