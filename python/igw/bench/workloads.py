"""Workloads for ``igw bench``: deterministic request schedules built from a seed.

Every policy in one bench run replays the *same* list of ``BenchRequest`` (same texts, same
arrival offsets), so differences in latency come from routing alone. Texts are made of
three-letter pseudo-words plus a space (4 bytes ≈ 1 token, the estimate the reference picker
and the simulator use), so "tokens" below mean those words.

Multi-turn and agentic sessions are closed loops: turn k+1 is sent ``think`` seconds after
turn k finished (``after`` points at it). The assistant turns placed in the history are
generated text, not the replica's actual reply, so the history (and therefore each prompt)
is identical whatever policy served the earlier turns.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_VOCAB = [a + b + c for a in _LETTERS for b in "aeiouy" for c in _LETTERS]  # 4,056 words


@dataclasses.dataclass(frozen=True, slots=True)
class BenchRequest:
    """One request of a workload; ``at`` is seconds from the run start (or, with ``after``,
    seconds after request ``after`` finished)."""

    index: int
    at: float
    group: str  # prefix group or session id: what a cache-aware router should keep together
    max_tokens: int
    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    model: str | None = None  # None: the fleet's first model
    after: int | None = None
    prompt_tokens: int = 0  # approximate (words)

    @property
    def chat(self) -> bool:
        return self.messages is not None

    def body(self, default_model: str, stream: bool = True) -> dict[str, Any]:
        """The OpenAI request body. Chat bodies carry ``max_completion_tokens`` too, since
        some routers rewrite ``max_tokens`` into it on the way."""
        body: dict[str, Any] = {"model": self.model or default_model, "max_tokens": self.max_tokens}
        if self.messages is not None:
            body["messages"] = [dict(m) for m in self.messages]
            body["max_completion_tokens"] = self.max_tokens
        else:
            body["prompt"] = self.prompt
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body


@dataclasses.dataclass(slots=True)
class WorkloadParams:
    """Knobs shared by the generators; each generator reads the ones that apply to it."""

    requests: int = 200
    rate: float = 4.0  # requests per second (wall clock) for open-loop arrivals
    seed: int = 0
    groups: int = 16
    system_tokens: int = 2000
    question_tokens: int = 64
    output_tokens: int = 64
    hot_share: float = 0.45
    burst_size: int = 32
    turns: int = 5
    think_time: float = 1.0  # seconds between a finished turn and the next one
    agentic_start_tokens: int = 30_000
    agentic_end_tokens: int = 100_000
    agentic_steps: int = 6
    trace_path: str | None = None


def _words(rng: np.random.Generator, n: int) -> str:
    idx = rng.integers(0, len(_VOCAB), size=n)
    return "".join(_VOCAB[i] + " " for i in idx)


def _poisson_times(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    if rate <= 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate}")
    return np.cumsum(rng.exponential(1.0 / rate, size=n))


def _group_prompts(rng: np.random.Generator, p: WorkloadParams) -> list[str]:
    # A distinct leading word per group so groups differ from the very first block.
    return [f"group{g:03d} " + _words(rng, p.system_tokens - 1) for g in range(p.groups)]


def _prefix_workload(p: WorkloadParams, weights: np.ndarray | None) -> list[BenchRequest]:
    rng = np.random.default_rng(p.seed)
    systems = _group_prompts(rng, p)
    times = _poisson_times(rng, p.requests, p.rate)
    choice = rng.choice(p.groups, size=p.requests, p=weights)
    out = []
    for i in range(p.requests):
        g = int(choice[i])
        prompt = systems[g] + "question: " + _words(rng, p.question_tokens - 1)
        out.append(
            BenchRequest(
                index=i,
                at=float(times[i]),
                group=f"g{g}",
                max_tokens=p.output_tokens,
                prompt=prompt,
                prompt_tokens=p.system_tokens + p.question_tokens,
            )
        )
    return out


def shared_prefix(p: WorkloadParams) -> list[BenchRequest]:
    """G groups × L-token system prompt + a short question, uniform over groups, Poisson
    arrivals (the shape of inference-perf's shared_prefix)."""
    return _prefix_workload(p, None)


def hot_prefix(p: WorkloadParams) -> list[BenchRequest]:
    """Like shared-prefix, but group 0 gets ``hot_share`` of the requests (default 45 %): more
    than one replica can serve when the fleet runs near capacity, so pinning it hurts."""
    if not 0 < p.hot_share < 1 or p.groups < 2:
        raise ValueError("hot-prefix needs 0 < hot_share < 1 and at least 2 groups")
    weights = np.full(p.groups, (1 - p.hot_share) / (p.groups - 1))
    weights[0] = p.hot_share
    return _prefix_workload(p, weights)


def bursty(p: WorkloadParams) -> list[BenchRequest]:
    """Shared-prefix requests in bursts of ``burst_size`` sent at the same instant; bursts are
    spaced so the mean rate is ``rate``. Exposes routers that decide on stale load."""
    base = _prefix_workload(p, None)
    gap = p.burst_size / p.rate
    return [dataclasses.replace(r, at=(r.index // p.burst_size) * gap) for r in base]


def multi_turn(p: WorkloadParams) -> list[BenchRequest]:
    """Chat sessions: a system prompt, then ``turns`` user turns; each turn's history holds
    every earlier turn, so the prompt grows and shares a prefix with the previous turn.
    Sessions start as a Poisson process; turns follow after ``think_time``."""
    rng = np.random.default_rng(p.seed)
    sessions = max(1, p.requests // p.turns)
    starts = _poisson_times(rng, sessions, p.rate / p.turns)
    out: list[BenchRequest] = []
    for s in range(sessions):
        system = f"session{s:04d} " + _words(rng, max(1, p.system_tokens // 4) - 1)
        history: list[dict[str, str]] = [{"role": "system", "content": system}]
        tokens = p.system_tokens // 4
        prev: int | None = None
        for _turn in range(p.turns):
            history.append({"role": "user", "content": _words(rng, p.question_tokens)})
            tokens += p.question_tokens
            idx = len(out)
            out.append(
                BenchRequest(
                    index=idx,
                    at=float(starts[s]) if prev is None else p.think_time,
                    group=f"s{s}",
                    max_tokens=p.output_tokens,
                    messages=tuple(dict(m) for m in history),
                    after=prev,
                    prompt_tokens=tokens,
                )
            )
            history.append({"role": "assistant", "content": _words(rng, p.output_tokens)})
            tokens += p.output_tokens
            prev = idx
    return out


def agentic(p: WorkloadParams) -> list[BenchRequest]:
    """Long-context agent loops: each session starts with ~``agentic_start_tokens`` of
    context and grows to ~``agentic_end_tokens`` over ``agentic_steps`` steps (tool output
    appended each step), one step after another with ``think_time`` between them."""
    rng = np.random.default_rng(p.seed)
    steps = max(1, p.agentic_steps)
    sessions = max(1, p.requests // steps)
    starts = _poisson_times(rng, sessions, p.rate / steps)
    growth = max(0, p.agentic_end_tokens - p.agentic_start_tokens) // max(1, steps - 1)
    out: list[BenchRequest] = []
    for s in range(sessions):
        context = f"agent{s:04d} " + _words(rng, p.agentic_start_tokens - 1)
        tokens = p.agentic_start_tokens
        prev: int | None = None
        for k in range(steps):
            if k:
                context += "tool: " + _words(rng, growth - 1)
                tokens += growth
            idx = len(out)
            out.append(
                BenchRequest(
                    index=idx,
                    at=float(starts[s]) if prev is None else p.think_time,
                    group=f"a{s}",
                    max_tokens=p.output_tokens,
                    prompt=context,
                    after=prev,
                    prompt_tokens=tokens,
                )
            )
            prev = idx
    return out


def trace(p: WorkloadParams) -> list[BenchRequest]:
    """Replay a JSONL file: one object per line with ``timestamp`` (seconds; offsets are
    taken from the first line), ``model`` (optional), ``prompt`` or ``messages``, and
    ``max_tokens``. At most ``requests`` lines are used."""
    if not p.trace_path:
        raise ValueError("the trace workload needs --trace FILE (JSONL)")
    out: list[BenchRequest] = []
    t0: float | None = None
    lines = Path(p.trace_path).read_text(encoding="utf-8").splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if len(out) >= p.requests:
            break
        where = f"{p.trace_path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object")
        ts = obj.get("timestamp", 0.0)
        if not isinstance(ts, int | float):
            raise ValueError(f"{where}: 'timestamp' must be a number of seconds")
        t0 = float(ts) if t0 is None else t0
        prompt, messages = obj.get("prompt"), obj.get("messages")
        if (prompt is None) == (messages is None):
            raise ValueError(f"{where}: exactly one of 'prompt' or 'messages' is required")
        if prompt is not None and not isinstance(prompt, str):
            raise ValueError(f"{where}: 'prompt' must be a string")
        if messages is not None and not (
            isinstance(messages, list) and all(isinstance(m, dict) for m in messages)
        ):
            raise ValueError(f"{where}: 'messages' must be a list of objects")
        max_tokens = obj.get("max_tokens", p.output_tokens)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"{where}: 'max_tokens' must be a positive integer")
        model = obj.get("model")
        if model is not None and not isinstance(model, str):
            raise ValueError(f"{where}: 'model' must be a string")
        text = (
            prompt if prompt is not None else "".join(str(m.get("content", "")) for m in messages)
        )
        out.append(
            BenchRequest(
                index=len(out),
                at=max(0.0, float(ts) - t0),
                group=str(obj.get("group", "trace")),
                max_tokens=max_tokens,
                prompt=prompt,
                messages=tuple(messages) if messages is not None else None,
                model=model,
                prompt_tokens=len(text) // 4,
            )
        )
    if not out:
        raise ValueError(f"{p.trace_path}: no requests")
    return out


WORKLOADS: dict[str, Callable[[WorkloadParams], list[BenchRequest]]] = {
    "shared-prefix": shared_prefix,
    "hot-prefix": hot_prefix,
    "multi-turn": multi_turn,
    "bursty": bursty,
    "agentic": agentic,
    "trace": trace,
}


def build(name: str, params: WorkloadParams) -> list[BenchRequest]:
    """The named workload's requests, or a ValueError naming the valid choices."""
    try:
        gen = WORKLOADS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; choose one of {sorted(WORKLOADS)}") from None
    return gen(params)


def mean_prompt_tokens(requests: list[BenchRequest]) -> float:
    return float(np.mean([r.prompt_tokens for r in requests])) if requests else 0.0
