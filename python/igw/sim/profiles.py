"""Named hardware profiles: engine constants for a model on a GPU.

``default`` is a mid-range GPU (≈0.1 ms per prompt token, 10 ms per decode step): slow
enough that queueing and cache misses show clearly at modest request rates.

``h100-llama8b`` is a Llama-3-8B-shaped model in bf16 on one H100 SXM (3.35 TB/s):

* prefill measured at 62.6 ms for 2,048 uncached tokens, 124.8 ms for 4,096 and 260 ms for
  8,192. A fit of ``fixed + a·n + c·n(n-1)/2`` with the fixed cost of reading the weights
  (4.8 ms) gives a = 0.0272 ms/token and c = 1.05e-6 ms per token per earlier token
  (attention): 62.7 / 125.0 / 262.8 ms for those three sizes;
* a decode step cannot beat reading 16 GB of weights at 3.35 TB/s: 4.8 ms at batch 1; each
  KV-cache token attended adds 128 KiB read at 3.35 TB/s = 3.9e-5 ms; each sequence adds a
  little compute (16 GFLOP at ~700 TFLOP/s ≈ 0.023 ms);
* KV capacity: 80 GB × 0.9 - 16 GB weights - ~4 GB activations ≈ 52 GB at 2 MiB per
  16-token block ≈ 26,000 blocks (416k tokens).

``instant`` costs nothing: every step takes zero model time, so replicas answer as fast
as the event loop allows. Use it to measure a gateway's own overhead (issue 5's "instantly
answering replicas") without the model's latency in the way.

Any constant can still be overridden (``make_params(profile, **overrides)``, or the
matching ``igw sim`` flag).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from igw.sim.model import EngineParams

PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "h100-llama8b": {
        "num_gpu_blocks": 26000,
        "max_num_seqs": 256,
        "max_num_batched_tokens": 8192,
        "max_model_len": 131072,
        "decode_ms_per_step": 4.8,
        "decode_ms_per_seq": 0.023,
        "decode_ms_per_kv_token": 3.9e-5,
        "prefill_ms_per_token": 0.0272,
        "prefill_ms_per_token_ctx": 1.05e-6,
        "lora_load_ms": 10.0,
    },
    "instant": {
        "decode_ms_per_step": 0.0,
        "decode_ms_per_seq": 0.0,
        "decode_ms_per_kv_token": 0.0,
        "prefill_ms_per_token": 0.0,
        "prefill_ms_per_token_ctx": 0.0,
        "lora_load_ms": 0.0,
        "num_gpu_blocks": 65536,
        "max_num_batched_tokens": 1 << 20,
        "max_model_len": 1 << 20,
    },
}

PARAM_NAMES = tuple(f.name for f in dataclasses.fields(EngineParams))


def make_params(profile: str = "default", **overrides: Any) -> EngineParams:
    """The profile's constants with ``overrides`` applied (None values are ignored)."""
    if profile not in PROFILES:
        raise ValueError(f"profile: expected one of {sorted(PROFILES)}, got {profile!r}")
    unknown = sorted(set(overrides) - set(PARAM_NAMES))
    if unknown:
        raise ValueError(f"unknown engine parameter(s) {unknown}; known: {list(PARAM_NAMES)}")
    values = dict(PROFILES[profile])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return EngineParams(**values)
