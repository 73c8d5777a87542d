"""One structured log line per guard decision (block, redact, moderation outage).

The line names the rule and identifies the request (id, model, fairness id) and the text by
a short SHA-256 digest, never by the text itself: prompts and answers may hold exactly the
secrets the guard is there to keep out of places like log stores. The same digest of the
same body lets an operator match a complaint to a decision without reading the prompt.
"""

from __future__ import annotations

import hashlib
import logging

from igw.pipeline import Request

log = logging.getLogger("igw.guard")


def digest(data: bytes) -> str:
    """A short, stable fingerprint of ``data`` (16 hex digits of SHA-256)."""
    return hashlib.sha256(data).hexdigest()[:16]


class DecisionLog:
    """Writes decisions when enabled (``log: decisions``); free when ``log: none``."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def record(
        self,
        request: Request,
        *,
        stage: str,
        action: str,
        rules: list[str] | str,
        data: bytes = b"",
    ) -> None:
        """Log ``action`` ("block", "redact", "error") taken by ``stage`` because of ``rules``.

        Also kept on ``request.attrs["guard.decisions"]`` so access logs and tests can see it.
        """
        names = [rules] if isinstance(rules, str) else list(rules)
        request.attrs.setdefault("guard.decisions", []).append((stage, action, names))
        if not self.enabled:
            return
        log.info(
            "guard decision stage=%s action=%s rules=%s request=%s model=%s fairness=%s "
            "sha256=%s bytes=%d",
            stage, action, ",".join(names), request.request_id,
            request.incoming_model or "-", request.fairness_id, digest(data), len(data),
        )  # fmt: skip
