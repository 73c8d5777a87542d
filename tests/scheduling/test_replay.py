"""The offline replay harness: deterministic, and it shows the cost model's point."""

from __future__ import annotations

import pytest

from igw.scheduling import named_policy
from igw.scheduling.replay import main, replay

workloads = pytest.importorskip("igw.bench.workloads")
pytest.importorskip("igw.sim.model")


def _hot(requests: int = 1000):
    shape = workloads.WorkloadParams(requests=requests, rate=46.5, seed=3)
    return workloads.build("hot-prefix", shape)


def test_replay_is_deterministic():
    requests = _hot(120)
    first = replay(named_policy("predicted-ttft"), requests).row()
    second = replay(named_policy("predicted-ttft"), requests).row()
    assert first == second
    assert first["hit_rate"] > 0.5


def test_replay_releases_everything_it_reserved():
    result = replay(named_policy("predicted-ttft"), _hot(200))
    assert result.unreleased == 0
    assert result.leftover_inflight == 0


def test_cost_model_spreads_a_hot_prefix_the_reference_weights_pin():
    requests = _hot()
    default = replay(named_policy("default"), requests, label="default")
    cost = replay(named_policy("predicted-ttft"), requests, label="predicted-ttft")
    assert default.hotspot > 1.5
    assert cost.hotspot <= 1.5
    assert cost.percentile(cost.ttft_ms, 90) < default.percentile(default.ttft_ms, 90)
    assert sum(cost.share) == len(requests) == len(cost.ttft_ms)


def test_replay_command_prints_a_table(capsys):
    assert main(["--workload", "shared-prefix", "--requests", "40", "--policies", "random"]) == 0
    out = capsys.readouterr().out
    assert "random" in out and "ttft_p90_ms" in out


def test_requests_a_replica_cannot_hold_are_refused_not_hung():
    shape = workloads.WorkloadParams(requests=6, rate=2.0, seed=0, agentic_steps=2)
    requests = workloads.build("agentic", shape)  # 30k then 100k tokens per session
    result = replay(named_policy("default"), requests)
    too_long = [r for r in requests if r.prompt_tokens > 32768]  # the default profile's limit
    assert too_long and result.errors == len(too_long)
    assert len(result.ttft_ms) + result.errors == len(requests)


def test_uncalibrated_endpoints_use_the_pools_mean_rate(make_pool):
    from sched_helpers import make_request

    from igw.scheduling import SchedulingEngine

    pool = make_pool([(0, 0, 0.0), (1, 0, 0.0)])
    engine = SchedulingEngine(named_policy("predicted-ttft"), clock=lambda: 0.0)
    engine.calibrator.observe(pool.name, "192.168.1.1:8000", 40000, 1.0)  # 40k tokens/s
    profile = engine.built.profiles["default"]
    from igw.scheduling._backend import core_of

    module = core_of(pool.scheduler)
    core_profile = engine._core_profile(module, profile, pool)
    assert core_profile is engine._core_profiles[(id(module), "default", pool.name, False)][0]
    assert engine._core_profiles[(id(module), "default", pool.name, False)][1] == 40000
    engine.schedule(make_request("z " * 100), pool)  # uses it without error


def _versus_sglang(workload: str, requests: int, slow_replica: float = 1.0):
    """predicted-ttft and the sglang-router cache_aware emulation on the same requests, at 90%
    of the replay's rough fleet capacity (the setup of the docs/configuration.md table)."""
    from igw.scheduling.peers import sglang_cache_aware
    from igw.scheduling.replay import _capacity_rate
    from igw.sim import profiles

    params = profiles.make_params("default")
    shape = workloads.WorkloadParams(requests=requests, seed=0, rate=1.0)
    shape.rate = 0.9 * _capacity_rate(workloads.build(workload, shape), 4, params)
    built = workloads.build(workload, shape)
    ours = replay(named_policy("predicted-ttft"), built, params=params, slow_replica=slow_replica)
    peer = replay(sglang_cache_aware(), built, params=params, slow_replica=slow_replica)
    return ours, peer


def _p90(result) -> float:
    return result.percentile(result.ttft_ms, 90)


def test_hot_prefix_beats_sglang_emulation_without_a_hot_spot():
    ours, peer = _versus_sglang("hot-prefix", 600)
    assert _p90(ours) <= _p90(peer)
    assert ours.hotspot <= 1.5 < peer.hotspot  # the peer pins the hot prefix to one replica


def test_slow_replica_beats_sglang_emulation():
    ours, peer = _versus_sglang("shared-prefix", 600, slow_replica=2.0)
    assert _p90(ours) <= _p90(peer)


def test_multi_turn_beats_sglang_emulation():
    ours, peer = _versus_sglang("multi-turn", 700)
    assert _p90(ours) <= _p90(peer)
    assert ours.hotspot <= 1.5
