"""EndpointPickerConfig loading: good files of both API groups, and every kind of bad input
fails with the file, the field path and what was expected."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from igw.config import (
    API_VERSION,
    LEGACY_API_VERSION,
    ConfigError,
    default_config,
    load_config,
    parse_duration,
    parse_quantity,
)

HERMETIC = (
    Path(__file__).resolve().parents[1] / "data" / "hermetic-epp-config.yaml"
).read_text()


def config_text(body: str, api: str = API_VERSION) -> str:
    return f"apiVersion: {api}\nkind: EndpointPickerConfig\n" + textwrap.dedent(body)


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(text=text)
    return info.value


def test_default_config_is_the_reference_default_profile():
    config = load_config()
    refs = {r.pluginRef: r.weight for r in config.schedulingProfiles[0].plugins}
    assert refs["queue-scorer"] == 2
    assert refs["kv-cache-utilization-scorer"] == 2
    assert refs["prefix-cache-scorer"] == 3
    assert "max-score-picker" in refs
    assert config == default_config()


def test_legacy_api_group_loads_the_hermetic_config():
    config = load_config(text=HERMETIC)
    assert config.apiVersion == LEGACY_API_VERSION
    assert [p.instance_name for p in config.plugins][:2] == [
        "queue-scorer",
        "kv-cache-utilization-scorer",
    ]
    assert config.parser_names() == ["openai-parser"]
    weights = [r.effective_weight for r in config.schedulingProfiles[0].plugins]
    assert weights == [1.0, 1.0, 1.0, 1.0]


def test_current_api_group_loads_with_named_plugins_and_parameters(tmp_path):
    path = tmp_path / "epp.yaml"
    path.write_text(
        config_text(
            """
            featureGates: [flowControl=false, prepareDataPlugins]
            plugins:
            - {name: metrics, type: metrics-data-source, parameters: {path: /metrics}}
            - {name: extractor, type: core-metrics-extractor}
            - name: prefix
              type: prefix-cache-scorer
              parameters: {blockSizeTokens: 128, maxPrefixBlocksToMatch: 100}
            - {name: picker, type: max-score-picker, parameters: {maxNumOfEndpoints: 3}}
            schedulingProfiles:
            - name: default
              plugins: [{pluginRef: prefix, weight: 2.5}, {pluginRef: picker}]
            flowControl: {maxBytes: 1Gi, defaultRequestTTL: 30s}
            dataLayer: {sources: [{pluginRef: metrics, extractors: [{pluginRef: extractor}]}]}
            """
        )
    )
    config = load_config(path=path)
    assert config.apiVersion == API_VERSION
    assert config.plugin("prefix").parameters["blockSizeTokens"] == 128
    assert config.schedulingProfiles[0].plugins[0].weight == 2.5
    assert config.feature_enabled("flowControl") is False
    assert config.feature_enabled("prepareDataPlugins") is True
    assert parse_quantity(config.flowControl.maxBytes) == 2**30
    assert parse_duration(config.flowControl.defaultRequestTTL) == 30


def test_error_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(config_text("plugins: [{type: no-such-scorer}]\n"))
    with pytest.raises(ConfigError) as info:
        load_config(path=path)
    assert str(path) in str(info.value)
    assert info.value.field == "plugins[0].type"
    assert "no-such-scorer" in info.value.expected


@pytest.mark.parametrize(
    ("body", "field", "expected"),
    [
        ("plugins: [{type: queue-scorer}]\nbogus: 1\n", "bogus", "unknown field"),
        ("plugins: [{type: queue-scorer, parms: {}}]\n", "plugins[0].parms", "unknown field"),
        ("plugins: [{name: q}]\n", "plugins[0].type", "missing"),
        ("plugins: [{type: nope-scorer}]\n", "plugins[0].type", "unknown plugin type"),
        (
            "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: p, plugins: "
            "[{pluginRef: queue-scorer}, {pluginRef: kv}]}]\n",
            "schedulingProfiles[0].plugins[1].pluginRef",
            "undefined plugin 'kv'",
        ),
        (
            "plugins: [{type: queue-scorer}, {type: kv-cache-utilization-scorer}]\n"
            "schedulingProfiles: [{name: p, plugins: [{pluginRef: queue-scorer}, "
            "{pluginRef: kv-cache-utilization-scorer, weight: -1}]}]\n",
            "schedulingProfiles[0].plugins[1].weight",
            ">= 0",
        ),
        (
            "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: p, plugins: "
            "[{pluginRef: queue-scorer, weight: .nan}]}]\n",
            "schedulingProfiles[0].plugins[0].weight",
            "finite",
        ),
        (
            "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: p, plugins: "
            "[{pluginRef: queue-scorer, weight: heavy}]}]\n",
            "schedulingProfiles[0].plugins[0].weight",
            "number",
        ),
        (
            "plugins: [{type: prefix-cache-scorer, parameters: {blockSizeTokenz: 64}}]\n",
            "plugins[0].parameters.blockSizeTokenz",
            "unknown field",
        ),
        (
            "plugins: [{type: prefix-cache-scorer, parameters: {matchLengthWeight: 2}}]\n",
            "plugins[0].parameters.matchLengthWeight",
            "less than or equal to 1",
        ),
        (
            "plugins: [{type: max-score-picker, parameters: {maxNumOfEndpoints: 0}}]\n",
            "plugins[0].parameters.maxNumOfEndpoints",
            "greater than or equal to 1",
        ),
        (
            "plugins: [{type: active-request-scorer, parameters: {idleThreshold: '3'}}]\n",
            "plugins[0].parameters.idleThreshold",
            "integer",
        ),
        (
            "plugins: [{type: queue-scorer}, "
            "{name: queue-scorer, type: kv-cache-utilization-scorer}]\n",
            "plugins[1].name",
            "duplicate plugin name",
        ),
        (
            "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: a, plugins: []}, "
            "{name: a, plugins: []}]\n",
            "schedulingProfiles[1].name",
            "duplicate profile name",
        ),
        (
            "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: a, plugins: []}, "
            "{name: b, plugins: []}]\n",
            "schedulingProfiles",
            "header-profile-handler",
        ),
        (
            "plugins: [{type: no-hit-lru-scorer}]\nschedulingProfiles: [{name: a, plugins: "
            "[{pluginRef: no-hit-lru-scorer}]}]\n",
            "schedulingProfiles[0].plugins[0].pluginRef",
            "not implemented in igw",
        ),
        (
            "plugins: [{type: disagg-profile-handler}]\n",
            "plugins[0].type",
            "not implemented in igw",
        ),
        (
            "plugins: [{type: openai-parser}]\nschedulingProfiles: [{name: a, plugins: "
            "[{pluginRef: openai-parser}]}]\n",
            "schedulingProfiles[0].plugins[0].pluginRef",
            "parser",
        ),
        (
            "plugins: [{type: max-score-picker}, {type: random-picker}]\nschedulingProfiles: "
            "[{name: a, plugins: [{pluginRef: max-score-picker}, {pluginRef: random-picker}]}]\n",
            "schedulingProfiles[0].plugins[1].pluginRef",
            "only one picker",
        ),
        (
            "plugins: [{type: queue-scorer}]\n"
            "requestHandler: {parsers: [{pluginRef: openai-parser}]}\n",
            "requestHandler.parsers[0].pluginRef",
            "undefined plugin",
        ),
        (
            "featureGates: ['flowControl=maybe']\n",
            "featureGates",
            "true or false",
        ),
        ("flowControl: {defaultRequestTTL: soon}\n", "flowControl.defaultRequestTTL", "duration"),
        ("flowControl: {maxBytes: lots}\n", "flowControl.maxBytes", "quantity"),
        (
            "plugins: [{type: by-label, parameters: {label: llm-d.ai/role}}]\n",
            "plugins[0].parameters",
            "validValues",
        ),
        (
            "plugins: [{type: label-selector-filter, parameters: {matchExpressions: "
            "[{key: a, operator: Near}]}}]\n",
            "plugins[0].parameters.matchExpressions[0].operator",
            "'In'",
        ),
        (
            "plugins: [{type: header-profile-handler, parameters: {defaultProfile: x}}]\n"
            "schedulingProfiles: [{name: a, plugins: []}]\n",
            "schedulingProfiles",
            "defaultProfile 'x'",
        ),
    ],
)
def test_bad_config_names_field_and_expectation(body, field, expected):
    error = error_of(config_text(body))
    assert error.field == field, str(error)
    assert expected in error.expected, str(error)
    assert error.source == "<config-text>"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("apiVersion: v1\nkind: EndpointPickerConfig\n", "llm-d.ai/v1alpha1"),
        (f"apiVersion: {API_VERSION}\nkind: Pod\n", "EndpointPickerConfig"),
        ("plugins: [\n", "not valid YAML"),
        ("", "empty"),
        ("- just\n- a list\n", "mapping"),
    ],
)
def test_bad_documents_are_rejected_with_a_reason(text, expected):
    assert expected in str(error_of(text))


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(path=tmp_path / "absent.yaml")


def test_path_and_text_together_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        load_config(path=tmp_path / "x.yaml", text="kind: EndpointPickerConfig")


def test_unimplemented_reference_plugin_may_be_listed_when_unused():
    config = load_config(
        text=config_text(
            """
            plugins:
            - {type: no-hit-lru-scorer, parameters: {lruSize: 10}}
            - {type: queue-scorer}
            schedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer}]}]
            """
        )
    )
    assert config.plugin("no-hit-lru-scorer") is not None


def test_config_without_profiles_gets_a_default_profile_of_its_scorers():
    from igw.scheduling import SchedulingEngine

    config = load_config(
        text=config_text("plugins: [{type: queue-scorer}, {type: openai-parser}]\n")
    )
    engine = SchedulingEngine(config)
    profile = engine.built.profiles["default"]
    assert [s.type for s, _ in profile.core_scorers] == ["queue-scorer"]


USER_PLUGIN = """
from pydantic import BaseModel, ConfigDict
import numpy as np

