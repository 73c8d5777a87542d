"""The pipeline stages one by one, with small fakes for the engine and the stores."""

from __future__ import annotations

import json
import random
import time

import pytest

from igw.datastore import Pool
from igw.errors import ErrorCode, InferenceError
from igw.metrics import Metrics
from igw.pipeline import Decision, Request
from igw.stages import (
    AccountStage,
    FlowControlStage,
    ParseStage,
    ReverseRewriteStage,
    RouteStage,
    ScheduleStage,
    UsageStage,
    UtilizationDetector,
    build_pipeline,
    parser_types_from_config,
    subset_of,
)


def pool_of(*rows: tuple[int, float], stale: bool = False) -> Pool:
    pool = Pool("p")
    now = time.monotonic() - (60 if stale else 0)
    for i, (waiting, kv) in enumerate(rows):
        endpoint = pool.upsert(f"10.0.0.{i + 1}:8000")
        pool.table.update(endpoint.id, waiting=waiting, running=0, kv_util=kv, now=now)
        pool.table.set_ready(endpoint.id, True)
    return pool


class FakeEngine:
    def __init__(self, result=None, exc: Exception | None = None) -> None:
        self.result, self.exc = result, exc
        self.released: list[Decision] = []

    def schedule(self, request, pool, *, k=None):
        if self.exc is not None:
            raise self.exc
        if self.result is not None:
            return self.result
        return Decision(pool=pool, endpoints=pool.endpoints()[:1])

    def release(self, decision) -> None:
        self.released.append(decision)


class Reporter:
    def __init__(self) -> None:
        self.reports: list[tuple[str, bool]] = []

    def report_response(self, endpoint, ok: bool) -> None:
        self.reports.append((endpoint.address, ok))


def request_for(body: dict | bytes, path: str = "/v1/completions", **headers: str) -> Request:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Request("r", path=path, headers=dict(headers), body=raw)


class Objectives:
    def priority(self, name):
        return {"gold": 10, "batch": -1}.get(name)


def parsed(body, path="/v1/completions", **headers) -> Request:
    request = request_for(body, path, **headers)
    ParseStage(objectives=Objectives()).apply(request)
    return request


# ----------------------------------------------------------------------------- parse


def test_parse_stage_reads_objective_priority_new_header_first():
    request = parsed(
        {"model": "m", "prompt": "p"},
        **{"x-llm-d-inference-objective": "gold", "x-gateway-inference-objective": "batch"},
    )
    assert (request.objective, request.priority) == ("gold", 10)


def test_parse_stage_unknown_objective_has_priority_zero():
    request = parsed({"model": "m", "prompt": "p"}, **{"x-gateway-inference-objective": "nope"})
    assert (request.objective, request.priority) == ("nope", 0)


def test_parse_stage_fairness_id_from_legacy_alias_else_default():
    aliased = parsed({"model": "m", "prompt": "p"}, **{"x-gateway-inference-fairness-id": "t1"})
    assert aliased.fairness_id == "t1"
    assert parsed({"model": "m", "prompt": "p"}).fairness_id == "default-flow"


def test_subset_forms():
    request = Request("r", metadata={"envoy.lb.subset_hint": {
        "x-gateway-destination-endpoint-subset": ["a:1", "b:2,c:3"]}})  # fmt: skip
    assert subset_of(request) == ["a:1", "b:2", "c:3"]
    assert subset_of(request, use_metadata=False) is None
    request.headers["test-epp-endpoint-selection"] = "d"
    assert subset_of(request) == ["d"]
    assert subset_of(Request("r")) is None


# ----------------------------------------------------------------------------- route


def test_route_header_rewrite_reserializes_the_body_sorted_and_compact():
    request = parsed({"prompt": "p", "model": "a"}, **{"x-llm-d-model-name-rewrite": "b"})
    RouteStage().apply(request)
    assert request.target_model == "b" and request.lora == "b"
    assert request.out_body == b'{"model":"b","prompt":"p"}'


def test_route_rewrite_keeps_integers_beyond_64_bits_exact():
    body = b'{"model": "a", "prompt": "p", "seed": 123456789012345678901234567890}'
    request = parsed(body, **{"x-llm-d-model-name-rewrite": "b"})
    RouteStage().apply(request)
    assert request.out_body == b'{"model":"b","prompt":"p","seed":123456789012345678901234567890}'


