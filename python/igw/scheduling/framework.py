"""The plugin contracts of the scheduling layer (what a plugin must look like, nothing more).

Built-in scorers and pickers run inside the core in one vectorised pass; they are described
here by small frozen descriptors (``CoreScorer``, ``CorePicker``) that the engine turns into a
core ``Profile``. Python plugins implement ``Filter`` or ``Scorer`` below and see numpy views
of the same snapshot arrays the core uses.

Contracts:
* ``Filter.filter`` returns a bool mask over endpoint ids (length ``>= len(mask)`` of the one it
  got). It receives the mask left by the previous filters and should only clear entries; a
  filter that would empty the set decides itself whether to fail open (return ``mask``).
* ``Scorer.score`` returns float32 scores either per endpoint id (length ``high_water``) or
  aligned with ``endpoints`` (the eligible ids, ascending). Values are clamped to [0, 1] and
  weighted like built-in scorers; NaN counts as 0.
* The snapshot is shared by every plugin of a pick and cached across picks: its arrays are
  read-only (copy before modifying), and scraped fields may lag the latest scrape by up to
  5 ms. The in-flight counters (``inflight_requests``, ``inflight_tokens``) are refreshed on
  every pick, so load that igw itself routed is always current.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

PREFIX_ATTR = "igw.prefix"  # request.attrs key: (hash settings, block hashes of the prompt)

if TYPE_CHECKING:
    from igw.datastore import Pool
    from igw.pipeline import Request


@runtime_checkable
class Filter(Protocol):
    name: str

    def filter(
        self, request: Request, pool: Pool, snapshot: Any, mask: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.bool_]: ...


@runtime_checkable
class Scorer(Protocol):
    def score(
        self, request: Request, snapshot: Any, endpoints: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]: ...


@dataclasses.dataclass(frozen=True)
class PrefixSettings:
    """How prompts are cut into blocks for prefix matching.

    ``block_bytes`` is what the hash uses (text bytes per block); ``block_tokens`` is the same
    block in tokens, used by the core to turn matched blocks into cached tokens.
    """

    block_bytes: int = 256
    block_tokens: int = 64
    max_blocks: int = 2048


@dataclasses.dataclass(frozen=True)
class CoreScorer:
    """A scorer implemented by the core; ``params`` uses the core's parameter names."""

    name: str
    type: str
    params: dict[str, float] = dataclasses.field(default_factory=dict)
    prefix: PrefixSettings | None = None  # prefix-cache-scorer: how prompts are hashed
    request_tokens: int = 0  # predicted-ttft-scorer: in-flight tokens charged per request
    calibrate: bool = False  # predicted-ttft-scorer: learn prefill rates online
    # predicted-ttft-scorer: > 0 charges hot_request_tokens instead of request_tokens to
    # requests whose prefix is hot (recent share x endpoints > this factor; scheduling.demand)
    hot_prefix_factor: float = 0.0
    hot_request_tokens: int = 0
    # predicted-ttft-scorer: > 0 holds a streamed request with this many uncached tokens
    # while its endpoint has another such prefill in flight (igw.scheduling.gate), at most
    # prefill_gate_max_wait seconds
    prefill_gate_tokens: int = 0
    prefill_gate_max_wait: float = 0.0


@dataclasses.dataclass(frozen=True)
class CorePicker:
    name: str
    type: str
    max_endpoints: int = 1


@dataclasses.dataclass(frozen=True)
class PassivePlugin:
    """A plugin igw accepts in config but whose work is done elsewhere (parsers, producers,
    data sources) or built into the core; kept so other layers can read its parameters."""

    name: str
    type: str
    params: Any = None
