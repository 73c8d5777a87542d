"""Admission (key -> tenant, allow-list, limits) and the token debit at the end."""

from __future__ import annotations

import calendar

import pytest

from igw.access import TENANT_ATTR, build_access
from igw.errors import InferenceError
from igw.pipeline import Request, Usage

NOON = calendar.timegm((2026, 11, 26, 12, 0, 0))  # a UTC wall time


def make(spec, clock, *, wall=None, environ=None):
    return build_access(spec, clock=clock, wall=wall or (lambda: NOON), environ=environ or {})


def request(key: str | None = "sk-a-1", model: str = "llama-8b", **headers) -> Request:
    req = Request("r1", headers=dict(headers))
    if key is not None:
        req.headers["authorization"] = f"Bearer {key}"
    req.incoming_model = model
    return req


def finish(access, req: Request, *, total=0, status=200) -> None:
    req.response_status = status
    req.usage = Usage(total_tokens=total)
    for stage in access.response_checks:
        stage.on_finish(req)


async def admit(access, req: Request) -> Request:
    for check in access.checks:
        await check.check(req)
    return req


async def refused(access, req: Request) -> InferenceError:
    with pytest.raises(InferenceError) as info:
        await admit(access, req)
    return info.value


TEAM_A = {"tenants": {"team-a": {"keys": ["sk-a-1"]}}}


async def test_valid_key_admits_and_names_the_tenant(clock):
    req = await admit(make(TEAM_A, clock), request())
    assert req.attrs[TENANT_ATTR] == "team-a"
    assert req.fairness_id == "team-a"


async def test_tenant_replaces_the_fairness_header(clock):
    req = request(**{"x-gateway-inference-fairness-id": "me-first"})
    req.fairness_id = "me-first"  # as the parse stage set it
    await admit(make(TEAM_A, clock), req)
    assert req.fairness_id == "team-a"


async def test_missing_key_is_401(clock):
    err = await refused(make(TEAM_A, clock), request(key=None))
    assert err.http_status == 401
    assert "missing API key" in err.message


async def test_unknown_key_is_401_and_not_echoed(clock):
    err = await refused(make(TEAM_A, clock), request(key="sk-guess-123"))
    assert err.http_status == 401
    assert "sk-guess-123" not in err.message + repr(err.headers)


async def test_non_bearer_authorization_is_401(clock):
    req = request(key=None, authorization="Basic dXNlcjpwYXNz")
    assert (await refused(make(TEAM_A, clock), req)).http_status == 401


async def test_x_api_key_header_is_accepted(clock):
    req = await admit(make(TEAM_A, clock), request(key=None, **{"x-api-key": "sk-a-1"}))
    assert req.attrs[TENANT_ATTR] == "team-a"


async def test_key_is_not_forwarded_to_replicas(clock):
    req = await admit(make(TEAM_A, clock), request(**{"x-api-key": "sk-a-1"}))
    assert "authorization" not in req.headers and "x-api-key" not in req.headers


async def test_forward_key_keeps_the_header(clock):
    req = await admit(make({**TEAM_A, "forwardKey": True}, clock), request())
    assert req.headers["authorization"] == "Bearer sk-a-1"


async def test_model_outside_the_allow_list_is_403(clock):
    spec = {"tenants": {"team-a": {"keys": ["sk-a-1"], "models": ["llama-*", "mistral"]}}}
    access = make(spec, clock)
    await admit(access, request(model="llama-70b"))
    await admit(access, request(model="mistral"))
    err = await refused(access, request(model="gpt-4"))
    assert err.http_status == 403
    assert "gpt-4" in err.message


async def test_request_bucket_refuses_with_429_and_retry_after(clock):
    spec = {"tenants": {"team-a": {"keys": ["sk-a-1"], "requestsPerMinute": 2}}}
    access = make(spec, clock)
    await admit(access, request())
    await admit(access, request())
    err = await refused(access, request())
    assert err.http_status == 429
    assert "requests per minute" in err.message
    assert err.headers["retry-after"] == "30"  # 2/min: one more in 30 s
    clock.advance(30)
    await admit(access, request())


async def test_burst_caps_the_saved_up_requests(clock):
    spec = {"tenants": {"team-a": {"keys": ["sk-a-1"], "requestsPerMinute": 600, "burst": 3}}}
    access = make(spec, clock)
    for _ in range(3):
        await admit(access, request())
    err = await refused(access, request())
    assert err.headers["retry-after"] == "1"  # 0.1 s rounds up to a whole second


async def test_tenants_have_separate_limits(clock):
    spec = {"tenants": {"a": {"keys": ["ka"], "requestsPerMinute": 1},
                        "b": {"keys": ["kb"], "requestsPerMinute": 1}}}  # fmt: skip
    access = make(spec, clock)
    await admit(access, request(key="ka"))
    await admit(access, request(key="kb"))
    assert (await refused(access, request(key="ka"))).http_status == 429