def test_route_without_change_keeps_original_bytes():
    request = parsed(b'{"prompt": "p",   "model": "a"}')
    RouteStage().apply(request)
    assert request.out_body is None and request.upstream_body == request.body


def test_route_rule_overrides_header_and_reports_decision():
    class Rules:
        def resolve(self, model, rng):
            return ("canary", type("R", (), {"name": "split"})()) if model == "a" else None

    seen = []
    request = parsed({"model": "a", "prompt": "p"}, **{"x-llm-d-model-name-rewrite": "b"})
    RouteStage(Rules(), on_rewrite=lambda *args: seen.append(args)).apply(request)
    assert request.target_model == "canary" and request.rewrite_rule == "split"
    assert seen == [("split", "a", "canary")]


def test_route_missing_model_is_400():
    request = parsed({"prompt": "p"})
    with pytest.raises(InferenceError) as info:
        RouteStage().apply(request)
    assert info.value.message == "model not found in request body"


def test_route_leaves_passthrough_bodies_alone():
    request = parsed(b"raw", path="/v1/other", **{"x-llm-d-model-name-rewrite": "b"})
    RouteStage().apply(request)
    assert request.target_model == "" and request.out_body is None


def test_route_lora_only_for_known_adapters_when_asked():
    request = parsed({"model": "base", "prompt": "p"})
    RouteStage(is_adapter=lambda name: name.startswith("lora-")).apply(request)
    assert request.lora is None


# ----------------------------------------------------------------------------- flow control


def test_utilization_detector_averages_max_of_queue_and_kv():
    pool = pool_of((5, 0.0), (0, 0.4))  # 1.0 and 0.5
    assert UtilizationDetector().saturation(pool) == pytest.approx(0.75)


def test_utilization_detector_counts_stale_endpoints_as_saturated():
    assert UtilizationDetector(staleness=1.0).saturation(pool_of((0, 0.0), stale=True)) == 1.0


async def test_flow_control_sheds_only_negative_priority_when_saturated():
    pool = pool_of((10, 0.9))
    stage = FlowControlStage(lambda _r: pool)
    sheddable = Request("r", priority=-1)
    with pytest.raises(InferenceError) as info:
        await stage.process(sheddable)
    assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
    await stage.process(Request("r", priority=0))


async def test_flow_control_defers_to_a_controller_when_given():
    class Controller:
        def __init__(self):
            self.admitted = []

        async def admit(self, request, pool):
            self.admitted.append(request.request_id)

    controller = Controller()
    await FlowControlStage(lambda _r: pool_of((10, 0.9)), controller=controller).process(
        Request("x", priority=-5)
    )
    assert controller.admitted == ["x"]


# ----------------------------------------------------------------------------- schedule


async def test_schedule_empty_pool_is_503():
    with pytest.raises(InferenceError) as info:
        await ScheduleStage(FakeEngine(), lambda _r: Pool("p")).process(Request("r"))
    assert info.value.http_status == 503


async def test_schedule_engine_crash_is_429_failed_to_find_target():
    stage = ScheduleStage(FakeEngine(exc=RuntimeError("x")), lambda _r: pool_of((0, 0.1)))
    with pytest.raises(InferenceError) as info:
        await stage.process(Request("r"))
    assert info.value.http_status == 429
    assert info.value.message == "failed to find target endpoint: x"


def test_schedule_stage_refuses_an_engine_whose_schedule_is_a_coroutine():
    class AsyncEngine(FakeEngine):
        async def schedule(self, request, pool, *, k=None):  # type: ignore[override]
            return None

    with pytest.raises(TypeError, match=r"AsyncEngine\.schedule must return a Decision"):
        ScheduleStage(AsyncEngine(), lambda _r: pool_of((0, 0.1)))


async def test_schedule_empty_decision_is_released_and_503():
    pool = pool_of((0, 0.1))
    engine = FakeEngine(result=Decision(pool=pool, endpoints=[]))
    with pytest.raises(InferenceError):
        await ScheduleStage(engine, lambda _r: pool).process(Request("r"))
    assert len(engine.released) == 1


async def test_schedule_success_counts_the_request_and_marks_it_running():
    pool, metrics = pool_of((0, 0.1)), Metrics()
    request = parsed({"model": "m", "prompt": "p"})
    RouteStage().apply(request)
    await ScheduleStage(FakeEngine(), lambda _r: pool, metrics=metrics).process(request)
    assert request.decision is not None
    labels = {"model_name": "m", "target_model_name": "m", "priority": "0"}
    assert metrics.registry.get_sample_value("inference_objective_request_total", labels) == 1
    running = {"model_name": "m"}
    assert metrics.registry.get_sample_value("inference_objective_running_requests", running) == 1


