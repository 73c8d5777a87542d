"""Workloads are deterministic for a seed and have the advertised shape."""

from __future__ import annotations

import collections
import itertools
import json

import numpy as np
import pytest

from igw.bench import workloads
from igw.bench.workloads import WorkloadParams, build


def small(**kw) -> WorkloadParams:
    base = dict(requests=120, rate=10.0, seed=3, groups=6, system_tokens=200, question_tokens=16)
    base.update(kw)
    return WorkloadParams(**base)


@pytest.mark.parametrize("name", ["shared-prefix", "hot-prefix", "multi-turn", "bursty", "agentic"])
def test_same_seed_gives_identical_requests(name: str) -> None:
    params = small(agentic_start_tokens=300, agentic_end_tokens=800)
    assert build(name, params) == build(
        name, small(agentic_start_tokens=300, agentic_end_tokens=800)
    )


@pytest.mark.parametrize("name", ["shared-prefix", "hot-prefix", "bursty"])
def test_different_seed_gives_different_texts(name: str) -> None:
    a, b = build(name, small(seed=1)), build(name, small(seed=2))
    assert [r.prompt for r in a] != [r.prompt for r in b]


def test_shared_prefix_requests_of_a_group_share_the_system_prompt() -> None:
    reqs = build("shared-prefix", small())
    by_group = collections.defaultdict(list)
    for r in reqs:
        by_group[r.group].append(r.prompt)
    assert len(by_group) == 6
    for prompts in by_group.values():
        heads = {p.split("question: ")[0] for p in prompts}
        assert len(heads) == 1
        assert len(next(iter(heads)).split()) == 200
    heads_all = {ps[0].split("question: ")[0] for ps in by_group.values()}
    assert len(heads_all) == 6


def test_prompt_is_about_four_bytes_per_token() -> None:
    r = build("shared-prefix", small())[0]
    assert abs(len(r.prompt) / r.prompt_tokens - 4.0) < 0.2


def test_shared_prefix_arrivals_are_poisson_at_the_given_rate() -> None:
    reqs = build("shared-prefix", small(requests=4000, rate=25.0))
    gaps = np.diff([r.at for r in reqs])
    assert all(g >= 0 for g in gaps)
    assert 1 / np.mean(gaps) == pytest.approx(25.0, rel=0.08)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, rel=0.1)  # exponential: cv = 1


def test_hot_prefix_sends_the_hot_share_to_group_zero() -> None:
    reqs = build("hot-prefix", small(requests=4000, hot_share=0.45))
    share = sum(r.group == "g0" for r in reqs) / len(reqs)
    assert share == pytest.approx(0.45, abs=0.03)
    others = collections.Counter(r.group for r in reqs if r.group != "g0")
    assert max(others.values()) / len(reqs) < 0.2


def test_bursty_sends_bursts_of_the_burst_size_at_one_instant() -> None:
    reqs = build("bursty", small(requests=96, burst_size=32, rate=16.0))
    times = collections.Counter(r.at for r in reqs)
    assert sorted(times.values()) == [32, 32, 32]
    assert sorted(times) == pytest.approx([0.0, 2.0, 4.0])


def test_multi_turn_history_grows_and_each_turn_waits_for_the_previous() -> None:
    reqs = build("multi-turn", small(requests=20, turns=4, think_time=0.5))
    sessions = collections.defaultdict(list)
    for r in reqs:
        sessions[r.group].append(r)
    assert len(sessions) == 5
    for turns in sessions.values():
        assert [r.after for r in turns[1:]] == [t.index for t in turns[:-1]]
        assert all(r.at == 0.5 for r in turns[1:])
        for prev, cur in itertools.pairwise(turns):
            assert cur.messages[: len(prev.messages)] == prev.messages
            assert len(cur.messages) == len(prev.messages) + 2
            assert cur.prompt_tokens > prev.prompt_tokens


def test_agentic_context_grows_from_start_to_end_size() -> None:
    reqs = build(
        "agentic",
        small(requests=12, agentic_steps=4, agentic_start_tokens=3000, agentic_end_tokens=9000),
    )
    first_session = [r for r in reqs if r.group == "a0"]
    assert [r.prompt_tokens for r in first_session] == [3000, 5000, 7000, 9000]
    for prev, cur in itertools.pairwise(first_session):
        assert cur.prompt.startswith(prev.prompt)
    assert len(first_session[-1].prompt.split()) == pytest.approx(9000, rel=0.01)


def test_trace_replays_offsets_and_fields(tmp_path) -> None:
    path = tmp_path / "t.jsonl"
    lines = [
        {"timestamp": 100.0, "model": "m1", "prompt": "hello there", "max_tokens": 5},
        {"timestamp": 101.5, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 7},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    reqs = build("trace", WorkloadParams(trace_path=str(path)))
    assert [r.at for r in reqs] == [0.0, 1.5]
    assert reqs[0].model == "m1" and reqs[0].prompt == "hello there" and reqs[0].max_tokens == 5
    assert reqs[1].chat and reqs[1].body("dflt")["model"] == "dflt"
    assert reqs[1].body("dflt")["max_completion_tokens"] == 7


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ('{"timestamp": 1}', "exactly one of 'prompt' or 'messages'"),
        ('{"prompt": "x", "max_tokens": 0}', "'max_tokens' must be a positive integer"),
        ('{"prompt": "x", "timestamp": "soon"}', "'timestamp' must be a number"),
    ],
)
def test_trace_rejects_bad_lines_naming_the_line_and_field(tmp_path, line, message) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=message) as info:
        build("trace", WorkloadParams(trace_path=str(path)))
    assert "bad.jsonl:1" in str(info.value)


def test_unknown_workload_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="shared-prefix"):
        build("nope", WorkloadParams())


def test_streaming_body_asks_for_usage() -> None:
    body = build("shared-prefix", small())[0].body("m")
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["model"] == "m" and "prompt" in body


def test_workload_registry_names_every_documented_workload() -> None:
    assert set(workloads.WORKLOADS) == {
        "shared-prefix",
        "hot-prefix",
        "multi-turn",
        "bursty",
        "agentic",
        "trace",
    }
