"""``igw serve --config FILE``: the full form of a standalone gateway, validated at start.

Example (the product's worked example (a): two models, a 90/10 canary split of the chatbot
across two pools with priority 10 on it, and a recommender; docs/standalone.md explains it)::

    pools:
      chat:        {sim: {replicas: 2}, policy: predicted-ttft}
      chat-canary: {endpoints: ["http://10.0.0.7:8000"]}
      recommender: {endpoints: ["http://10.0.0.8:8000"], eppConfig: rec-picker.yaml}
    models:
      chatbot:        {pool: chat, priority: 10}
      chatbot-canary: {pool: chat-canary, priority: 10}
      recommender:    {pool: recommender}
    rewrites:
      - model: chatbot
        targets: [{model: chatbot, weight: 90}, {model: chatbot-canary, weight: 10}]
    mirror:
      - {model: chatbot, url: "http://10.0.0.9:8000", percent: 5}
    objectivesFile: objectives.yaml   # optional InferenceObjective / InferenceModelRewrite YAML
    access:                           # optional: API keys -> tenants, rate limits, quotas
      tenants:
        team-a: {keysFrom: {env: TEAM_A_KEYS}, requestsPerMinute: 600, tokensPerDay: 5000000}
    guard: {...}                      # optional: content safety (igw.guard's own schema)

Every mistake is a ``ConfigError`` naming the file, the field path and what was expected.
Relative paths (``eppConfig``, ``objectivesFile``) are relative to the config file. The
``access:`` section is ``igw.access.AccessSpec`` (docs/access.md); ``guard:`` is kept as a
mapping here and checked by ``igw.guard.build_guard`` when the gateway starts. API keys never
appear in a config error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from igw.access.config import AccessSpec, keys_in, redact
from igw.config import ConfigError, validation_to_config_error
from igw.datastore import normalize_address

MIRROR_MAX_PERCENT = 100.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SimSpec(_Strict):
    """Simulated replicas started in-process for this pool (``igw.sim``)."""

    replicas: int = Field(ge=1, le=64)
    profile: str = "default"
    speed: float = Field(default=1.0, gt=0)
    seed: int = 0
    models: list[str] = Field(default_factory=lambda: ["sim-model"], min_length=1)
    loras: list[str] = Field(default_factory=list)

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        from igw.sim.profiles import PROFILES

        if value not in PROFILES:
            raise ValueError(f"expected one of {', '.join(sorted(PROFILES))}, got {value!r}")
        return value


class PoolSpec(_Strict):
    endpoints: list[str] = Field(default_factory=list)
    sim: SimSpec | None = None
    policy: str | None = None  # a named policy (igw.scheduling.named_policy)
    epp_config: str | None = Field(default=None, alias="eppConfig")  # EndpointPickerConfig file
    engine: str = "vllm"  # which metric names its replicas expose

    @field_validator("endpoints")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for item in value:
            if item.strip().startswith("https://"):
                raise ValueError(f"{item!r}: https replicas are not supported yet; use http://")
            normalize_address(item)  # ValueError names the bad address
        return value

    @model_validator(mode="after")
    def _has_replicas(self) -> PoolSpec:
        if not self.endpoints and self.sim is None:
            raise ValueError("a pool needs endpoints (a list of http://host:port) or sim")
        if self.policy is not None and self.epp_config is not None:
            raise ValueError("set either policy or eppConfig, not both")
        return self


class ModelSpec(_Strict):
    pool: str
    priority: int | None = None  # applies when the request names no InferenceObjective
    lora: bool = False  # the name is a LoRA adapter on the pool's base model


class RewriteTarget(_Strict):
    model: str = Field(min_length=1)
    weight: int | None = Field(default=None, ge=1, le=1_000_000)


class RewriteSpec(_Strict):
    name: str | None = None
    model: str = Field(min_length=1)
    targets: list[RewriteTarget] = Field(min_length=1)

    @model_validator(mode="after")
    def _weights_all_or_none(self) -> RewriteSpec:
        weighted = [t.weight is not None for t in self.targets]
        if any(weighted) and not all(weighted):
            raise ValueError("weights must be set on all targets or on none")
        return self


class MirrorSpec(_Strict):
    model: str = Field(min_length=1)
    url: str
    percent: float = Field(default=100.0, gt=0, le=MIRROR_MAX_PERCENT)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value.rstrip("/")


class GatewayConfig(_Strict):
    pools: dict[str, PoolSpec] = Field(min_length=1)
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    rewrites: list[RewriteSpec] = Field(default_factory=list)
    mirror: list[MirrorSpec] = Field(default_factory=list)
    objectives_file: str | None = Field(default=None, alias="objectivesFile")
    access: AccessSpec | None = None
    guard: dict[str, Any] | None = None  # validated by igw.guard.build_guard at start

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        for name, model in self.models.items():
            if model.pool not in self.pools:
                raise ValueError(
                    f"models.{name}.pool: {model.pool!r} is not a pool; defined pools: "
                    + ", ".join(self.pools)
                )
        if self.models:
            for i, rewrite in enumerate(self.rewrites):
                for j, target in enumerate(rewrite.targets):
                    if target.model not in self.models:
                        raise ValueError(
                            f"rewrites[{i}].targets[{j}].model: {target.model!r} is not in "
                            "models (every rewrite target must be routable to a pool)"
                        )
        return self

    def priorities(self) -> dict[str, int]:
        return {name: m.priority for name, m in self.models.items() if m.priority is not None}

    def routes(self) -> dict[str, str]:
        return {name: m.pool for name, m in self.models.items()}


def resolve_path(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base.parent / path


def parse_config(text: str, source: str = "<config>") -> GatewayConfig:
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            source, "", f"not valid YAML{where}: {getattr(exc, 'problem', exc)}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(source, "", "expected a mapping with pools: and models:")
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        err = validation_to_config_error(exc, source)
        secrets = keys_in(data.get("access"))
        if not secrets:
            raise err from None
        raise ConfigError(source, err.field, redact(err.expected, secrets)) from None


def load_gateway_config(path: str | Path) -> GatewayConfig:
    """Read and validate ``path``; every problem is a ``ConfigError`` naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read the file: {exc.strerror or exc}") from None
    return parse_config(text, str(path))
