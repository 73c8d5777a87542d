"""What the stages need from other parts of igw, as small Protocols.

The stages are written against these shapes rather than concrete classes so they can be
assembled with the real scheduling engine / objective stores or with small fakes in tests.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from igw.datastore import Endpoint, Pool
    from igw.pipeline import Decision, Request


class Engine(Protocol):
    """``igw.scheduling.SchedulingEngine``: picks endpoints and holds in-flight reservations."""

    def schedule(self, request: Request, pool: Pool, *, k: int | None = None) -> Decision: ...

    def release(self, decision: Decision) -> None: ...


class ObjectiveLookup(Protocol):
    """``igw.objectives.ObjectiveStore``: InferenceObjective name -> priority (None = unknown)."""

    def priority(self, name: str) -> int | None: ...


class RewriteLookup(Protocol):
    """``igw.objectives.RewriteStore``: model -> (target model, rule) by InferenceModelRewrite."""

    def resolve(self, model: str, rng: random.Random) -> tuple[str, Any] | None: ...


class ResponseReporter(Protocol):
    """``igw.datalayer.DataLayer``: feeds outlier detection with each response's outcome."""

    def report_response(self, endpoint: Endpoint, ok: bool) -> None: ...