async def test_tokens_are_debited_from_usage_at_finish(clock):
    spec = {"tenants": {"team-a": {"keys": ["sk-a-1"], "tokensPerMinute": 600}}}
    access = make(spec, clock)
    first = await admit(access, request())
    second = await admit(access, request())  # admitted: nothing is charged up front
    finish(access, first, total=500)
    await admit(access, request())  # 100 tokens left
    finish(access, second, total=400)  # now 300 in debt
    err = await refused(access, request())
    assert err.http_status == 429
    assert "tokens per minute" in err.message
    assert err.headers["retry-after"] == "31"  # (300 + 1) tokens at 10/s
    clock.advance(31)
    await admit(access, request())


async def test_token_refusal_does_not_use_a_request_slot(clock):
    spec = {"tenants": {"team-a": {"keys": ["sk-a-1"], "requestsPerMinute": 1,
                                   "tokensPerMinute": 60}}}  # fmt: skip
    access = make(spec, clock)
    finish(access, await admit(access, request()), total=60)
    clock.advance(60)  # both buckets full again: 1 request, 60 tokens
    access.limiter.debit("team-a/tokens", access.tenants["team-a"].tokens, 100)
    assert "tokens" in (await refused(access, request())).message
    clock.advance(41)  # tokens back above zero; the request slot was never taken
    await admit(access, request())


async def test_usage_missing_charges_the_prompt_estimate(clock):
    spec = {"tenants": {"team-a": {"keys": ["sk-a-1"], "tokensPerDay": 1000}}}
    access = make(spec, clock)
    req = await admit(access, request())
    req.prompt_tokens_estimate = 40
    finish(access, req, total=0, status=200)
    assert await access.limiter.used("team-a/tokens-day", "2026-11-26") == 40


async def test_failed_request_without_usage_costs_nothing(clock):
    spec = {"tenants": {"team-a": {"keys": ["sk-a-1"], "tokensPerDay": 1000}}}
    access = make(spec, clock)
    req = await admit(access, request())
    req.prompt_tokens_estimate = 40
    finish(access, req, total=0, status=503)
    assert await access.limiter.used("team-a/tokens-day", "2026-11-26") == 0


async def test_daily_quota_refuses_until_utc_midnight(clock):
    wall = [float(NOON)]
    spec = {"tenants": {"team-a": {"keys": ["sk-a-1"], "tokensPerDay": 1000}}}
    access = make(spec, clock, wall=lambda: wall[0])
    finish(access, await admit(access, request()), total=1000)
    err = await refused(access, request())
    assert err.http_status == 429
    assert "tokens per day" in err.message
    assert err.headers["retry-after"] == str(12 * 3600)
    wall[0] += 12 * 3600 - 1  # 23:59:59
    assert (await refused(access, request())).headers["retry-after"] == "1"
    wall[0] += 1  # 00:00:00 the next day
    await admit(access, request())


async def test_tenant_priority_applies_without_an_objective(clock):
    spec = {"tenants": {"team-a": {"keys": ["sk-a-1"], "priority": -1}}}
    access = make(spec, clock)
    assert (await admit(access, request())).priority == -1
    with_objective = request()
    with_objective.objective, with_objective.priority = "interactive", 5
    assert (await admit(access, with_objective)).priority == 5


async def test_anonymous_allow_admits_keyless_requests(clock):
    access = make({**TEAM_A, "anonymous": "allow"}, clock)
    req = await admit(access, request(key=None))
    assert req.fairness_id == "anonymous"
    assert (await refused(access, request(key="sk-wrong"))).http_status == 401


async def test_anonymous_tenant_limits_apply_to_keyless_requests(clock):
    spec = {"anonymous": "allow", "tenants": {"anonymous": {"requestsPerMinute": 1}}}
    access = make(spec, clock)
    await admit(access, request(key=None))
    assert (await refused(access, request(key=None))).http_status == 429


async def test_custom_header_is_read_and_stripped(clock):
    access = make({**TEAM_A, "header": "X-IGW-Key"}, clock)
    req = await admit(access, request(key=None, **{"x-igw-key": "sk-a-1"}))
    assert req.attrs[TENANT_ATTR] == "team-a" and "x-igw-key" not in req.headers


async def test_refused_key_does_not_keep_the_clients_fairness_label(clock):
    req = request(key="sk-wrong")
    req.fairness_id = "chosen-by-client"
    await refused(make(TEAM_A, clock), req)
    assert req.fairness_id == "unauthenticated"


async def test_rate_limited_request_is_labelled_with_its_tenant(clock):
    spec = {"tenants": {"team-a": {"keys": ["sk-a-1"], "requestsPerMinute": 1}}}
    access = make(spec, clock)
    await admit(access, request())
    req = request()
    await refused(access, req)
    assert req.fairness_id == "team-a"
    assert TENANT_ATTR not in req.attrs  # nothing to debit for a refused request
