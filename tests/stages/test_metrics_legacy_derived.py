"""The legacy metric families are derived from the current ones at scrape time, and expose
exactly what recording them separately did."""

from __future__ import annotations

import random

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client import metrics as prom_metrics
from prometheus_client.parser import text_string_to_metric_families

from igw import metrics as igw_metrics
from igw.metrics import Metrics, RollUp
from igw.pipeline import Request

MODEL = ("model_name", "target_model_name")

# legacy family, its current twin, the labels the legacy family keeps
PAIRS = [
    ("inference_objective_request", "llm_d_epp_request", (*MODEL, "priority")),
    ("inference_objective_request_error", "llm_d_epp_request_error", (*MODEL, "error_code")),
    ("inference_objective_request_duration_seconds", "llm_d_epp_request_duration_seconds", MODEL),
    ("inference_objective_request_sizes", "llm_d_epp_request_size_bytes", MODEL),
    ("inference_objective_response_sizes", "llm_d_epp_response_size_bytes", MODEL),
    ("inference_objective_input_tokens", "llm_d_epp_request_input_tokens", MODEL),
    ("inference_objective_output_tokens", "llm_d_epp_request_output_tokens", MODEL),
    ("inference_objective_prompt_cached_tokens", "llm_d_epp_request_cached_tokens", MODEL),
    ("inference_objective_running_requests", "llm_d_epp_request_running", ("model_name",)),
    (
        "inference_objective_normalized_time_per_output_token_seconds",
        "llm_d_epp_request_ntpot_seconds",
        MODEL,
    ),
    (
        "inference_extension_scheduler_e2e_duration_seconds",
        "llm_d_epp_scheduler_e2e_duration_seconds",
        (),
    ),
    (
        "inference_extension_plugin_duration_seconds",
        "llm_d_epp_plugin_duration_seconds",
        ("extension_point", "plugin_type", "plugin_name"),
    ),
]


def _mix(metrics: Metrics, seed: int = 3, count: int = 240) -> list[tuple[str, Request, dict]]:
    """A representative mix: several models, targets, fairness ids and priorities; errors,
    unfinished and observer-mode responses; engine timings. Values are dyadic so every sum
    is exact whatever the order it is added in. Returns what was recorded, for a reference."""
    rnd = random.Random(seed)
    routes = [("chat", "chat"), ("chat", "chat-canary"), ("reco", "reco"), ("en", "base")]
    events: list[tuple[str, Request, dict]] = []
    for i in range(count):
        model, target = rnd.choice(routes)
        request = Request(
            f"r{i}", incoming_model=model, target_model=target, body=b"x" * rnd.randint(1, 9000)
        )
        request.fairness_id = rnd.choice(["default-flow", "tenant-a", "tenant-b"])
        request.priority = rnd.choice([0, 0, 2, -1])
        metrics.record_request(request)
        metrics.running_started(request)
        events.append(("request", request, {}))
        e2e, plugin = rnd.choice([0.0001220703125, 0.00390625]), rnd.choice(["f1", "s2"])
        metrics.engine_recorder("scheduler", "e2e", e2e)
        metrics.engine_recorder("scorer", plugin, 0.0009765625)
        events.append(("engine", request, {"e2e": e2e, "plugin": plugin, "seconds": 0.0009765625}))
        roll = rnd.random()
        if roll < 0.1:
            code = rnd.choice(["BadRequest", "ModelServerError"])
            metrics.record_error(request, code)
            metrics.running_ended(request)
            events.append(("error", request, {"code": code}))
            continue
        if roll < 0.25:  # still running at the scrape
            continue
        request.received_at = 64.0
        request.finished_at = 64.0 + rnd.choice([0.5, 0.25, 1.5, 3.75, 100.125, 0.0])
        if rnd.random() < 0.7:
            request.first_byte_at = 64.0 + 0.125
        request.usage.prompt_tokens = rnd.choice([0, 5, 120, 70000])
        request.usage.completion_tokens = rnd.choice([0, 1, 4, 64])
        request.usage.cached_tokens = rnd.choice([0, 0, 16, 4096])
        size = None if rnd.random() < 0.2 else rnd.randint(0, 100000)
        metrics.running_ended(request)
        metrics.record_response(request, size)
        events.append(("response", request, {"size": size}))
    return events


