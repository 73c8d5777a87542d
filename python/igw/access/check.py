"""The admit check (key -> tenant, model allow-list, limits) and the token debit at the end.

``AccessCheck.check`` runs in the pipeline's admit stage, after parse (so the model is known)
and before routing. It refuses with an ``InferenceError``: 401 without a valid key, 403 for a
model outside the tenant's allow-list, 429 with ``Retry-After`` when a limit is reached. On
admission the tenant becomes the request's fairness id (flow control and the metrics'
``fairness_id`` label see tenants, not a header the client chose) and, when configured and no
objective header chose one, its priority.

Tokens are not known until the answer ends, so admission only refuses a tenant whose token
bucket is already empty (or in debt) and ``UsageDebit.on_finish`` charges the reported usage.
Charging an estimate up front (prompt + max_tokens) would refuse requests that would fit,
since max_tokens is an upper bound usually far above what is generated; the price is that a
bucket can go negative by the tokens of the requests in flight when it ran out, and the
tenant then waits that debt off.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import time
from collections.abc import Callable

from igw.access.keys import KeyRing, MalformedKey, extract_key
from igw.access.limiter import Limiter, Rate
from igw.errors import ErrorCode, InferenceError
from igw.pipeline import Request

DAY = 86_400
TENANT_ATTR = "tenant"  # request.attrs key holding the admitted tenant's name
UNAUTHENTICATED = "unauthenticated"  # fairness id of a request refused for its key


@dataclasses.dataclass(frozen=True)
class Tenant:
    name: str
    requests: Rate | None = None
    tokens: Rate | None = None
    tokens_per_day: int | None = None
    models: tuple[str, ...] | None = None
    priority: int | None = None
    requests_key: str = dataclasses.field(init=False, repr=False)
    tokens_key: str = dataclasses.field(init=False, repr=False)
    day_key: str = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "requests_key", f"{self.name}/requests")
        object.__setattr__(self, "tokens_key", f"{self.name}/tokens")
        object.__setattr__(self, "day_key", f"{self.name}/tokens-day")

    def allows(self, model: str) -> bool:
        if self.models is None:
            return True
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    @property
    def counts_tokens(self) -> bool:
        return self.tokens is not None or self.tokens_per_day is not None


_day_cache: tuple[int, str] = (-1, "")


def utc_day(wall: float) -> str:
    """The UTC date of ``wall`` (cached: formatting it is the slowest step of admission)."""
    global _day_cache
    number = int(wall // DAY)
    if _day_cache[0] != number:
        _day_cache = (number, time.strftime("%Y-%m-%d", time.gmtime(wall)))
    return _day_cache[1]


def retry_after(seconds: float) -> str:
    """Whole seconds, at least 1 (``Retry-After: 0`` invites an immediate retry storm)."""
    return str(max(1, math.ceil(seconds - 1e-9)))


def _refuse(code: ErrorCode, message: str, reason: str, wait: float | None = None):
    headers = {"retry-after": retry_after(wait)} if wait is not None else None
    return InferenceError(code, message, drop_reason=reason, headers=headers)


class AccessCheck:
    """Admission: authenticate, authorize the model, enforce the limits."""

    name = "access"

    def __init__(
        self,
        tenants: dict[str, Tenant],
        key_ring: KeyRing,
        limiter: Limiter,
        *,
        header: str = "authorization",
        anonymous: Tenant | None = None,
        forward_key: bool = False,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.tenants = tenants
        self.key_ring = key_ring
        self.limiter = limiter
        self.header = header
        self.anonymous = anonymous  # None: keyless requests get 401
        self.forward_key = forward_key
        self.wall = wall

    async def check(self, request: Request) -> None:
        # Until the key is known the client's fairness header is not trusted, not even as a
        # metrics label on the 401 (it would let anyone mint label values).
        request.fairness_id = UNAUTHENTICATED
        tenant = self.authenticate(request)
        request.fairness_id = tenant.name
        if tenant.priority is not None and request.objective is None:
            request.priority = tenant.priority
        if not tenant.allows(request.incoming_model):
            raise _refuse(
                ErrorCode.FORBIDDEN,
                f"model {request.incoming_model!r} is not allowed for this API key",
                "model_not_allowed",
            )
        await self.enforce(tenant)
        request.attrs[TENANT_ATTR] = tenant.name

    def authenticate(self, request: Request) -> Tenant:
        """The tenant of the request's key; removes the key from what goes upstream."""
        headers = request.headers
        try:
            key = extract_key(headers, self.header)
        except MalformedKey as exc:
            raise _refuse(ErrorCode.UNAUTHORIZED, str(exc), "invalid_api_key") from None
        if not self.forward_key:
            headers.pop(self.header, None)
            headers.pop("x-api-key", None)
        if key is None:
            if self.anonymous is None:
                raise _refuse(
                    ErrorCode.UNAUTHORIZED,
                    "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
                    if self.header == "authorization"
                    else f"missing API key: send it in the {self.header} header",
                    "missing_api_key",
                )
            return self.anonymous
        name = self.key_ring.tenant_of(key)
        if name is None:
            raise _refuse(ErrorCode.UNAUTHORIZED, "invalid API key", "invalid_api_key")
        return self.tenants[name]

    async def enforce(self, tenant: Tenant) -> None:
        """429 when a limit is reached. The token limits are checked first because they do
        not consume anything: a refused request must not also use up a request slot."""
        limiter = self.limiter
        if tenant.tokens_per_day is not None:
            wall = self.wall()
            used = await limiter.used(tenant.day_key, utc_day(wall))
            if used >= tenant.tokens_per_day:
                raise _refuse(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"tokens per day quota of tenant {tenant.name} used up "
                    f"({used} of {tenant.tokens_per_day}); it resets at 00:00 UTC",
                    "insufficient_quota",
                    DAY - wall % DAY,
                )
        if tenant.tokens is not None:
            level = await limiter.level(tenant.tokens_key, tenant.tokens)
            if level <= 0:
                raise _refuse(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"tokens per minute limit of tenant {tenant.name} reached "
                    f"({tenant.tokens.per_minute:g}/min)",
                    "rate_limit_exceeded",
                    (1.0 - level) / tenant.tokens.per_second,
                )
        if tenant.requests is not None:
            wait = await limiter.take(tenant.requests_key, tenant.requests)
            if wait > 0:
                raise _refuse(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"requests per minute limit of tenant {tenant.name} reached "
                    f"({tenant.requests.per_minute:g}/min)",
                    "rate_limit_exceeded",
                    wait,
                )


