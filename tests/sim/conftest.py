"""Fixtures of the simulator tests."""

from __future__ import annotations

import aiohttp
import pytest


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session
