"""Reverse model-name rewrite in responses.

When igw rewrote the request's model (``x-llm-d-model-name-rewrite`` header or an
InferenceModelRewrite rule), the model server answers with the target name; the client asked
for the incoming name and must see it back. Like the reference, this is a byte-wise
replacement of ``"model":"<target>"`` and ``"model": "<target>"`` in each chunk (no JSON
decoding); a name split across two streamed chunks is left as is.
"""

from __future__ import annotations

import json


class ReverseRewriter:
    """Replaces the target model name by the incoming one in response bytes."""

    __slots__ = ("_pairs", "_probe")

    def __init__(self, target: str, incoming: str) -> None:
        quoted_target = json.dumps(target, ensure_ascii=False).encode()
        quoted_incoming = json.dumps(incoming, ensure_ascii=False).encode()
        self._probe = quoted_target
        self._pairs = [
            (b'"model":' + quoted_target, b'"model":' + quoted_incoming),
            (b'"model": ' + quoted_target, b'"model": ' + quoted_incoming),
        ]

    def apply(self, chunk: bytes) -> bytes:
        if self._probe not in chunk:
            return chunk
        for old, new in self._pairs:
            chunk = chunk.replace(old, new)
        return chunk


def reverse_rewriter(target: str, incoming: str) -> ReverseRewriter | None:
    """A rewriter when the names differ and both are known, else None (nothing to do)."""
    if not target or not incoming or target == incoming:
        return None
    return ReverseRewriter(target, incoming)
