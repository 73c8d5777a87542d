"""The --load capacity estimate follows the simulator's step-cost model."""

from __future__ import annotations

import pytest

from igw.bench import capacity
from igw.bench.capacity import Profile


def test_service_time_adds_prefill_and_shared_decode_cost() -> None:
    p = Profile(
        prefill_ms_per_token=0.1,
        decode_ms_per_step=10.0,
        decode_ms_per_seq=0.05,
        decode_ms_per_kv_token=0.0,
    )
    # 100 uncached tokens -> 10 ms; 20 tokens x (10/10 + 0.05) -> 21 ms
    assert capacity.service_ms(p, 100, 20, 0, decode_batch=10) == pytest.approx(31.0)


def test_capacity_scales_with_replicas_and_speed() -> None:
    one = capacity.fleet_capacity_rps("default", 1, 1.0, 64, 64, 2064)
    assert capacity.fleet_capacity_rps("default", 4, 2.0, 64, 64, 2064) == pytest.approx(8 * one)


def test_unknown_profile_asks_for_an_explicit_rate() -> None:
    with pytest.raises(ValueError, match="--rate"):
        capacity.fleet_capacity_rps("no-such-gpu", 1, 1.0, 1, 1, 1)
