"""``igw epp`` as a process: flags, start-up errors, and a request routed end to end."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import grpc
import pytest
from epp_harness import (
    ENV,
    destination,
    route_once,
    start_epp,
    stop_process,
    wait_for_metrics,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from igw.datalayer.testing import FakeModelServer, vllm_page
from igw.extproc import command
from igw.extproc.flags import parse_bool, parse_duration, parse_size

# the child imports the same igw as this process (source tree or installed package)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    command.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("50ms", 0.05), ("2s", 2.0), ("1m30s", 90.0), ("1.5h", 5400.0), ("300us", 3e-4), ("0", 0)],
)
def test_go_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5", "2 s", "s", "1d", ""])
def test_bad_durations_are_rejected(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"), [("10MiB", 10 << 20), ("64Mi", 64 << 20), ("1G", 10**9), ("4096", 4096)]
)
def test_sizes(text, size):
    assert parse_size(text) == size


def test_bools_accept_go_spellings():
    assert parse_bool("false") is False and parse_bool("T") is True
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bool("maybe")


def test_reference_defaults():
    args = parse("--endpoints", "1.2.3.4:8000")
    assert (args.grpc_port, args.grpc_health_port, args.metrics_port) == (9002, 9003, 9090)
    assert args.refresh_metrics_interval == pytest.approx(0.05)
    assert args.metrics_staleness_threshold == pytest.approx(2.0)
    assert args.drain_timeout == pytest.approx(30.0)
    assert args.secure_serving is True and args.emit_endpoint_scores is False


def test_go_style_flags_and_boolean_values():
    args = parse("-grpc-port=9102", "--secure-serving=false", "--emit-endpoint-scores", "--v", "3")
    assert (args.grpc_port, args.secure_serving, args.emit_endpoint_scores, args.v) == (
        9102,
        False,
        True,
        3,
    )


def test_config_file_and_text_are_mutually_exclusive():
    with pytest.raises(SystemExit):
        parse("--config-file", "a.yaml", "--config-text", "x")


def _run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "igw", "epp", *argv],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_config_fails_at_start_with_one_line_and_exit_2(tmp_path):
    config = tmp_path / "epp.yaml"
    config.write_text(
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: queue-scorer}]\n"
        "schedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer, weight: -1}]}]\n"
    )
    result = _run_cli("--endpoints", "10.0.0.1:8000", "--config-file", str(config))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert str(config) in lines[0] and "weight" in lines[0]


def test_bad_flow_control_section_fails_at_start_naming_the_field(tmp_path):
    config = tmp_path / "epp.yaml"
    config.write_text(
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        "featureGates: [flowControl]\n"
        "flowControl: {priorityBands: [{priority: 1}, {priority: 1}]}\n"
    )
    result = _run_cli("--endpoints", "10.0.0.1:8000", "--config-file", str(config))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "priorityBands" in result.stderr and "duplicate priority band" in result.stderr


def test_bad_objectives_file_fails_at_start(tmp_path):
    objectives = tmp_path / "objectives.yaml"
    objectives.write_text("apiVersion: llm-d.ai/v1alpha2\nkind: InferenceObjective\nspec: 5\n")
    result = _run_cli("--endpoints", "10.0.0.1:8000", "--objectives-file", str(objectives))
    assert result.returncode == 2
    assert str(objectives) in result.stderr and "Traceback" not in result.stderr


def test_missing_endpoints_outside_kubernetes_is_a_clear_error(tmp_path, monkeypatch):
    # No cluster anywhere: no in-cluster variables, no kubeconfig, an empty home.
    for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG"):
        monkeypatch.delitem(ENV, name, raising=False)
    monkeypatch.setitem(ENV, "HOME", str(tmp_path))
    result = _run_cli("--pool-name", "p")
    assert result.returncode == 2
    assert "--endpoints" in result.stderr and "Traceback" not in result.stderr


async def test_epp_process_starts_answers_health_and_routes(tmp_path):
    idle = await FakeModelServer(vllm_page(waiting=0, kv_util=0.1, bulk=False)).start()
    busy = await FakeModelServer(vllm_page(waiting=30, kv_util=0.9, bulk=False)).start()
    objectives = tmp_path / "objectives.yaml"
    objectives.write_text(
        "apiVersion: llm-d.ai/v1alpha2\nkind: InferenceObjective\n"
        "metadata: {name: my-model}\nspec: {priority: 2, poolRef: {name: pool-a}}\n"
    )
    proc, line = await start_epp(
        "--pool-name=pool-a",
        f"--endpoints={idle.address},{busy.address}",
        f"--objectives-file={objectives}",
        "--secure-serving=false",
        "--refresh-metrics-interval=50ms",
    )
    try:
        match = re.search(
            r"on 0\.0\.0\.0:(\d+) \(plaintext\), health on :(\d+), metrics on :(\d+)", line
        )
        assert match, line
        grpc_port, health_port, metrics_port = (int(g) for g in match.groups())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service="readiness"))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # wait until both endpoints have been scraped (the pool gauges show the busy queue)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        needle = 'inference_pool_average_queue_size{name="pool-a"} 15.0'
        await wait_for_metrics(url, needle, "endpoints scraped")
        replies = await route_once(grpc_port)
        assert destination(replies[0]) == idle.address
    finally:
        await stop_process(proc)
        await idle.stop()
        await busy.stop()
    assert proc.returncode == 0


def test_a_busy_poll_window_out_of_range_fails_at_start_naming_the_flag():
    result = _run_cli("--endpoints", "10.0.0.1:8000", "--busy-poll-us", "-1")
    assert result.returncode == 2
    assert "--busy-poll-us: expected microseconds from 0 (off) to 1000000" in result.stderr
    assert "Traceback" not in result.stderr
