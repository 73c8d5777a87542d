"""The ``guard:`` section of the serve config, parsed strictly.

Every regex is compiled here, once, so a bad pattern is a config error naming its field
rather than a failure on the first request, and the request path only runs precompiled
patterns. Unknown keys are errors (a misspelt ``pii`` key must not silently disable a check).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from igw.config import ConfigError, parse_duration, validation_to_config_error

Mode = Literal["block", "redact", "allow"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DenyRule(_Strict):
    """A named regex; any match blocks (prompt: 400; response: the answer is cut off)."""

    name: str = Field(min_length=1)
    pattern: str = Field(min_length=1)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"expected a valid regular expression ({exc})") from None
        return value


class PiiSpec(_Strict):
    """What to do with each kind of personal or secret data found in text."""

    emails: Mode = "allow"
    credit_cards: Mode = Field("allow", alias="creditCards")
    api_keys: Mode = Field("allow", alias="apiKeys")


class ModerationSpec(_Strict):
    """An OpenAI ``/v1/moderations``-compatible service asked about every prompt."""

    url: str = Field(min_length=1)
    timeout: float = 2.0
    fail_mode: Literal["open", "closed"] = Field("open", alias="failMode")
    categories: list[str] = Field(default_factory=list)
    model: str | None = None  # sent as the request's "model" when set

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError("expected a duration such as '2s' or '500ms'")
        seconds = parse_duration(value)
        if not 0 < seconds <= 60:
            raise ValueError("expected a duration above 0 and at most 60s")
        return seconds


class PromptSpec(_Strict):
    max_chars: int | None = Field(None, alias="maxChars", gt=0)
    deny: list[DenyRule] = Field(default_factory=list)
    pii: PiiSpec = Field(default_factory=PiiSpec)
    moderation: ModerationSpec | None = None


class ResponseSpec(_Strict):
    deny: list[DenyRule] = Field(default_factory=list)
    pii: PiiSpec = Field(default_factory=PiiSpec)
    window: int = Field(256, ge=0, le=65536)


class PluginRef(_Strict):
    """A user check: ``type`` is ``"package.module:Name"``; ``params`` go to its constructor."""

    type: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    params: dict[str, Any] = Field(default_factory=dict)


class GuardSpec(_Strict):
    log: Literal["none", "decisions"] = "decisions"
    prompt: PromptSpec = Field(default_factory=PromptSpec)
    response: ResponseSpec = Field(default_factory=ResponseSpec)
    plugins: list[PluginRef] = Field(default_factory=list)


def parse_spec(spec: Mapping[str, Any] | None, source: str = "") -> GuardSpec:
    """``spec`` (the YAML ``guard:`` mapping) as a ``GuardSpec``; ``ConfigError`` when bad."""
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise ConfigError(source, "guard", f"expected a mapping, got {type(spec).__name__}")
    try:
        return GuardSpec.model_validate(dict(spec))
    except ValidationError as exc:
        raise validation_to_config_error(exc, source, ("guard",)) from None
