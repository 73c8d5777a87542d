"""A journal batch whose entries all belong to one series (the usual batch: one model, one
priority) is applied without grouping per family, and its scheduling attempts are counted
per endpoint without (series, endpoint) pairs; the exposition is what one observe per value
gives, as for batches of several series."""

from __future__ import annotations

import random
import re
from collections import Counter

import prometheus_client
import pytest

from igw import metrics as igw_metrics
from igw.datastore import Endpoint
from igw.metrics import BATCH, Metrics
from igw.pipeline import Decision, Request

from .metrics_reference import epp_text, observe_finished, reference_families

LABELS = ("m", "m", "default-flow", "0")


def _no_grouping(*_args):
    raise AssertionError("a one-series batch was grouped")


@pytest.mark.parametrize("seed", [1, 2])
def test_a_one_series_batch_exposes_what_one_observe_per_value_does(monkeypatch, seed):
    monkeypatch.setattr(Metrics, "_groups", _no_grouping)
    rnd = random.Random(seed)
    metrics = Metrics()
    reference = prometheus_client.CollectorRegistry()
    families = reference_families(reference)
    for i in range(2 * BATCH + 7):
        request = Request(f"r{i}", body=b"x" * rnd.randint(0, 5000), incoming_model="m",
                          target_model="m")  # fmt: skip
        request.received_at = 100.0 + rnd.random()
        request.finished_at = request.received_at + rnd.choice([rnd.random() * 7, 0.0, -1.0])
        if rnd.random() < 0.7:
            request.first_byte_at = request.received_at + rnd.random() - 0.1
        request.usage.prompt_tokens = rnd.choice([0, rnd.randint(1, 90000)])
        request.usage.completion_tokens = rnd.choice([0, rnd.randint(1, 9000)])
        request.usage.cached_tokens = rnd.choice([0, 0, rnd.randint(1, 9000)])
        size = rnd.choice([None, rnd.randint(0, 70000)])
        metrics.scheduled(request)
        metrics.request_finished(request, size, running=True)
        observe_finished(families, LABELS, request, size)
    metrics.flush()
    monkeypatch.undo()  # reading the registry below may group nothing more
    assert epp_text(metrics.registry).splitlines() == epp_text(reference).splitlines()


def test_a_family_with_no_value_in_a_one_series_batch_makes_no_series():
    metrics = Metrics()
    request = Request("r", incoming_model="m", target_model="m")
    request.received_at, request.finished_at = 1.0, 2.0  # no first byte, no tokens
    metrics.request_finished(request, None, running=False)
    text = metrics.generate().decode()
    assert "llm_d_epp_request_duration_seconds_count{" in text
    for family in ("ttft", "input_tokens", "output_tokens", "ntpot", "cached_tokens"):
        assert f"llm_d_epp_request_{family}_seconds_count{{" not in text
        assert f"llm_d_epp_request_{family}_count{{" not in text
    assert "llm_d_epp_response_size_bytes_count{" not in text


class _EndpointsOnly(Counter):
    """The tally of a one-series batch: endpoint ids, not (series, endpoint) pairs."""

    def __init__(self, items=()) -> None:
        items = list(items)
        assert not any(isinstance(x, tuple) for x in items), "counted pairs"
        super().__init__(items)


def test_a_one_series_batch_counts_attempts_per_endpoint_in_the_order_first_seen(monkeypatch):
    monkeypatch.setattr(igw_metrics, "_Tally", _EndpointsOnly)
    metrics = Metrics()
    b = Endpoint(1, "10.0.0.2:8001", name="pod-b", namespace="ns")
    a = Endpoint(0, "10.0.0.1:8000", name="pod-a", namespace="ns")
    for endpoint in [b, a, a, None, b, a]:
        request = Request("r", incoming_model="m", target_model="m")
        if endpoint is not None:
            request.decision = Decision(pool=None, endpoints=[endpoint])  # type: ignore[arg-type]
        metrics.scheduled(request)
    metrics.record_request(Request("r", incoming_model="m", target_model="m"))  # no attempt
    metrics.flush()
    monkeypatch.undo()
    text = metrics.generate().decode()
    lines = [x for x in text.splitlines()
             if x.startswith("inference_extension_scheduler_attempts_total{")]  # fmt: skip
    assert [re.sub(r".*pod_name=\"([^\"]*)\".* (\S+)$", r"\1 \2", x) for x in lines] == [
        "pod-b 2.0", "pod-a 3.0", " 1.0"]  # fmt: skip