def tokens_used(request: Request) -> int:
    """What a finished request costs: the replica's reported usage, else (an answer with no
    usage, e.g. a stream without ``include_usage``) the prompt estimate; nothing for a request
    that got no successful answer."""
    usage = request.usage
    total = usage.total_tokens or (usage.prompt_tokens + usage.completion_tokens)
    if total:
        return total
    if 200 <= request.response_status < 300:
        return request.prompt_tokens_estimate
    return 0


class UsageDebit:
    """Response stage: charges a finished request's tokens to its tenant's limits."""

    name = "access.debit"
    observe_only = True  # never changes the bytes: may run after the client has them
    reads_response = False  # its head and chunk hooks do nothing: a relay may skip them

    def __init__(
        self,
        tenants: dict[str, Tenant],
        limiter: Limiter,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.tenants = tenants
        self.limiter = limiter
        self.wall = wall

    def on_headers(self, request: Request, status: int, headers: dict[str, str]) -> None:
        return None

    def on_chunk(self, request: Request, chunk: bytes, end_of_stream: bool) -> bytes:
        return chunk

    def on_finish(self, request: Request) -> None:
        name = request.attrs.get(TENANT_ATTR)
        tenant = self.tenants.get(name) if name is not None else None
        if tenant is None or not tenant.counts_tokens:
            return
        tokens = tokens_used(request)
        if tokens <= 0:
            return
        if tenant.tokens is not None:
            self.limiter.debit(tenant.tokens_key, tenant.tokens, tokens)
        if tenant.tokens_per_day is not None:
            self.limiter.add(tenant.day_key, utc_day(self.wall()), tokens)
