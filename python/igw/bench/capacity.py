"""A rough fleet-capacity estimate, so load can be given as a fraction (``--load 0.7``).

The simulator's latency model: prefill time proportional to *uncached* prompt tokens, decode
steps whose cost is shared by the sequences batched in them. A replica is therefore busy per
request for about

    prefill_ms_per_token × uncached_tokens + step_ms × output_tokens / decode_batch

milliseconds (at ``--speed 1``), where ``uncached_tokens`` assumes ideal prefix reuse (only
the part of the prompt unique to the request is prefilled). Capacity is replicas × speed /
that time. It is the capacity a perfect cache-aware router could reach; a router that loses
cache locality runs the same rate at a higher real load, which is the point of the
comparison. The constants are the named profiles of ``igw sim`` (issue 5); override them
with explicit ``--rate`` when the fleet is not the simulator.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class Profile:
    prefill_ms_per_token: float
    step_ms: float


PROFILES: dict[str, Profile] = {
    "default": Profile(prefill_ms_per_token=0.1, step_ms=10.0),
    "h100-llama8b": Profile(prefill_ms_per_token=0.031, step_ms=4.8),
}


def service_ms(
    profile: str, uncached_tokens: float, output_tokens: float, decode_batch: float
) -> float:
    """Replica busy time per request, in ms at speed 1."""
    try:
        p = PROFILES[profile]
    except KeyError:
        raise ValueError(
            f"no capacity constants for profile {profile!r} (known: {sorted(PROFILES)}); "
            "give --rate instead of --load"
        ) from None
    if decode_batch <= 0:
        raise ValueError("decode_batch must be > 0")
    return p.prefill_ms_per_token * uncached_tokens + p.step_ms * output_tokens / decode_batch


def fleet_capacity_rps(
    profile: str,
    replicas: int,
    speed: float,
    uncached_tokens: float,
    output_tokens: float,
    decode_batch: float = 16.0,
) -> float:
    """Requests per second the fleet could sustain with ideal cache reuse."""
    ms = service_ms(profile, uncached_tokens, output_tokens, decode_batch)
    return replicas * speed * 1000.0 / ms