class PreferLabel:
    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        label: str
        value: str

    def __init__(self, params):
        self.params = params

    def score(self, request, snapshot, endpoints):
        return np.ones(len(endpoints), dtype=np.float32)
"""


def test_user_python_plugin_type_is_imported_at_load_time(tmp_path, monkeypatch):
    (tmp_path / "cfg_user_plugin.py").write_text(USER_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    ok = config_text(
        "plugins: [{type: 'python:cfg_user_plugin:PreferLabel', "
        "parameters: {label: tier, value: gold}}]\n"
    )
    assert load_config(text=ok).plugins[0].type.startswith("python:")
    bad = config_text("plugins: [{type: 'python:no_such_module_xyz:Thing'}]\n")
    error = error_of(bad)
    assert error.field == "plugins[0].type" and "cannot import" in error.expected
    bad_params = ok.replace("value: gold", "value: 3")
    assert error_of(bad_params).field == "plugins[0].parameters.value"
    no_class = ok.replace(":PreferLabel", ":Missing")
    assert "no attribute" in error_of(no_class).expected


def test_duration_and_quantity_helpers():
    assert parse_duration("1m30s") == 90
    assert parse_duration("200ms") == pytest.approx(0.2)
    assert parse_quantity("500M") == 5e8
    with pytest.raises(ValueError):
        parse_duration("5 minutes")


@pytest.mark.parametrize(
    ("conditions", "field"),
    [
        ("[]", "plugins[0].parameters.conditions"),
        ("[{metric: gpu-temperature, maxValue: 1}]", "plugins[0].parameters.conditions[0].metric"),
        ("[{metric: kv-cache-utilization, maxValue: 80}]", "plugins[0].parameters.conditions[0]"),
        ("[{metric: waiting-queue}]", "plugins[0].parameters.conditions[0].maxValue"),
    ],
)
def test_utilization_filter_conditions_are_checked(conditions, field):
    error = error_of(
        config_text(
            f"plugins: [{{type: utilization-filter, parameters: {{conditions: {conditions}}}}}]\n"
        )
    )
    assert error.field == field, str(error)


def test_quoted_numbers_are_not_numbers():
    error = error_of(
        config_text(
            "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: a, plugins: "
            "[{pluginRef: queue-scorer, weight: '2'}]}]\n"
        )
    )
    assert error.field == "schedulingProfiles[0].plugins[0].weight"
