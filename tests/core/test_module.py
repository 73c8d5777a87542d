"""The compiled module's surface: version, error type, and the `igw bench core` command."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

import igw
from igw import _core, core_reference
from igw.bench import core as corebench

ROOT = Path(__file__).resolve().parents[2]


def test_version_comes_from_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', text, re.MULTILINE).group(1)
    assert igw.__version__ == _core.__version__ == version


def test_one_error_type_reexported():
    assert igw.Error is _core.Error
    assert issubclass(_core.Error, Exception)
    with pytest.raises(igw.Error):
        _core.EndpointTable(0)


def test_reference_exposes_every_public_core_name():
    public = {n for n in dir(_core) if not n.startswith("_")}
    assert public <= set(dir(core_reference))


def parse(argv):
    parser = argparse.ArgumentParser(add_help=False)
    corebench.add_arguments(parser)
    return parser.parse_args(argv)


def test_bench_core_prints_json_with_all_numbers(capsys):
    args = parse(["--endpoints", "20", "--prompt-tokens", "512", "--iterations", "30",
                  "--reference-iterations", "2", "--json"])  # fmt: skip
    assert corebench.run(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["endpoints"] == 20 and out["prompt_tokens"] == 512
    assert 0 < out["pick_p50_us"] <= out["pick_p99_us"]
    assert out["index_entries"] > 0 and out["index_bytes_per_entry"] > 0
    assert out["speedup_vs_reference"] > 0


def test_bench_core_rejects_nonpositive_sizes(capsys):
    assert corebench.run(parse(["--endpoints", "0", "--no-reference"])) == 2
    assert "--endpoints" in capsys.readouterr().out