# ----------------------------------------------------------------------------- response


async def test_pipeline_finish_releases_once_and_reports_the_served_endpoint():
    pool = pool_of((0, 0.1), (0, 0.1))
    engine, reporter, metrics = FakeEngine(), Reporter(), Metrics()
    pipeline = build_pipeline(engine, pool, metrics=metrics, reporter=reporter)
    request = request_for({"model": "m", "prompt": "p"})
    await pipeline.run(request)
    pipeline.response_started(request, 200, {"content-type": "application/json"})
    request.served_endpoint = "10.0.0.2:8000"
    pipeline.response_chunk(request, b'{"usage":{"completion_tokens":4}}', True)
    pipeline.finish(request)
    pipeline.finish(request)
    assert len(engine.released) == 1
    assert reporter.reports == [("10.0.0.2:8000", True)]
    labels = {"model_name": "m", "target_model_name": "m"}
    assert metrics.registry.get_sample_value("inference_objective_output_tokens_sum", labels) == 4
    assert metrics.registry.get_sample_value("inference_objective_running_requests",
                                             {"model_name": "m"}) == 0  # fmt: skip


async def test_failure_of_unknown_cause_does_not_blame_the_endpoint():
    pool = pool_of((0, 0.1))
    reporter = Reporter()
    pipeline = build_pipeline(FakeEngine(), pool, reporter=reporter)
    request = request_for({"model": "m", "prompt": "p"})
    await pipeline.run(request)
    pipeline.response_started(request, 200, {})
    request.attrs["outcome_unknown"] = True
    pipeline.finish(request, failed=True)
    assert reporter.reports == []


async def test_failed_stream_after_a_200_blames_the_endpoint():
    pool = pool_of((0, 0.1))
    reporter = Reporter()
    pipeline = build_pipeline(FakeEngine(), pool, reporter=reporter)
    request = request_for({"model": "m", "prompt": "p"})
    await pipeline.run(request)
    pipeline.response_started(request, 200, {})
    pipeline.finish(request, failed=True)
    assert reporter.reports == [("10.0.0.1:8000", False)]


async def test_upstream_error_flag_blames_the_endpoint():
    pool = pool_of((0, 0.1))
    reporter = Reporter()
    pipeline = build_pipeline(FakeEngine(), pool, reporter=reporter)
    request = request_for({"model": "m", "prompt": "p"})
    await pipeline.run(request)
    pipeline.response_started(request, 200, {})
    request.attrs["upstream_error"] = True
    pipeline.finish(request, failed=True)
    assert reporter.reports == [("10.0.0.1:8000", False)]


async def test_failed_request_reports_not_ok_and_records_no_latency():
    pool = pool_of((0, 0.1))
    engine, reporter, metrics = FakeEngine(), Reporter(), Metrics()
    pipeline = build_pipeline(engine, pool, metrics=metrics, reporter=reporter)
    request = request_for({"model": "m", "prompt": "p"})
    await pipeline.run(request)
    pipeline.response_started(request, 503, {})
    pipeline.finish(request, failed=True)
    assert reporter.reports == [("10.0.0.1:8000", False)]
    labels = {"model_name": "m", "target_model_name": "m", "error_code": "ModelServerError"}
    assert metrics.registry.get_sample_value("inference_objective_request_error_total", labels) == 1
    count = metrics.registry.get_sample_value(
        "inference_objective_request_duration_seconds_count",
        {"model_name": "m", "target_model_name": "m"},
    )
    assert count is None


def test_usage_and_reverse_rewrite_stages_on_a_stream():
    request = Request("r", incoming_model="asked", target_model="served")
    usage, rewrite = UsageStage(), ReverseRewriteStage()
    usage.on_headers(request, 200, {"content-type": "text/event-stream"})
    chunk = b'data: {"model":"served","usage":{"prompt_tokens":9}}\n\n'
    out = rewrite.on_chunk(request, usage.on_chunk(request, chunk, False), False)
    assert out == b'data: {"model":"asked","usage":{"prompt_tokens":9}}\n\n'
    assert request.usage.prompt_tokens == 9 and request.response_streaming


