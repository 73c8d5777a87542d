"""API management in front of the models: API keys -> tenants, rate limits, quotas.

``build_access(spec)`` turns the ``access:`` section of ``igw serve --config`` into what the
pipeline takes: ``.checks`` for the admit stage and ``.response_checks`` (the token debit)
for the response phase. State lives in a ``Limiter``; ``MemoryLimiter`` serves one process
(a shared backend such as Redis, for several gateway replicas, can implement the same
protocol). docs/access.md is the reference.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from igw.access.check import TENANT_ATTR, AccessCheck, Tenant, UsageDebit, tokens_used
from igw.access.config import ANONYMOUS, AccessSpec, TenantSpec, keys_in, redact
from igw.access.keys import KeyRing, extract_key
from igw.access.limiter import Limiter, MemoryLimiter, Rate
from igw.config import ConfigError
from igw.pipeline import Request

__all__ = [
    "TENANT_ATTR",
    "Access",
    "AccessCheck",
    "AccessSpec",
    "KeyRing",
    "Limiter",
    "MemoryLimiter",
    "Rate",
    "Tenant",
    "TenantSpec",
    "UsageDebit",
    "build_access",
    "extract_key",
    "tokens_used",
]


@dataclasses.dataclass
class Access:
    """What the gateway wires in: admit checks and response stages."""

    checks: list[Any]
    response_checks: list[Any]
    tenants: dict[str, Tenant]
    limiter: Limiter

    def authorize(self, headers: Mapping[str, str]) -> None:
        """Raise the 401 an inference request with these headers would get. For the routes
        that do not run the pipeline but should not answer strangers (``GET /v1/models``,
        which lists the models); no limit is charged."""
        request = Request(request_id="", headers={k.lower(): v for k, v in headers.items()})
        for check in self.checks:
            authenticate = getattr(check, "authenticate", None)
            if authenticate is not None:
                authenticate(request)


def tenant_from_spec(name: str, spec: TenantSpec) -> Tenant:
    return Tenant(
        name=name,
        requests=Rate(spec.requests_per_minute, spec.burst or 0.0)
        if spec.requests_per_minute is not None
        else None,
        tokens=Rate(spec.tokens_per_minute) if spec.tokens_per_minute is not None else None,
        tokens_per_day=spec.tokens_per_day,
        models=tuple(spec.models) if spec.models is not None else None,
        priority=spec.priority,
    )


def _env_keys(name: str, spec: TenantSpec, environ: Mapping[str, str], source: str) -> list[str]:
    if spec.keys_from is None:
        return []
    var = spec.keys_from.env
    field = f"access.tenants.{name}.keysFrom.env"
    value = environ.get(var)
    if value is None:
        raise ConfigError(source, field, f"the environment variable {var} is not set")
    keys = [item.strip() for item in value.split(",") if item.strip()]
    if not keys:
        raise ConfigError(source, field, f"the environment variable {var} holds no key")
    return keys


def build_access(
    spec: AccessSpec | Mapping[str, Any],
    *,
    source: str = "",
    environ: Mapping[str, str] | None = None,
    limiter: Limiter | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> Access:
    """Checks and response stages for ``spec``; keys from ``keysFrom`` are read from
    ``environ`` (default ``os.environ``) now. Problems are ``ConfigError``s naming the field."""
    if not isinstance(spec, AccessSpec):
        from pydantic import ValidationError

        from igw.config import validation_to_config_error

        try:
            spec = AccessSpec.model_validate(dict(spec))
        except ValidationError as exc:
            err = validation_to_config_error(exc, source, ("access",))
            hidden = keys_in(dict(spec))
            raise ConfigError(source, err.field, redact(err.expected, hidden)) from None
    environ = os.environ if environ is None else environ
    tenants = {name: tenant_from_spec(name, t) for name, t in spec.tenants.items()}
    ring = KeyRing()
    for name, tenant_spec in spec.tenants.items():
        for key in [*tenant_spec.keys, *_env_keys(name, tenant_spec, environ, source)]:
            try:
                ring.add(key, name)
            except ValueError as exc:
                raise ConfigError(source, f"access.tenants.{name}", str(exc)) from None
    anonymous = None
    if spec.anonymous == "allow":
        anonymous = tenants.setdefault(ANONYMOUS, Tenant(ANONYMOUS))
    limiter = limiter if limiter is not None else MemoryLimiter(clock)
    check = AccessCheck(
        tenants,
        ring,
        limiter,
        header=spec.header,
        anonymous=anonymous,
        forward_key=spec.forward_key,
        wall=wall,
    )
    return Access([check], [UsageDebit(tenants, limiter, wall=wall)], tenants, limiter)
