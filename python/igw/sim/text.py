"""Prompt text, token estimates, prefix-block hashes and the filler the simulator answers with.

The simulator has no tokenizer. Like the reference picker's estimate, a token is ~4 bytes of
the text a real server would tokenize:

* completions: the prompt string (token-id prompts: the ids as little-endian uint32, so
  one id is exactly one 4-byte "token");
* chat: every message as ``role\\ncontent\\n`` (list contents: their text parts joined by a
  space) followed by the generation prompt ``assistant\\n`` - a minimal chat template. The
  gateway hashes the same rendering without the generation prompt, so all full blocks but
  the last agree.

Generated text is made of 4-byte words (" sim", " gpu" ...), so an answer of n tokens is
4n bytes and, pasted back into the next turn of a conversation, re-tokenizes to the same
blocks: the follow-up turn hits the cache for the answer too, as on vLLM.
"""

from __future__ import annotations

import json
import zlib
from array import array
from collections.abc import Sequence

# 64 four-byte words; a token of output is one of them.
WORDS: tuple[str, ...] = tuple(
    " " + w
    for w in (
        "the and sim for eos you are not but all can new one out see get "
        "now way may day use her how its our two who did let put say too "
        "old end big set why ask men run own off few low top far yes sun "
        "red map key cup box ink gpu fox ant owl elk bee cat dog hat pen"
    ).split()
)
if len(WORDS) != 64 or any(len(w.encode()) != 4 for w in WORDS):  # pragma: no cover
    raise ImportError("igw.sim.text: WORDS must be 64 four-byte words")
WORDS_JSON: tuple[str, ...] = tuple(json.dumps(w) for w in WORDS)  # pre-escaped for SSE

GENERATION_PROMPT = "assistant\n"
_U64 = (1 << 64) - 1

try:  # the compiled core, when built; the pure-Python chain below otherwise
    from igw._core import hash_blocks as _core_hash_blocks
except ImportError:  # pragma: no cover - depends on the build
    _core_hash_blocks = None
else:
    # The first call imports numpy (~0.1 s); pay it now, not inside an engine step.
    _core_hash_blocks(b"warm-up!", 8, 0, 1)


def chat_text(messages: Sequence[dict]) -> str:
    """The text a chat request's messages render to (see the module docstring)."""
    parts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(
                p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
        elif content is None:
            content = ""
        parts.append(f"{message.get('role', '')}\n{content}\n")
    parts.append(GENERATION_PROMPT)
    return "".join(parts)


def token_ids_bytes(ids: Sequence[int]) -> bytes:
    """Token-id prompts as little-endian uint32: 4 bytes per token."""
    out = array("I", ids)
    if out.itemsize != 4:  # pragma: no cover - every supported platform has 4-byte I
        out = array("L", ids)
    if array("I", [1]).tobytes() != b"\x01\x00\x00\x00":  # pragma: no cover - big endian
        out.byteswap()
    return out.tobytes()


def pseudo_token_ids(data: bytes, bytes_per_token: int) -> list[int]:
    """The ids ``/tokenize`` reports: each ``bytes_per_token`` slice as a little-endian int
    (the last one zero-padded), so equal text gives equal ids and the count matches the
    estimate the engine uses."""
    step = bytes_per_token
    return [int.from_bytes(data[i : i + step], "little") for i in range(0, len(data), step)]


def estimate_tokens(data: bytes, bytes_per_token: int) -> int:
    return max(1, -(-len(data) // bytes_per_token))


def chain_seed(lora: str | None, cache_salt: str | None) -> int:
    """Root of the hash chain: text under another adapter or salt never shares blocks."""
    return hash(("igw-sim", lora or "", cache_salt or "")) & _U64


def block_hashes(data: bytes, block_bytes: int, seed: int, limit: int | None = None) -> list[int]:
    """Chained hashes of every full ``block_bytes`` block of ``data`` (at most ``limit``).

    Uses the C++ core's XXH64 chain when it is built (about 5x faster on long prompts,
    which is most of a request's cost here), else Python's ``hash`` - salted per process,
    which is fine: the values never leave the process and only equality matters.
    """
    full = len(data) // block_bytes
    if limit is not None:
        full = min(full, limit)
    if full <= 0:
        return []
    if _core_hash_blocks is not None:
        return _core_hash_blocks(data, block_bytes, seed & _U64, full).tolist()
    out = []
    h = seed
    for off in range(0, full * block_bytes, block_bytes):
        h = hash((h, data[off : off + block_bytes]))
        out.append(h)
    return out


def answer_plan(data: bytes, out_min: int, out_max: int) -> tuple[int, int]:
    """(natural answer length in tokens, first word index), both fixed by the prompt."""
    digest = zlib.crc32(data)
    return out_min + digest % (out_max - out_min + 1), (digest >> 8) % len(WORDS)


def filler(start: int, first: int, count: int) -> str:
    """Output tokens ``first .. first+count-1`` of an answer whose first word is ``start``."""
    n = len(WORDS)
    return "".join(WORDS[(start + i) % n] for i in range(first, first + count))
