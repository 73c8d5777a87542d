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
