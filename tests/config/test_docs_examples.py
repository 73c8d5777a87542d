"""The examples in docs/configuration.md load as documented (docs that drift fail here)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from igw.config import load_config
from igw.objectives import parse_objectives

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _yaml_blocks() -> list[str]:
    if not DOC.exists():
        pytest.skip("docs/configuration.md not present")
    return re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_full_config_example_loads():
    block = next(b for b in _yaml_blocks() if "kind: EndpointPickerConfig" in b)
    config = load_config(text=block)
    assert config.plugin("prefix").parameters["blockSizeTokens"] == 64
    assert config.parser_names() == ["openai-parser"]


def test_every_config_example_loads_and_builds():
    from igw.scheduling import SchedulingEngine

    blocks = [b for b in _yaml_blocks() if "kind: EndpointPickerConfig" in b and "python:" not in b]
    assert len(blocks) >= 2
    for block in blocks:
        assert SchedulingEngine(load_config(text=block)).profile_names


def test_the_objectives_example_parses_with_its_canary_split():
    block = next(b for b in _yaml_blocks() if "kind: InferenceModelRewrite" in b)
    state = parse_objectives(block, pool_name="my-pool")
    assert state.objectives.priority("chatbot") == 10
    rng = random.Random(5)
    picks = [state.rewrites.resolve("chatbot", rng)[0] for _ in range(1000)]
    assert 850 < picks.count("chatbot-v1") < 950
