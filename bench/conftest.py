"""Shared benchmark settings. ``IGW_BENCH_QUICK=1`` (CI) keeps every bench file to a few
small cases so the whole directory runs in under a minute; timings are printed and stored
in ``extra_info``, never asserted (a shared 2-core machine is too noisy for that)."""

from __future__ import annotations

import os

import pytest

QUICK = os.environ.get("IGW_BENCH_QUICK") == "1"


@pytest.fixture(scope="session")
def bench_quick() -> bool:
    """True when the quick (CI) benchmark mode is on."""
    return QUICK
