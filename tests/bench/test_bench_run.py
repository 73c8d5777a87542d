"""End to end: ``igw bench run`` against a fake fleet and a fake gateway (and against the
real ``igw sim`` + ``igw serve`` when both are installed), small and fast."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from igw.bench import command
from igw.bench.stats import COLUMNS
from igw.cli import main

FAKE = Path(__file__).with_name("fake_openai.py")
FAKE_ARGS = [
    "--fleet-cmd",
    f"{{python}} {FAKE} sim",
    "--gateway-cmd",
    f"{{python}} {FAKE} serve --port {{port}} --endpoints {{workers_csv}}",
]
SMALL = [
    "--replicas",
    "2",
    "--requests",
    "16",
    "--rate",
    "40",
    "--speed",
    "10",
    "--groups",
    "2",
    "--system-tokens",
    "300",
    "--question-tokens",
    "8",
    "--output-tokens",
    "4",
    "--duration-max",
    "20",
    "--no-progress",
]


def test_run_prints_a_table_and_writes_json_with_every_column(tmp_path, capsys) -> None:
    out = tmp_path / "r.json"
    code = main(
        [
            "bench",
            "run",
            "--workload",
            "shared-prefix",
            "--policies",
            "round-robin,default",
            "--json",
            str(out),
            *SMALL,
            *FAKE_ARGS,
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    for _, title, _ in COLUMNS:
        assert title in printed
    assert "round-robin" in printed and "default" in printed
    doc = json.loads(out.read_text())
    assert doc["meta"]["workload"] == "shared-prefix" and doc["meta"]["requests"] == 16
    assert [r["summary"]["policy"] for r in doc["results"]] == ["round-robin", "default"]
    for res in doc["results"]:
        row = res["summary"]
        assert {k for k, _, _ in COLUMNS} <= set(row)
        assert row["errors"] == 0
        assert row["ttft_p50_ms"] > 0 and row["e2e_p90_ms"] >= row["e2e_p50_ms"]
        assert sum(res["per_replica_requests"].values()) == 16
        assert row["hot_spot"] == pytest.approx(1.0)  # the fake gateway round-robins
        assert 0 < row["cache_hit_rate"] < 1
        assert len(res["samples"]["ttft_ms"]) == 16
        assert "--policy" in res["commands"]["router"]


def test_multi_turn_chains_turns_through_the_gateway(tmp_path, capsys) -> None:
    out = tmp_path / "m.json"
    code = main(
        [
            "bench",
            "run",
            "--workload",
            "multi-turn",
            "--policies",
            "round-robin",
            "--turns",
            "3",
            "--think-time",
            "0.01",
            "--json",
            str(out),
            *SMALL,
            *FAKE_ARGS,
        ]
    )
    assert code == 0
    res = json.loads(out.read_text())["results"][0]
    assert res["summary"]["errors"] == 0 and res["summary"]["requests"] == 15
    sent = res["samples"]["sent_at_s"]
    assert sent[1] > sent[0] and sent[2] > sent[1]  # turn k+1 only after turn k


def test_chart_is_written_as_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    chart = tmp_path / "c.png"
    code = main(
        [
            "bench",
            "run",
            "--workload",
            "bursty",
            "--burst-size",
            "8",
            "--policies",
            "random",
            "--chart",
            str(chart),
            *SMALL,
            *FAKE_ARGS,
        ]
    )
    assert code == 0
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_fleet_that_dies_is_reported_with_its_log(tmp_path, capsys) -> None:
    code = main(
        [
            "bench",
            "run",
            "--workload",
            "shared-prefix",
            "--policies",
            "default",
            "--fleet-cmd",
            "{python} -c 'import sys; print(\"boom\"); sys.exit(3)'",
            "--log-dir",
            str(tmp_path),
            *SMALL,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "exited with code 3" in err and "boom" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rate", "-1"], "--rate must be > 0"),
        (["--router-url", "http://127.0.0.1:9"], "--router-url needs --fleet-urls"),
        (["--fleet-urls", "http://10.0.0.1:8000"], "only loopback"),
        (["--policies", ""], "nothing to compare"),
        (["--workload", "trace"], "needs --trace"),
    ],
)
def test_bad_arguments_give_a_clear_error(extra, message, capsys) -> None:
    argv = ["bench", "run", "--workload", "shared-prefix", "--policies", "default", *SMALL]
    assert main([*argv, *extra]) == 2
    assert message in capsys.readouterr().err


def test_sglang_router_missing_is_a_clear_error(monkeypatch, capsys) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        command.importlib.util, "find_spec", lambda n: None if n == "sglang_router" else real(n)
    )
    argv = ["bench", "run", "--workload", "shared-prefix", "--sglang-router", *SMALL]
    assert main(argv) == 2
    assert "pip install sglang-router" in capsys.readouterr().err


def _real_stack() -> bool:
    return all(
        importlib.util.find_spec(m) is not None for m in ("igw.sim.command", "igw.gateway.command")
    )


@pytest.mark.skipif(not _real_stack(), reason="igw sim / igw serve not available yet")
def test_real_sim_and_gateway_run_end_to_end(tmp_path) -> None:
    out = tmp_path / "real.json"
    code = main(
        [
            "bench",
            "run",
            "--workload",
            "shared-prefix",
            "--policies",
            "round-robin,default",
            "--replicas",
            "2",
            "--requests",
            "16",
            "--rate",
            "8",
            "--speed",
            "20",
            "--groups",
            "2",
            "--system-tokens",
            "400",
            "--output-tokens",
            "4",
            "--duration-max",
            "15",
            "--no-progress",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    for res in json.loads(out.read_text())["results"]:
        assert res["summary"]["errors"] == 0
        assert sum(res["per_replica_requests"].values()) == 16
        assert res["summary"]["cache_hit_rate"] is not None


def test_show_renders_saved_results_as_markdown(tmp_path, capsys) -> None:
    out = tmp_path / "s.json"
    argv = ["bench", "run", "--workload", "hot-prefix", "--policies", "least-loaded"]
    assert main([*argv, "--json", str(out), *SMALL, *FAKE_ARGS]) == 0
    capsys.readouterr()
    assert main(["bench", "show", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| policy | TTFT p50 (ms)" in text and "| least-loaded |" in text
    assert "--workload hot-prefix" in text and "r0=" in text


def test_show_rejects_a_file_that_is_not_a_bench_result(tmp_path, capsys) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    assert main(["bench", "show", str(bad)]) == 2
    assert "not an igw bench result" in capsys.readouterr().err


def test_prompts_longer_than_the_profile_allows_are_refused_up_front(capsys) -> None:
    pytest.importorskip("igw.sim.profiles")
    argv = ["bench", "run", "--workload", "agentic", "--policies", "default", "--requests", "6"]
    assert main(argv) == 2
    assert "max_model_len" in capsys.readouterr().err


def test_warmup_leaves_early_requests_out_of_the_latency_figures(tmp_path) -> None:
    out = tmp_path / "w.json"
    argv = ["bench", "run", "--workload", "shared-prefix", "--policies", "round-robin"]
    assert main([*argv, "--warmup", "0.2", "--json", str(out), *SMALL, *FAKE_ARGS]) == 0
    res = json.loads(out.read_text())["results"][0]
    late = sum(1 for t in res["samples"]["sent_at_s"] if t >= 0.2)
    assert 0 < late < 16
    assert res["summary"]["requests"] == late and res["summary"]["warmup_s"] == 0.2
    assert sum(res["per_replica_requests"].values()) == 16  # counters cover the whole run
