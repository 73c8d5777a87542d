"""``igw sim`` on the command line: flags, and a real process that starts and answers."""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import igw
from igw.sim import command

# Where the igw under test lives (the source tree in development, site-packages in CI),
# so the child process runs the same code.
PYTHON_DIR = Path(igw.__file__).resolve().parents[1]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


def test_every_engine_constant_has_a_flag_that_overrides_the_profile():
    args = parse("--profile", "h100-llama8b", "--num-gpu-blocks", "99", "--lora-load-ms", "7")
    fleet, _ = command.make_fleet(args)
    assert fleet.params.num_gpu_blocks == 99
    assert fleet.params.lora_load_ms == 7.0
    assert fleet.params.decode_ms_per_step == 4.8  # untouched profile value


def test_fault_flags_configure_the_named_replicas():
    args = parse(
        "--replicas",
        "4",
        "--fail-replica",
        "0",
        "--slow-replica",
        "1:2.5",
        "--error-rate",
        "*:0.25",
        "--down-replica",
        "2",
        "--down-replica",
        "3:closed",
    )
    faults, closed = command.build_faults(args)
    assert faults[0].fail and not faults[1].fail
    assert faults[1].slow_factor == 2.5
    assert all(faults[i].error_rate == 0.25 for i in range(4))
    assert faults[2].down and closed == [3]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (("--slow-replica", "1"), "I:FACTOR"),
        (("--slow-replica", "0:fast"), "FACTOR must be a number"),
        (("--fail-replica", "9"), "out of range"),
        (("--error-rate", "0:2"), "error_rate"),
        (("--down-replica", "0:gone"), "I:closed"),
    ],
)
def test_bad_fault_flags_are_rejected_with_the_flag_named(flags, words):
    with pytest.raises(ValueError, match=words):
        command.make_fleet(parse("--replicas", "2", *flags))


def test_igw_sim_process_serves_replicas_and_exits_on_sigterm():
    env = {**os.environ, "PYTHONPATH": str(PYTHON_DIR)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "igw", "sim", "--replicas", "2", "--port", "0", "--speed", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        urls = []
        deadline = time.monotonic() + 15
        while len(urls) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            found = re.match(r"replica \d+: (http://\S+)", line)
            if found:
                urls.append(found.group(1))
        assert len(urls) == 2, proc.stderr.read() if proc.poll() is not None else "no URLs"
        out = subprocess.run(
            [sys.executable, "-c", _CLIENT, urls[1]],
            capture_output=True,
            text=True,
            timeout=15,
            env=env,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["200", "200", "3"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        proc.stdout.close()
        proc.stderr.close()


# A tiny blocking client run in its own process (the test itself must not block a loop).
_CLIENT = """
import json, sys, urllib.request
base = sys.argv[1]
print(urllib.request.urlopen(base + "/health", timeout=5).status)
req = urllib.request.Request(
    base + "/v1/completions",
    data=json.dumps({"model": "sim-model", "prompt": "hi", "max_tokens": 3}).encode(),
    headers={"content-type": "application/json"},
)
with urllib.request.urlopen(req, timeout=5) as resp:
    print(resp.status, json.load(resp)["usage"]["completion_tokens"])
"""


def test_bad_flags_make_the_command_exit_2_with_the_reason(capsys):
    assert command.run(parse("--replicas", "2", "--slow-replica", "7:2")) == 2
    assert "--slow-replica: replica index 7 out of range" in capsys.readouterr().err


def test_busy_port_makes_the_command_exit_1_with_the_reason(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert command.run(parse("--port", str(port))) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_replica_param_flags_give_one_replica_its_own_constants():
    args = parse(
        "--replicas", "3", "--num-gpu-blocks", "900",
        "--replica-param", "2:num-gpu-blocks=300", "--replica-param", "*:lora_load_ms=5",
    )  # fmt: skip
    fleet, _ = command.make_fleet(args)
    assert [r.params.num_gpu_blocks for r in fleet.replicas] == [900, 900, 300]
    assert all(r.params.lora_load_ms == 5.0 for r in fleet.replicas)


@pytest.mark.parametrize(
    ("spec", "words"),
    [("2:num-gpu-blocks", "I:NAME=VALUE"), ("0:gpu=1", "unknown engine parameter"),
     ("0:block-size=big", "expects an integer"), ("0:block-size=0", "block_size")],
)  # fmt: skip
def test_bad_replica_param_flags_are_rejected_naming_the_problem(spec, words):
    with pytest.raises(ValueError, match=words):
        command.make_fleet(parse("--replicas", "3", "--replica-param", spec))
