"""OpenAI request schemas the simulator accepts, and vLLM-shaped error bodies.

Only the fields that change the simulation are declared; every other OpenAI field
(temperature, top_p, ...) is accepted and ignored, as a real server would mostly not care
either. Validation errors name the field and what was expected.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

PositiveInt = Annotated[int, Field(ge=1)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: StrictBool | None = False
    continuous_usage_stats: StrictBool | None = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: StrictStr | None = None
    max_tokens: PositiveInt | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: StrictBool = False
    min_tokens: Annotated[int, Field(ge=0)] = 0
    n: Annotated[int, Field(ge=1, le=1)] = 1
    cache_salt: StrictStr | None = None


class CompletionRequest(_Common):
    prompt: StrictStr | list[StrictStr] | list[Annotated[int, Field(ge=0, le=0xFFFFFFFF)]]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: StrictStr
    text: StrictStr | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: StrictStr
    content: StrictStr | list[ContentPart] | None = None


class ChatRequest(_Common):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: PositiveInt | None = None


class RequestError(Exception):
    """A client error to return as an OpenAI/vLLM-style JSON body."""

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    405: "MethodNotAllowed",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


def error_body(status: int, message: str, param: str | None = None) -> bytes:
    """``{"error": {"message", "type", "param", "code"}}`` as vLLM's OpenAI server sends."""
    err = {"message": message, "type": _ERROR_TYPES.get(status, "Error"), "param": param}
    err["code"] = status
    return json.dumps({"error": err}).encode()


def parse(model_cls: type[_Common], raw: bytes) -> Any:
    """Decode and validate a request body, raising ``RequestError`` (400) when invalid."""
    return validate(model_cls, decode(raw))


def decode(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or ``RequestError`` (400)."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"Invalid JSON body: {exc}") from None
    except RecursionError:
        raise RequestError(400, "Invalid JSON body: nested too deeply") from None
    if not isinstance(data, dict):
        raise RequestError(400, f"Request body must be a JSON object, got {type(data).__name__}")
    return data


def validate(model_cls: type[_Common], data: dict[str, Any]) -> Any:
    """Check a decoded body against ``model_cls``; ``RequestError`` (400) names the field."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        # Unions add one loc entry per branch ("str", "list[int]"); keep the field path.
        path = [p for p in first["loc"] if isinstance(p, int) or p.isidentifier()]
        path = [p for p in path if p not in _TYPE_NAMES]
        where = ".".join(str(part) for part in path) or "body"
        msg = _UNION_EXPECTATIONS.get(str(path[-1]) if path else "", first["msg"])
        raise RequestError(400, f"{where}: {msg}", param=str(path[0]) if path else None) from None


_TYPE_NAMES = frozenset({"str", "int", "bool", "float", "list", "dict", "none"})
_UNION_EXPECTATIONS = {
    "prompt": "expected a string, a list of strings or a list of token ids",
    "content": "expected a string, a list of content parts or null",
}
