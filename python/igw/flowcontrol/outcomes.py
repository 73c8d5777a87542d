"""What flow control answers: the reference's outcome names and its errors.

Statuses, messages and drop reasons follow the reference's admission layer
(pkg/epp/requestcontrol/admission.go ``translateFlowControlOutcome``): 429 when capacity
exists but is contended, 503 when there is no serving capacity. The outcome names are the
reference's ``QueueOutcome`` strings, used as metric label values.
"""

from __future__ import annotations

from igw.errors import ErrorCode, InferenceError

MESSAGE = "request rejected by flow control"

# The reference's QueueOutcome names (metric label values).
DISPATCHED = "Dispatched"
REJECTED_CAPACITY = "RejectedCapacity"
REJECTED_NO_ENDPOINTS = "RejectedNoEndpoints"
REJECTED_OTHER = "RejectedOther"
EVICTED_TTL = "EvictedTTL"
EVICTED_NO_ENDPOINTS = "EvictedNoEndpoints"
EVICTED_CANCELLED = "EvictedContextCancelled"
EVICTED_OTHER = "EvictedOther"


def saturated_error() -> InferenceError:
    return InferenceError(ErrorCode.RESOURCE_EXHAUSTED, MESSAGE, drop_reason="rejected-saturated")


def shed_error() -> InferenceError:
    """The legacy path's message; the drop-reason header says why (igw adds it)."""
    return InferenceError(
        ErrorCode.RESOURCE_EXHAUSTED,
        "system saturated, sheddable request dropped",
        drop_reason="rejected-saturated",
    )


def no_endpoints_error(queued: bool) -> InferenceError:
    message = (
        f"request timed out in queue and no endpoints are available: {MESSAGE}"
        if queued
        else f"no endpoints available: {MESSAGE}"
    )
    return InferenceError(
        ErrorCode.SERVICE_UNAVAILABLE, message, drop_reason="rejected-no-endpoints"
    )


def ttl_error() -> InferenceError:
    return InferenceError(
        ErrorCode.RESOURCE_EXHAUSTED,
        f"request timed out in queue: {MESSAGE}",
        drop_reason="rejected-ttl-expired",
    )


def shutdown_error() -> InferenceError:
    return InferenceError(
        ErrorCode.SERVICE_UNAVAILABLE,
        f"flow controller shutting down: {MESSAGE}",
        drop_reason="rejected-shutting-down",
    )
