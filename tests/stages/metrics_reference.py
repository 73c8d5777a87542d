"""The per-request EPP metrics as plain prometheus_client families, one observe per value:
what igw's journaled metrics must expose exactly (shared by the journal tests)."""

from __future__ import annotations

import re

import prometheus_client

from igw import metrics as igw_metrics
from igw.pipeline import Request

EPP = ("model_name", "target_model_name", "fairness_id", "priority")
# gauges the reference families do not keep
_NOT_COMPARED = ("llm_d_epp_request_running", "llm_d_epp_request_processing")


def epp_text(registry) -> str:
    """The registry's llm_d_epp_request_* lines, sorted, gauges and creation times left out
    (a ``_created`` line keeps its labels, not its value)."""
    text = prometheus_client.generate_latest(registry).decode()
    lines = [
        line
        for line in text.splitlines()
        if line.startswith("llm_d_epp_request_") and not line.startswith(_NOT_COMPARED)
    ]
    return "\n".join(sorted(re.sub(r"_created(\{.*\})? .*", r"_created\1", x) for x in lines))


def reference_families(registry) -> dict:
    def histogram(name, buckets):
        return prometheus_client.Histogram(name, "h", EPP, buckets=buckets, registry=registry)

    m = igw_metrics
    return {
        "total": prometheus_client.Counter("llm_d_epp_request_total", "h", EPP, registry=registry),
        "size": histogram("llm_d_epp_request_size_bytes", m.REQUEST_SIZE_BUCKETS),
        "duration": histogram("llm_d_epp_request_duration_seconds", m.GENERAL_LATENCY_BUCKETS),
        "ttft": histogram("llm_d_epp_request_ttft_seconds", m.GENERAL_LATENCY_BUCKETS),
        "response": histogram("llm_d_epp_response_size_bytes", m.RESPONSE_SIZE_BUCKETS),
        "input": histogram("llm_d_epp_request_input_tokens", m.INPUT_TOKEN_BUCKETS),
        "output": histogram("llm_d_epp_request_output_tokens", m.OUTPUT_TOKEN_BUCKETS),
        "ntpot": histogram("llm_d_epp_request_ntpot_seconds", m.NTPOT_BUCKETS),
        "cached": histogram("llm_d_epp_request_cached_tokens", m.INPUT_TOKEN_BUCKETS),
    }


def observe_finished(families: dict, labels: tuple, request: Request, size: int | None) -> None:
    """One scheduled and answered request, as the reference records it."""
    families["total"].labels(*labels).inc()
    families["size"].labels(*labels).observe(len(request.body))
    latency = max(0.0, request.finished_at - request.received_at)
    families["duration"].labels(*labels).observe(latency)
    if request.first_byte_at is not None:
        ttft = max(0.0, request.first_byte_at - request.received_at)
        families["ttft"].labels(*labels).observe(ttft)
    if size is not None:
        families["response"].labels(*labels).observe(size)
    usage = request.usage
    if usage.prompt_tokens > 0:
        families["input"].labels(*labels).observe(usage.prompt_tokens)
    if usage.completion_tokens > 0:
        families["output"].labels(*labels).observe(usage.completion_tokens)
        families["ntpot"].labels(*labels).observe(latency / usage.completion_tokens)
    if usage.cached_tokens > 0:
        families["cached"].labels(*labels).observe(usage.cached_tokens)
