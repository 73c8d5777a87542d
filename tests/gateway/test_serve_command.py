"""``igw serve`` as a user runs it: a subprocess that prints its URL and answers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import igw

# The subprocess must import the same igw as this test (the source tree with PYTHONPATH, or
# the installed package with its compiled core in CI), not whichever comes first.
IGW_HOME = Path(igw.__file__).resolve().parents[1]


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(IGW_HOME), out.get("PYTHONPATH", "")) if p)
    return out


def serve(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "igw", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env(),
        text=True,
    )


def read_url(proc: subprocess.Popen, timeout: float = 20.0) -> tuple[str, list[str]]:
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if match:
            for _ in range(6):  # the rest of the banner
                lines.append(proc.stdout.readline())
            return match.group(1), lines
    raise AssertionError("igw serve printed no URL:\n" + "".join(lines))


def test_serve_sim_starts_prints_url_and_curl_example_and_answers():
    proc = serve("--sim", "2", "--port", "0", "--sim-speed", "50")
    try:
        url, lines = read_url(proc)
        text = "".join(lines)
        assert f"curl -s {url}/v1/completions" in text
        assert '"model": "sim-model"' in text
        assert "routing: predicted-ttft" in text  # the policy in use is printed
        body = json.dumps({"model": "sim-model", "prompt": "Once upon a time", "max_tokens": 4})
        request = urllib.request.Request(
            url + "/v1/completions", data=body.encode(),
            headers={"content-type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            assert response.headers["x-igw-endpoint"]
            answer = json.loads(response.read())
        assert answer["usage"]["completion_tokens"] == 4
    finally:
        proc.terminate()
        proc.communicate(timeout=10)  # also closes the pipe
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--sim", "0"], "--sim"),
        (["--sim", "1", "--policy", "nope"], "nope"),
        (["--endpoints", "http://127.0.0.1:notaport"], "port"),
    ],
)
def test_bad_flags_fail_fast_with_one_line(args, needle):
    proc = serve("--port", "0", *args)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert needle in out
    assert "Traceback" not in out


def test_bad_config_file_names_file_and_field(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_text("pools:\n  a: {endpoints: [http://127.0.0.1:1]}\nmodels:\n  m: {pool: b}\n")
    proc = serve("--port", "0", "--config", str(path))
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert str(path) in out and "'b' is not a pool" in out
    assert "Traceback" not in out
