"""docs/kubernetes.md stays true: the files it names exist and the flags it lists are accepted."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from igw.extproc import command

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "kubernetes.md"


def test_every_deploy_path_in_the_doc_exists():
    paths = set(re.findall(r"deploy/[\w/-]+\.yaml|deploy/\w+/", DOC.read_text()))
    assert len(paths) >= 5
    missing = [p for p in paths if not (ROOT / p.rstrip("/.")).exists()]
    assert missing == []


def test_every_flag_in_the_flags_table_is_an_igw_epp_flag():
    table = DOC.read_text().split("### Kubernetes flags", 1)[1].split("\n\n", 2)[1]
    flags = re.findall(r"^\| `(--[\w-]+)`", table, flags=re.M)
    assert len(flags) >= 6
    parser = argparse.ArgumentParser(allow_abbrev=False)
    command.add_arguments(parser)
    known = {option for action in parser._actions for option in action.option_strings}
    assert [f for f in flags if f not in known] == []