def _families(metrics: Metrics) -> dict:
    return {f.name: f for f in text_string_to_metric_families(metrics.generate().decode())}


def _rolled_up(family, base: str, keep: tuple[str, ...]) -> dict:
    """The samples of ``family`` summed over the labels not in ``keep`` (``_created``: the
    earliest), keyed by (suffix, labels)."""
    out: dict = {}
    for sample in family.samples:
        suffix = sample.name[len(base) :]
        labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k in (*keep, "le")))
        key = (suffix, labels)
        if suffix == "_created":
            out[key] = min(out.get(key, sample.value), sample.value)
        else:
            out[key] = out.get(key, 0.0) + sample.value
    return out


@pytest.fixture(scope="module")
def mixed_exposition() -> dict:
    """The parsed exposition after the mix (parsed once: the parser is slow)."""
    metrics = Metrics()
    _mix(metrics)
    return _families(metrics)


@pytest.mark.parametrize(("legacy", "current", "keep"), PAIRS, ids=[p[0] for p in PAIRS])
def test_legacy_family_equals_its_current_twin_summed_over_the_dropped_labels(
    mixed_exposition, legacy, current, keep
) -> None:
    assert legacy in mixed_exposition and current in mixed_exposition
    old, new = mixed_exposition[legacy], mixed_exposition[current]
    assert old.type == new.type
    assert old.samples, f"{legacy} has no samples: the mix does not exercise it"
    assert _rolled_up(old, legacy, keep) == _rolled_up(new, current, keep)


def _reference(events: list[tuple[str, Request, dict]]) -> CollectorRegistry:
    """The legacy families recorded per request with prometheus_client's own classes, as
    igw did before they were derived."""
    r = CollectorRegistry()
    m = igw_metrics
    total = prometheus_client.Counter(
        "inference_objective_request_total", "h", (*MODEL, "priority"), registry=r
    )
    errors = prometheus_client.Counter(
        "inference_objective_request_error_total", "h", (*MODEL, "error_code"), registry=r
    )

    def histogram(name: str, buckets, labels=MODEL):
        return prometheus_client.Histogram(name, "h", labels, buckets=buckets, registry=r)

    duration = histogram("inference_objective_request_duration_seconds", m.GENERAL_LATENCY_BUCKETS)
    sizes = histogram("inference_objective_request_sizes", m.REQUEST_SIZE_BUCKETS)
    responses = histogram("inference_objective_response_sizes", m.RESPONSE_SIZE_BUCKETS)
    inputs = histogram("inference_objective_input_tokens", m.INPUT_TOKEN_BUCKETS)
    outputs = histogram("inference_objective_output_tokens", m.OUTPUT_TOKEN_BUCKETS)
    cached = histogram("inference_objective_prompt_cached_tokens", m.INPUT_TOKEN_BUCKETS)
    ntpot = histogram(
        "inference_objective_normalized_time_per_output_token_seconds", m.NTPOT_BUCKETS
    )
    running = prometheus_client.Gauge(
        "inference_objective_running_requests", "h", ("model_name",), registry=r
    )
    e2e = histogram("inference_extension_scheduler_e2e_duration_seconds", m.SCHEDULER_BUCKETS, ())
    plugins = histogram(
        "inference_extension_plugin_duration_seconds",
        m.SCHEDULER_BUCKETS,
        ("extension_point", "plugin_type", "plugin_name"),
    )
    for kind, request, data in events:
        pair = (request.incoming_model, request.target_model)
        if kind == "request":
            total.labels(*pair, str(request.priority)).inc()
            sizes.labels(*pair).observe(len(request.upstream_body))
            running.labels(request.incoming_model).inc()
        elif kind == "engine":
            e2e.observe(data["e2e"])
            plugins.labels("scheduling", "scorer", data["plugin"]).observe(data["seconds"])
        elif kind == "error":
            errors.labels(*pair, data["code"]).inc()
            running.labels(request.incoming_model).dec()
        else:
            running.labels(request.incoming_model).dec()
            latency = request.finished_at - request.received_at
            duration.labels(*pair).observe(latency)
            if data["size"] is not None:
                responses.labels(*pair).observe(data["size"])
            usage = request.usage
            if usage.prompt_tokens:
                inputs.labels(*pair).observe(usage.prompt_tokens)
            if usage.completion_tokens:
                outputs.labels(*pair).observe(usage.completion_tokens)
                ntpot.labels(*pair).observe(latency / usage.completion_tokens)
            if usage.cached_tokens:
                cached.labels(*pair).observe(usage.cached_tokens)
    return r


