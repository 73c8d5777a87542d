"""Admit and guard stages: seams where access control and content safety plug in.

Both run a list of checks in order; an empty list makes them free. A check is any object with
``async check(request) -> None`` that raises ``InferenceError`` to refuse (401/403/429 for
admission, 400/403 for content safety). The access and guard packages provide real checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from igw.pipeline import Request


class Check(Protocol):
    async def check(self, request: Request) -> None: ...


class _CheckStage:
    name = "checks"

    def __init__(self, checks: Sequence[Check] = ()) -> None:
        self.checks = list(checks)

    async def process(self, request: Request) -> None:
        for check in self.checks:
            await check.check(request)


class AdmitStage(_CheckStage):
    """API key -> tenant, rate limits, quotas (none configured = everyone admitted)."""

    name = "admit"


class GuardStage(_CheckStage):
    """Content-safety checks on the prompt (none configured = nothing blocked)."""

    name = "guard.in"
