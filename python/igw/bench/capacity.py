"""A rough fleet-capacity estimate, so load can be given as a fraction (``--load 0.7``).

It follows the simulator's latency model (``igw.sim.model``): a step costs a fixed amount
(reading the weights) plus a cost per uncached prompt token, per decoding sequence and per
KV token a decoding sequence attends to. Spread over a decode batch of ``B`` sequences, a
replica is busy per request for about

    prefill_ms_per_token × uncached
    + output × (decode_ms_per_step / B + decode_ms_per_seq + decode_ms_per_kv_token × context)

model milliseconds, where ``uncached`` assumes ideal prefix reuse (only the part of the prompt
unique to the request is prefilled) and ``B`` is the batch of a saturated replica (default
256, vLLM's ``max_num_seqs``). Capacity = replicas × speed / that time: the throughput a
perfect cache-aware router could approach before queues grow without bound. A router that
loses locality runs the same rate at a higher real load, which is the point of the
comparison. Constants come from the simulator's
profile when ``igw.sim`` is importable, else from the figures in issue 5; give ``--rate``
when the fleet is not the simulator.
"""

from __future__ import annotations

import dataclasses
import importlib


@dataclasses.dataclass(frozen=True, slots=True)
class Profile:
    prefill_ms_per_token: float
    decode_ms_per_step: float
    decode_ms_per_seq: float = 0.05
    decode_ms_per_kv_token: float = 8e-5


FALLBACK_PROFILES: dict[str, Profile] = {
    "default": Profile(prefill_ms_per_token=0.1, decode_ms_per_step=10.0),
    # 16 GB of weights at 3.35 TB/s per step; 128 KiB of KV per attended token
    "h100-llama8b": Profile(0.031, 4.8, decode_ms_per_kv_token=131072 / 3.35e12 * 1e3),
}


def profile_constants(name: str) -> Profile:
    """The simulator's constants for ``name`` (its own profile table when importable)."""
    try:
        profiles = importlib.import_module("igw.sim.profiles")
        params = profiles.make_params(name)
        return Profile(
            prefill_ms_per_token=params.prefill_ms_per_token,
            decode_ms_per_step=params.decode_ms_per_step,
            decode_ms_per_seq=params.decode_ms_per_seq,
            decode_ms_per_kv_token=params.decode_ms_per_kv_token,
        )
    except (ImportError, AttributeError, KeyError, ValueError, TypeError):
        pass
    try:
        return FALLBACK_PROFILES[name]
    except KeyError:
        raise ValueError(
            f"no capacity constants for profile {name!r} (known: {sorted(FALLBACK_PROFILES)}); "
            "give --rate instead of --load"
        ) from None


def service_ms(
    p: Profile, uncached: float, output: float, context: float, decode_batch: float
) -> float:
    """Replica busy time per request, in model ms (speed 1)."""
    if decode_batch <= 0:
        raise ValueError("decode_batch must be > 0")
    per_token = (
        p.decode_ms_per_step / decode_batch
        + p.decode_ms_per_seq
        + p.decode_ms_per_kv_token * context
    )
    return p.prefill_ms_per_token * uncached + output * per_token


def fleet_capacity_rps(
    profile: str,
    replicas: int,
    speed: float,
    uncached_tokens: float,
    output_tokens: float,
    context_tokens: float,
    decode_batch: float = 256.0,
) -> float:
    """Requests per second the fleet could sustain with ideal cache reuse."""
    ms = service_ms(
        profile_constants(profile), uncached_tokens, output_tokens, context_tokens, decode_batch
    )
    return replicas * speed * 1000.0 / ms


def max_model_len(profile: str) -> int | None:
    """The simulator profile's ``max_model_len`` (prompt + output tokens), if known."""
    try:
        profiles = importlib.import_module("igw.sim.profiles")
        return int(profiles.make_params(profile).max_model_len)
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
