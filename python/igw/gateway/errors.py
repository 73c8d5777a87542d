"""OpenAI-style JSON errors: every error the gateway itself returns has this one shape.

``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`` with the HTTP status
that says what went wrong, so OpenAI client libraries raise their usual exception types
(``BadRequestError``, ``NotFoundError``, ``RateLimitError``, ...) instead of failing to decode.
Pipeline errors (``InferenceError``) keep their status and their drop-reason header.
"""

from __future__ import annotations

import json

from aiohttp import web

from igw.errors import ErrorCode, InferenceError

# HTTP status -> (OpenAI error type, default code)
_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "bad_request"),
    401: ("authentication_error", "unauthorized"),
    403: ("permission_error", "forbidden"),
    404: ("not_found_error", "model_not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("invalid_request_error", "request_timeout"),
    412: ("invalid_request_error", "precondition_failed"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limited"),
    500: ("server_error", "internal_error"),
    502: ("server_error", "upstream_error"),
    503: ("server_error", "no_endpoints"),
    504: ("server_error", "upstream_timeout"),
}

# Pipeline codes the reference sends no response for: a gateway still has to answer.
_FALLBACK_STATUS = {ErrorCode.MODEL_SERVER_ERROR: 502, ErrorCode.UNKNOWN: 500}


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> bytes:
    """The JSON bytes of an OpenAI-style error for ``status``."""
    err_type, default_code = _TYPES.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", str(status))
    )
    payload = {
        "error": {
            "message": message,
            "type": err_type,
            "param": param,
            "code": code or default_code,
        }
    }
    return json.dumps(payload).encode()


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(status, message, param=param, code=code),
        content_type="application/json",
        headers=headers,
    )


def status_of(err: InferenceError) -> int:
    return err.http_status or _FALLBACK_STATUS.get(err.code, 500)


def inference_error_response(err: InferenceError) -> web.Response:
    """An ``InferenceError`` from a stage as an OpenAI-style error (status and headers kept)."""
    status = status_of(err)
    code = err.headers.get("x-llm-d-request-dropped-reason") or None
    return error_response(status, err.message, code=code, headers=err.headers or None)


def sse_error_event(message: str, *, code: str = "upstream_error") -> bytes:
    """The last event of a stream that broke mid-way (a client sees why it ended)."""
    payload = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"