def test_usage_of_a_whole_json_body_is_read_when_the_request_finishes():
    request = Request("r", incoming_model="m", target_model="m")
    usage = UsageStage()
    usage.on_headers(request, 200, {"content-type": "application/json"})
    body = b'{"id":"x","usage":{"prompt_tokens":7,"completion_tokens":3}}'
    assert usage.on_chunk(request, body[:20], False) == body[:20]
    assert usage.on_chunk(request, body[20:], True) == body[20:]
    assert request.usage.prompt_tokens == 0  # not decoded on the response path
    usage.on_finish(request)
    assert (request.usage.prompt_tokens, request.usage.completion_tokens) == (7, 3)


def test_usage_of_a_json_body_that_never_ended_is_not_guessed():
    request = Request("r", incoming_model="m", target_model="m")
    usage = UsageStage()
    usage.on_headers(request, 200, {"content-type": "application/json"})
    usage.on_chunk(request, b'{"usage":{"prompt_tokens":7}}', False)
    usage.on_finish(request)  # the replica broke off before the end of the body
    assert request.usage.prompt_tokens == 0


async def test_pipeline_records_token_metrics_of_a_non_streamed_response():
    metrics = Metrics()
    pool = pool_of((0, 0.1))
    pipeline = build_pipeline(FakeEngine(), pool, metrics=metrics)
    request = request_for({"model": "m", "prompt": "p"})
    await pipeline.run(request)
    pipeline.response_started(request, 200, {"content-type": "application/json"})
    pipeline.response_chunk(request, b'{"usage":{"prompt_tokens":5,"completion_tokens":2}}', True)
    pipeline.finish(request)
    labels = {"model_name": "m", "target_model_name": "m"}
    assert metrics.registry.get_sample_value("inference_objective_input_tokens_sum", labels) == 5
    assert metrics.registry.get_sample_value("inference_objective_output_tokens_sum", labels) == 2


class FirstTokenEngine(FakeEngine):
    """Keeps the first-token times the account stage reports."""

    def __init__(self):
        super().__init__()
        self.ttfts = []

    def observe_first_token(self, decision, ttft):
        self.ttfts.append(ttft)


def test_account_stage_observes_first_token_once():
    engine = FirstTokenEngine()
    pool = pool_of((0, 0.1))
    request = Request("r", decision=Decision(pool=pool, endpoints=pool.endpoints()))
    stage = AccountStage(engine)
    stage.on_chunk(request, b"a", False)
    stage.on_chunk(request, b"b", False)
    assert len(engine.ttfts) == 1 and request.attrs["response_bytes"] == 2


def test_account_stage_takes_no_first_token_from_a_buffered_answer():
    engine = FirstTokenEngine()
    pool = pool_of((0, 0.1))
    request = Request("r", decision=Decision(pool=pool, endpoints=pool.endpoints()))
    AccountStage(engine).on_chunk(request, b'{"choices": []}', True)  # first and last chunk
    assert engine.ttfts == [] and request.attrs["response_bytes"] == 15


def test_parser_types_from_config_resolves_plugin_refs():
    config = {
        "plugins": [{"name": "p1", "type": "openai-parser"}, {"type": "passthrough-parser"}],
        "requestHandler": {"parsers": [{"pluginRef": "p1"}, {"pluginRef": "passthrough-parser"}]},
    }
    assert parser_types_from_config(config) == ["openai-parser", "passthrough-parser"]
    assert parser_types_from_config({"plugins": []}) is None


def test_build_pipeline_stage_order():
    pipeline = build_pipeline(FakeEngine(), Pool("p"), rng=random.Random(1))
    assert [s.name for s in pipeline.stages] == [
        "parse", "admit", "guard.in", "route", "flowcontrol", "schedule"]  # fmt: skip
    assert [s.name for s in pipeline.response_stages] == ["usage", "reverse-rewrite", "account"]


async def test_large_bodies_are_parsed_off_the_event_loop(monkeypatch):
    import igw.stages.parse as parse_module

    monkeypatch.setattr(parse_module, "OFFLOAD_BYTES", 10)
    threads = []
    original = ParseStage.apply

    def spy(self, request):
        import threading

        threads.append(threading.current_thread() is threading.main_thread())
        original(self, request)

    monkeypatch.setattr(ParseStage, "apply", spy)
    request = request_for({"model": "m", "prompt": "a long enough prompt"})
    await ParseStage().process(request)
    assert threads == [False] and request.incoming_model == "m"
