"""The error every pipeline stage raises, and how it maps to HTTP.

Both front ends turn an ``InferenceError`` into their protocol: the ext_proc service into an
``ImmediateResponse`` (status, ``inference error: <Code> - <msg>`` body, extra headers), the
standalone gateway into an OpenAI-style JSON error. Codes and statuses follow the reference
picker so operators' alerts keep working.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

DROP_REASON_HEADER = "x-llm-d-request-dropped-reason"


class ErrorCode(enum.Enum):
    """Internal error codes; ``http_status`` is None where the reference sends no response."""

    BAD_REQUEST = ("BadRequest", 400)
    UNAUTHORIZED = ("Unauthorized", 401)
    FORBIDDEN = ("Forbidden", 403)
    NOT_FOUND = ("NotFound", 404)
    PRECONDITION_FAILED = ("PreconditionFailed", 412)
    PAYLOAD_TOO_LARGE = ("PayloadTooLarge", 413)
    RESOURCE_EXHAUSTED = ("ResourceExhausted", 429)
    INTERNAL = ("Internal", 500)
    SERVICE_UNAVAILABLE = ("ServiceUnavailable", 503)
    MODEL_SERVER_ERROR = ("ModelServerError", None)
    UNKNOWN = ("Unknown", None)

    def __init__(self, label: str, http_status: int | None) -> None:
        self.label = label
        self.http_status = http_status


class InferenceError(Exception):
    """A request-level failure with a code, a message for the client, and response headers."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        drop_reason: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})
        if drop_reason:
            self.headers[DROP_REASON_HEADER] = drop_reason

    @property
    def http_status(self) -> int | None:
        return self.code.http_status

    def body_text(self) -> str:
        """The reference picker's ImmediateResponse body."""
        return f"inference error: {self.code.label} - {self.message}"

    def __repr__(self) -> str:
        return f"InferenceError({self.code.label}, {self.message!r})"


def bad_request(message: str) -> InferenceError:
    return InferenceError(ErrorCode.BAD_REQUEST, message)


def no_endpoints(message: str = "failed to find endpoint candidates for serving the request"):
    return InferenceError(
        ErrorCode.SERVICE_UNAVAILABLE, message, drop_reason="rejected-no-endpoints"
    )
