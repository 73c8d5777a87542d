"""The Grafana dashboards in deploy/grafana only query series igw really exports.

Checked offline, without Grafana or Prometheus: a ``Metrics`` registry (plus the flow-control
and Kubernetes-watch families) records a representative request through the public methods,
its exposition text is parsed with prometheus_client's parser, and every metric name and
label in every PromQL expression of every dashboard must be one of its samples and their
labels. A renamed metric or label on either side fails here, not as an empty panel at 3 a.m.

Names are compared as exposed sample names (``x_total``, ``x_bucket``, ``x_count``...), so
suffixes need no stripping and a ``_bucket`` of a counter, or a histogram's bare family name,
is caught too.
"""

from __future__ import annotations

import json
import re
import time
import types
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from igw.datastore import Pool
from igw.errors import ErrorCode
from igw.flowcontrol import outcomes
from igw.flowcontrol.metrics import FlowControlMetrics
from igw.k8s.metrics import WatchCollector
from igw.metrics import Metrics
from igw.pipeline import Decision, Request, Usage

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "deploy" / "grafana"
OBSERVABILITY_DOC = ROOT / "docs" / "observability.md"
DASHBOARDS = sorted(DASHBOARD_DIR.glob("*.json"))
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# PromQL words that look like identifiers but name no series.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r'\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*,?')
RANGE = re.compile(r"\[[^\]]*\]")
NUMBER = re.compile(r"(?<![\w:.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
IDENT = re.compile(r"[A-Za-z_:][\w:]*")
EXACT = re.compile(r'([A-Za-z_]\w*)\s*(?:!=|=(?!~))\s*"([^"$]*)"')
# Label values a dashboard may compare exactly: a typo ("Dispatch") would match nothing.
KNOWN_VALUES = {
    "error_code": {code.label for code in ErrorCode},
    "outcome": {
        value
        for key, value in vars(outcomes).items()
        if key.startswith(("DISPATCHED", "REJECTED_", "EVICTED_"))
    },
    "status": {"success", "failure"},  # ScheduleStage's scheduling attempt statuses
}
LABEL_VALUES = re.compile(r"^label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*([A-Za-z_]\w*)\s*\)$")


# ------------------------------------------------------------------------------ exporter


class _Controller:
    """What the flow-control saturation gauge reads from a live controller."""

    def __init__(self, pool: Pool, saturation: float) -> None:
        self.pool = pool
        self.last_saturation = saturation


class _Discovery:
    """What the Kubernetes watch collector reads."""

    def status(self) -> dict[str, dict[str, object]]:
        return {"pods": {"synced": True, "lists": 1, "errors": 0}}


def _exposition() -> str:
    """igw's /metrics text after one routed request, one error, one rewrite, one queued and one
    dispatched flow-control request, on a pool with one ready endpoint."""
    metrics = Metrics()
    pool = Pool("pool-a")
    endpoint = pool.upsert("10.0.0.1:8000")
    pool.table.update(endpoint.id, waiting=2, running=3, kv_util=0.5, now=time.monotonic())
    pool.table.set_ready(endpoint.id, True)
    metrics.add_pool(pool)

    request = Request("r1", incoming_model="m", target_model="m-v2", body=b"x" * 100)
    request.decision = Decision(pool=pool, endpoints=[endpoint])
    request.received_at, request.first_byte_at, request.finished_at = 1.0, 1.2, 2.0
    request.usage = Usage(prompt_tokens=100, completion_tokens=20, cached_tokens=64)
    metrics.record_request(request)
    metrics.record_scheduled(request, "success")
    metrics.running_started(request)
    metrics.record_response(request, 500)
    metrics.running_ended(request)
    metrics.record_error(request, "ResourceExhausted")
    metrics.record_rewrite("canary", "m", "m-v2")
    metrics.record_request_processing(0.001)
    metrics.engine_recorder("scheduler", "e2e", 0.0005)
    metrics.engine_recorder("scorer", "queue-scorer", 0.0001)

    flow = FlowControlMetrics.for_registry(metrics.registry)
    item = types.SimpleNamespace(request=request, flow="tenant", priority=1, size=100)
    flow.queued(pool.name, item, +1)
    flow.outcome(pool.name, fairness_id="tenant", priority=1, model="m", target="m-v2",
                 outcome=outcomes.DISPATCHED, seconds=0.01)  # fmt: skip
    flow.dispatch_cycle(0.0001)
    controller = _Controller(pool, 0.4)
    flow.track(controller)

    metrics.registry.register(WatchCollector(_Discovery()))  # type: ignore[arg-type]
    text = metrics.generate().decode()
    del controller  # tracked weakly: alive until the scrape above
    return text


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Exposed sample name -> the label names its samples carry."""
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(_exposition()):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


# ------------------------------------------------------------------------------ PromQL


def references(expr: str) -> tuple[set[str], set[tuple[str, str]], set[str]]:
    """(metric names, (metric, matcher label) pairs, grouping labels) used in ``expr``.

    A small reader, not a PromQL parser: enough for the expressions a dashboard holds
    (selectors with a metric name, ranges, aggregations, functions, arithmetic).
    """
    pairs: set[tuple[str, str]] = set()
    grouping: set[str] = set()
    bad: list[str] = []

    def selector(match: re.Match[str]) -> str:
        name, body = match.group(1), match.group(2)
        if not name:
            bad.append(match.group(0))
            return " "
        rest = MATCHER.sub(lambda m: pairs.add((name, m.group(1))) or "", body)
        if rest.strip():
            bad.append(f"{name}{{{body}}}")
        return f" {name} "

    text = SELECTOR.sub(selector, expr)
    if bad:
        raise ValueError(f"unreadable selector(s) {bad} in {expr!r}")
    text = RANGE.sub(" ", text)
    for match in GROUPING.finditer(text):
        grouping.update(label.strip() for label in match.group(2).split(",") if label.strip())
    text = GROUPING.sub(" ", text)
    text = NUMBER.sub(" ", text)
    # What is left: operators and function names (each followed by "(", the grouping clauses
    # are gone), keywords, and the metric names.
    names = {
        match.group(0)
        for match in IDENT.finditer(text)
        if match.group(0).lower() not in KEYWORDS
        and not text[match.end() :].lstrip().startswith("(")
    }
    return names, pairs, grouping


def unbalanced(expr: str) -> str | None:
    """The first bracket or quote that does not close (PromQL syntax slips a reader misses)."""
    closing = {"(": ")", "[": "]", "{": "}"}
    stack: list[str] = []
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    if text.count('"') % 2:
        return "an unterminated string"
    for char in text:
        if char in closing:
            stack.append(closing[char])
        elif char in ")]}" and (not stack or stack.pop() != char):
            return f"an unexpected {char!r}"
    return f"a missing {stack[-1]!r}" if stack else None


def problems(expr: str, exported: dict[str, set[str]]) -> list[str]:
    """What in ``expr`` igw does not export, or cannot be read (empty when all is well)."""
    slip = unbalanced(expr)
    if slip:
        return [f"{slip} in {expr!r}"]
    names, pairs, grouping = references(expr)
    found = [f"metric {n} is not exported" for n in sorted(names) if n not in exported]
    found += [
        f"label {label} is not on {name} (it has {sorted(exported[name])})"
        for name, label in sorted(pairs)
        if name in exported and label not in exported[name]
    ]
    found += [
        f"grouping label {label} is not on {name}"
        for label in sorted(grouping)
        for name in sorted(names)
        if name in exported and label not in exported[name]
    ]
    found += [
        f"{label}={value!r} is not a value igw uses ({sorted(KNOWN_VALUES[label])})"
        for label, value in EXACT.findall(expr)
        if label in KNOWN_VALUES and value not in KNOWN_VALUES[label]
    ]
    return found


# ------------------------------------------------------------------------------ dashboards


def _panels(dashboard: dict) -> list[dict]:
    """Every panel, rows' collapsed children included."""
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target."""
    return [
        (f"panel {panel.get('title')!r} target {target.get('refId')}", target["expr"])
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
    ]


def _variable_query(variable: dict) -> str:
    query = variable.get("query")
    return query.get("query", "") if isinstance(query, dict) else str(query)


@pytest.fixture(params=DASHBOARDS, ids=lambda p: p.name)
def dashboard(request: pytest.FixtureRequest) -> dict:
    return json.loads(request.param.read_text(encoding="utf-8"))


def test_the_overview_dashboard_is_there() -> None:
    assert DASHBOARD_DIR / "igw-overview.json" in DASHBOARDS


def test_dashboard_has_a_uid_title_and_a_recent_schema(dashboard: dict) -> None:
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]


def test_panel_ids_are_unique(dashboard: dict) -> None:
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_every_panel_has_a_title_and_every_graph_a_description(dashboard: dict) -> None:
    for panel in _panels(dashboard):
        assert panel.get("title", "").strip(), panel.get("id")
        if panel["type"] != "row":
            assert len(panel.get("description", "")) >= 40, panel["title"]


def test_panels_fit_the_24_column_grid_without_overlapping(dashboard: dict) -> None:
    for panel in _panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
    # Only the visible layout: a collapsed row keeps its children's old positions.
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_every_query_uses_the_datasource_variable(dashboard: dict) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]


def test_pool_and_model_variables_read_igw_labels(dashboard: dict, exported) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert LABEL_VALUES.match(_variable_query(variables["pool"])).group(2) == "name"
    assert LABEL_VALUES.match(_variable_query(variables["model"])).group(2) == "model_name"
    for variable in variables.values():
        if variable["type"] != "query":
            continue
        match = LABEL_VALUES.match(_variable_query(variable))
        assert match, f"variable {variable['name']}: expected label_values(metric, label)"
        metric, label = match.groups()
        assert metric in exported, f"variable {variable['name']}: {metric} is not exported"
        assert label in exported[metric], f"variable {variable['name']}: no {label} on {metric}"


def test_every_query_names_only_exported_metrics_and_labels(dashboard: dict, exported) -> None:
    queries = _queries(dashboard)
    assert queries
    for where, expr in queries:
        assert references(expr)[0], f"{where}: no metric name found in {expr!r}"
    found = [
        f"{where}: {problem}" for where, expr in queries for problem in problems(expr, exported)
    ]
    assert not found, "\n".join(found)


def test_queries_filter_by_the_variables_they_offer(dashboard: dict) -> None:
    exprs = [expr for _where, expr in _queries(dashboard)]
    assert any('model_name=~"$model"' in expr for expr in exprs)
    assert any('name=~"$pool"' in expr for expr in exprs)


def _doc_alert_expressions() -> list[tuple[str, str]]:
    """(alert, expression) from the alert table of docs/observability.md."""
    section = OBSERVABILITY_DOC.read_text(encoding="utf-8").split("\n## Alerts\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    alerts = []
    for row in rows[1:]:  # the first row is the header
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        if cells[1].startswith("`") and cells[1].endswith("`"):
            alerts.append((cells[0], cells[1].strip("`")))
    return alerts


def test_the_documented_alerts_query_only_what_igw_exports(exported) -> None:
    alerts = _doc_alert_expressions()
    assert len(alerts) >= 5
    found = [
        f"alert {name}: {problem}" for name, expr in alerts for problem in problems(expr, exported)
    ]
    assert not found, "\n".join(found)
    assert all(references(expr)[0] for _name, expr in alerts)


def test_the_sidecar_kustomization_ships_every_dashboard_with_the_sidecar_label() -> None:
    kustomization = yaml.safe_load((DASHBOARD_DIR / "kustomization.yaml").read_text())
    assert kustomization["generatorOptions"]["labels"] == {"grafana_dashboard": "1"}
    (generator,) = kustomization["configMapGenerator"]
    assert sorted(generator["files"]) == sorted(p.name for p in DASHBOARDS)


# ------------------------------------------------------------------------------ the checker


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("sum(rate(llm_d_epp_request_totl[5m]))", "metric llm_d_epp_request_totl"),
        ("rate(llm_d_epp_request_total_bucket[5m])", "metric llm_d_epp_request_total_bucket"),
        ("llm_d_epp_request_duration_seconds", "metric llm_d_epp_request_duration_seconds "),
        ('inference_pool_ready_pods{pool="a"}', "label pool is not on inference_pool_ready_pods"),
        (
            "sum by (pod) (rate(llm_d_epp_request_total[$__rate_interval]))",
            "grouping label pod is not on llm_d_epp_request_total",
        ),
        (
            "histogram_quantile(0.9, sum by (le) (rate(llm_d_epp_request_total[5m])))",
            "grouping label le",
        ),
        ("sum(rate(llm_d_epp_request_total[5m])", "a missing ')'"),
        ("sum(rate(llm_d_epp_request_total[5m)))", "an unexpected ')'"),
        ('llm_d_epp_request_total{model_name="m}', "an unterminated string"),
        (
            'rate(llm_d_epp_flow_control_requests_total{outcome!="Dispatch"}[5m])',
            "outcome='Dispatch' is not a value igw uses",
        ),
        (
            'rate(llm_d_epp_request_error_total{error_code="TooManyRequests"}[5m])',
            "error_code='TooManyRequests'",
        ),
    ],
)
def test_the_checker_reports_what_igw_does_not_export(expr: str, expected: str, exported) -> None:
    assert any(expected in problem for problem in problems(expr, exported)), problems(
        expr, exported
    )


def test_the_checker_accepts_a_quantile_over_exported_buckets(exported) -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, model_name) (rate(llm_d_epp_request_ttft_seconds"
        '_bucket{model_name=~"$model", priority!="-1"}[$__rate_interval]))) / 1e-9 > bool 2'
    )
    names, pairs, grouping = references(expr)
    assert names == {"llm_d_epp_request_ttft_seconds_bucket"}
    assert pairs == {
        ("llm_d_epp_request_ttft_seconds_bucket", "model_name"),
        ("llm_d_epp_request_ttft_seconds_bucket", "priority"),
    }
    assert grouping == {"le", "model_name"}
    assert problems(expr, exported) == []


def test_the_checker_refuses_a_selector_without_a_metric_name() -> None:
    with pytest.raises(ValueError, match="selector"):
        references('sum(rate({__name__=~"llm_d_.*"}[5m]))')
