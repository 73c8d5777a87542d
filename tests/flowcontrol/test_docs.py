"""The configuration example in docs/flowcontrol.md loads and means what the page says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from igw.config import load_config
from igw.flowcontrol import ConcurrencyDetector, FlowControl, settings_from_config
from igw.flowcontrol.queues import EDF, ROUND_ROBIN

DOC = Path(__file__).resolve().parents[2] / "docs" / "flowcontrol.md"


def yaml_example() -> str:
    if not DOC.exists():
        pytest.skip("docs/flowcontrol.md not present")
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert blocks, "docs/flowcontrol.md has no yaml example"
    return blocks[0]


def test_docs_example_enables_flow_control_with_the_documented_settings():
    config = load_config(text=yaml_example())
    flow = FlowControl.from_config(config)
    assert flow is not None
    settings = settings_from_config(config)
    assert settings.max_requests == 2000 and settings.max_bytes == 2**30
    band, configured = settings.band_for(10)
    assert configured and (band.fairness, band.ordering) == (ROUND_ROBIN, EDF)
    detector = flow._detector_for(None)
    assert isinstance(detector, ConcurrencyDetector) and detector.max_concurrency == 10