def _samples(text: str, names: set[str]) -> dict:
    """(sample name, labels) -> value for the families in ``names``, without ``_created``."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        if f.name in names
        for s in f.samples
        if not s.name.endswith("_created")
    }


def test_legacy_families_match_recording_them_separately_with_prometheus_client() -> None:
    metrics = Metrics()
    events = _mix(metrics, seed=11)
    names = {legacy for legacy, _, _ in PAIRS}
    ours = _samples(metrics.generate().decode(), names)
    theirs = _samples(prometheus_client.generate_latest(_reference(events)).decode(), names)
    assert {name for name, _ in ours} == {name for name, _ in theirs}
    assert ours == theirs


def test_recording_a_request_updates_each_measurement_once(monkeypatch) -> None:
    observed: list[float] = []
    real = igw_metrics._HistogramChild.observe_many
    monkeypatch.setattr(
        igw_metrics._HistogramChild,
        "observe_many",
        lambda s, v: (observed.extend(v.tolist()), real(s, v)),
    )
    metrics = Metrics()
    request = Request("r", incoming_model="m", target_model="m", body=b"x" * 10)
    request.received_at, request.first_byte_at, request.finished_at = 1.0, 1.25, 2.0
    request.usage.prompt_tokens, request.usage.completion_tokens = 8, 4
    request.usage.cached_tokens = 8
    metrics.record_request(request)
    metrics.record_response(request, 100)
    metrics.flush()
    # request size; then duration, ttft, response size, input, output, ntpot, cached
    assert observed == [10, 1.0, 0.25, 100, 8, 4, 0.25, 8]


def test_legacy_created_is_the_earliest_of_the_summed_series() -> None:
    source = igw_metrics.Counter("new_total", "h", ("model", "fairness"))
    legacy = RollUp(source, "old_total", "h", ("model",))
    source.labels("m", "a").inc()
    source.labels("m", "b").inc(2)
    source.labels("m", "a").created, source.labels("m", "b").created = 50.0, 40.0
    samples = {s.name: s.value for s in next(iter(legacy.collect())).samples}
    assert samples == {"old_total": 3.0, "old_created": 40.0}


def test_legacy_families_have_no_created_series_when_prometheus_client_disables_them(
    monkeypatch,
) -> None:
    monkeypatch.setattr(prom_metrics, "_use_created", False)
    metrics = Metrics()
    _mix(metrics, count=20)
    names = [s.name for f in _families(metrics).values() for s in f.samples]
    assert "inference_objective_request_total" in names
    assert not [name for name in names if name.endswith("_created")]


def test_legacy_running_gauge_sums_the_model_s_targets() -> None:
    metrics = Metrics()
    first = Request("a", incoming_model="m", target_model="t1")
    second = Request("b", incoming_model="m", target_model="t2")
    for request in (first, second, first):
        metrics.running_started(request)
    metrics.running_ended(second)
    value = metrics.registry.get_sample_value
    assert value("inference_objective_running_requests", {"model_name": "m"}) == 2
    assert value("llm_d_epp_request_running", {"model_name": "m", "target_model_name": "t2"}) == 0


def test_rollup_refuses_labels_its_source_does_not_have() -> None:
    source = igw_metrics.Histogram("new_seconds", "h", ("model",), buckets=(1.0,))
    with pytest.raises(ValueError, match=r"old_seconds.*\['pool'\].*new_seconds"):
        RollUp(source, "old_seconds", "h", ("model", "pool"))


def test_legacy_and_current_families_register_without_name_clashes() -> None:
    registry = CollectorRegistry(auto_describe=True)
    Metrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        prometheus_client.Counter("inference_objective_request_total", "h", registry=registry)


def test_legacy_series_appear_in_the_order_their_first_source_series_did() -> None:
    metrics = Metrics()
    for model in ("z", "a", "m"):
        for fairness in ("f2", "f1"):
            request = Request("r", incoming_model=model, target_model=model)
            request.fairness_id = fairness
            metrics.record_request(request)
    order = [
        s.labels["model_name"]
        for s in _families(metrics)["inference_objective_request"].samples
        if s.name == "inference_objective_request_total"
    ]
    assert order == ["z", "a", "m"]
