"""What the parse and route stages read from headers, including the edge cases of their
header lookups: the new name is taken when present at all (even empty), else the legacy one."""

from __future__ import annotations

import json

from igw.pipeline import Request
from igw.stages import ParseStage, RouteStage, apply_headers

BODY = json.dumps({"model": "m", "prompt": "p"}).encode()


class Objectives:
    def priority(self, name: str) -> int | None:
        return {"gold": 10, "batch": -1}.get(name)


def headers_request(**headers: str) -> Request:
    return Request("r", headers=dict(headers), body=BODY)


def test_an_empty_new_objective_header_hides_the_legacy_one():
    request = headers_request(
        **{"x-llm-d-inference-objective": "", "x-gateway-inference-objective": "gold"}
    )
    apply_headers(request, Objectives())
    assert (request.objective, request.priority) == (None, 0)


def test_the_legacy_objective_header_applies_when_the_new_one_is_absent():
    request = headers_request(**{"x-gateway-inference-objective": "batch"})
    apply_headers(request, Objectives())
    assert (request.objective, request.priority) == ("batch", -1)


def test_an_empty_new_fairness_header_means_the_default_flow():
    request = headers_request(
        **{"x-llm-d-inference-fairness-id": "", "x-gateway-inference-fairness-id": "t1"}
    )
    apply_headers(request, None)
    assert request.fairness_id == "default-flow"


def test_no_steering_header_and_no_metadata_means_the_whole_pool():
    request = headers_request()
    request.subset = ["stale"]
    apply_headers(request, None)
    assert request.subset is None


def test_the_steering_header_gives_the_subset_even_without_metadata_use():
    request = headers_request(**{"test-epp-endpoint-selection": "10.0.0.1:8000, 10.0.0.2:8000"})
    apply_headers(request, None, use_subset_metadata=False)
    assert request.subset == ["10.0.0.1:8000", "10.0.0.2:8000"]


def test_subset_metadata_is_read_only_when_asked_for():
    metadata = {"envoy.lb.subset_hint": {"x-gateway-destination-endpoint-subset": ["1.2.3.4:80"]}}
    used = headers_request()
    used.metadata = dict(metadata)
    apply_headers(used, None)
    ignored = headers_request()
    ignored.metadata = dict(metadata)
    apply_headers(ignored, None, use_subset_metadata=False)
    assert (used.subset, ignored.subset) == (["1.2.3.4:80"], None)


def test_an_empty_new_rewrite_header_keeps_the_body_model():
    request = headers_request(
        **{"x-llm-d-model-name-rewrite": "", "x-gateway-model-name-rewrite": "other"}
    )
    ParseStage().apply(request)
    RouteStage().apply(request)
    assert request.target_model == "m" and request.out_body is None


def test_the_legacy_rewrite_header_rewrites_the_body():
    request = headers_request(**{"x-gateway-model-name-rewrite": "other"})
    ParseStage().apply(request)
    RouteStage().apply(request)
    assert request.target_model == "other"
    assert json.loads(request.out_body) == {"model": "other", "prompt": "p"}
