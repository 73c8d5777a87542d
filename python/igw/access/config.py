"""The ``access:`` section of ``igw serve --config``: tenants, their keys and their limits.

Example::

    access:
      header: authorization          # "Authorization: Bearer <key>"; x-api-key always works too
      anonymous: deny                # requests without a key: deny (401) or allow
      tenants:
        team-a:
          keys: ["sk-a-1"]           # or keysFrom: {env: TEAM_A_KEYS} (comma-separated)
          requestsPerMinute: 600     # token bucket; burst = one minute's worth unless burst:
          tokensPerMinute: 200000    # prompt+completion tokens, debited when the answer ends
          tokensPerDay: 5000000      # quota, resets at UTC midnight
          models: ["llama-*"]        # fnmatch allow-list; other models get 403
          priority: 0                # priority of this tenant's requests without an objective

Validation here is structural (types, ranges, every tenant has a key source, no key given
twice). Keys named by ``keysFrom`` are read from the environment when the gateway starts
(``igw.access.build_access``), so a config file can be checked without the secrets.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ANONYMOUS = "anonymous"  # the tenant whose limits apply to keyless requests (anonymous: allow)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class KeysFrom(_Strict):
    """Where keys come from instead of the config file (which may be checked in)."""

    env: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class TenantSpec(_Strict):
    keys: list[str] = Field(default_factory=list)
    keys_from: KeysFrom | None = Field(default=None, alias="keysFrom")
    requests_per_minute: float | None = Field(default=None, gt=0, alias="requestsPerMinute")
    burst: float | None = Field(default=None, ge=1)
    tokens_per_minute: float | None = Field(default=None, gt=0, alias="tokensPerMinute")
    tokens_per_day: int | None = Field(default=None, ge=1, alias="tokensPerDay")
    models: list[str] | None = None
    priority: int | None = None

    @field_validator("keys")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        for i, key in enumerate(value):
            # Never echo a key back, not even in a config error.
            if not key.strip():
                raise ValueError(f"keys[{i}] is empty; expected a non-empty API key")
            if key != key.strip() or any(c.isspace() or ord(c) < 0x20 for c in key):
                raise ValueError(f"keys[{i}] contains whitespace or control characters")
        return value

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not pattern for pattern in value):
            raise ValueError("expected model names or fnmatch patterns, got an empty string")
        return value

    @model_validator(mode="after")
    def _burst_needs_rate(self) -> TenantSpec:
        if self.burst is not None and self.requests_per_minute is None:
            raise ValueError("burst applies to requestsPerMinute, which is not set")
        return self


class AccessSpec(_Strict):
    header: str = Field(default="authorization", min_length=1, pattern=r"^[A-Za-z0-9-]+$")
    anonymous: Literal["deny", "allow"] = "deny"
    forward_key: bool = Field(default=False, alias="forwardKey")  # pass the key to replicas
    tenants: dict[str, TenantSpec] = Field(default_factory=dict)

    @field_validator("header")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    @model_validator(mode="after")
    def _key_sources(self) -> AccessSpec:
        owners: dict[str, str] = {}
        for name, tenant in self.tenants.items():
            if not name.strip():
                raise ValueError("tenants: a tenant name is empty")
            if not tenant.keys and tenant.keys_from is None and name != ANONYMOUS:
                raise ValueError(f"tenants.{name}: expected keys: [...] or keysFrom: {{env: VAR}}")
            for i, key in enumerate(tenant.keys):
                other = owners.setdefault(key, name)
                if other != name or tenant.keys.index(key) != i:
                    raise ValueError(
                        f"tenants.{name}.keys[{i}]: the same key is already given to tenant "
                        f"{other!r} (a key must name one tenant)"
                    )
        if not self.tenants and self.anonymous == "deny":
            raise ValueError("tenants: no tenant is defined and anonymous is deny: nobody "
                             "could send a request")  # fmt: skip
        return self


def keys_in(access: object) -> list[str]:
    """Every string under ``tenants.*.keys`` of a raw ``access:`` mapping (to redact them)."""
    found: list[str] = []
    tenants = access.get("tenants") if isinstance(access, dict) else None
    for tenant in tenants.values() if isinstance(tenants, dict) else ():
        keys = tenant.get("keys") if isinstance(tenant, dict) else None
        if isinstance(keys, str):
            keys = [keys]
        found += [k for k in keys if isinstance(k, str) and k] if isinstance(keys, list) else []
    return found


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every secret replaced, for error messages (a config error shows a bad
    value as its ``repr``, so that is what is replaced; prose stays readable)."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(repr(secret), "<redacted>")
    return text
