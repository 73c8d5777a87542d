"""Flow-control settings from EndpointPickerConfig: enabling, bands, policies, detectors."""

from __future__ import annotations

import pytest

from igw.config import ConfigError, load_config
from igw.flowcontrol import (
    ConcurrencyDetector,
    FlowControl,
    UtilizationDetector,
    detector_from_config,
    flow_control_enabled,
    settings_from_config,
)
from igw.flowcontrol.queues import EDF, FCFS, GLOBAL_STRICT, ROUND_ROBIN

BASE = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: queue-scorer}
- {name: rr, type: round-robin-fairness-policy}
- {name: deadline, type: edf-ordering-policy}
- {name: conc, type: concurrency-detector, parameters: {maxConcurrency: 8}}
schedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer}]}]
"""

FULL = (
    BASE
    + """
featureGates: [flowControl]
flowControl:
  maxRequests: 100
  maxBytes: 1Mi
  defaultRequestTTL: 30s
  noEndpointRequestTTL: 500ms
  defaultNegativePriorityBand: {priority: -1, maxRequests: 7}
  priorityBands:
  - {priority: 10, maxRequests: 50, fairnessPolicyRef: rr, orderingPolicyRef: deadline}
  saturationDetector: {pluginRef: conc}
"""
)


def test_full_section_parses_into_numbers_and_policy_types():
    settings = settings_from_config(load_config(text=FULL))
    assert settings.max_requests == 100 and settings.max_bytes == 2**20
    assert settings.default_ttl == 30 and settings.no_endpoint_ttl == 0.5
    band, configured = settings.band_for(10)
    assert configured and band.max_requests == 50
    assert (band.fairness, band.ordering) == (ROUND_ROBIN, EDF)
    negative, configured = settings.band_for(-3)
    assert not configured and negative.max_requests == 7
    default, _ = settings.band_for(4)
    assert (default.max_requests, default.max_bytes) == (5000, 1e9)
    assert (default.fairness, default.ordering) == (GLOBAL_STRICT, FCFS)
    assert settings.detector.type == "concurrency-detector"


def test_defaults_when_the_section_is_absent():
    settings = settings_from_config(load_config(text=BASE))
    assert settings.default_ttl == 60 and settings.max_requests == 0
    assert settings.bands == {}


@pytest.mark.parametrize(
    ("extra", "enabled"),
    [
        ("", False),
        ("featureGates: [flowControl]\n", True),
        ("featureGates: [flowControl=true]\n", True),
        ("flowControl: {maxRequests: 10}\n", True),
        ("featureGates: [flowControl=false]\nflowControl: {maxRequests: 10}\n", False),
    ],
)
def test_flow_control_is_on_by_gate_or_section(extra, enabled):
    config = load_config(text=BASE + extra)
    assert flow_control_enabled(config) is enabled
    assert (FlowControl.from_config(config) is not None) is enabled


def test_plain_dict_config_is_accepted():
    assert flow_control_enabled({"flowControl": {}})
    assert settings_from_config({"flowControl": {"maxRequests": "2k"}}).max_requests == 2000


def test_unimplemented_fairness_policy_is_a_config_error_naming_the_field():
    text = BASE.replace(
        "- {type: queue-scorer}\n",
        "- {type: queue-scorer}\n- {name: las, type: program-aware-fairness}\n",
    )
    text += "flowControl:\n  priorityBands:\n  - {priority: 1, fairnessPolicyRef: las}\n"
    with pytest.raises(ConfigError) as info:
        settings_from_config(load_config(text=text))
    assert info.value.field == "flowControl.priorityBands[0].fairnessPolicyRef"
    assert "round-robin-fairness-policy" in info.value.expected


def test_unknown_policy_reference_is_a_config_error():
    with pytest.raises(ConfigError, match="undefined plugin 'nope'"):
        settings_from_config(
            {"flowControl": {"priorityBands": [{"priority": 1, "orderingPolicyRef": "nope"}]}}
        )


def test_duplicate_band_priority_is_a_config_error():
    bands = [{"priority": 1}, {"priority": 1}]
    with pytest.raises(ConfigError) as info:
        settings_from_config({"flowControl": {"priorityBands": bands}})
    assert info.value.field == "flowControl.priorityBands[1].priority"


def test_bad_quantity_and_duration_name_their_fields():
    with pytest.raises(ConfigError) as info:
        settings_from_config({"flowControl": {"maxBytes": "lots"}})
    assert info.value.field == "flowControl.maxBytes"
    with pytest.raises(ConfigError) as info:
        settings_from_config({"flowControl": {"defaultRequestTTL": "soon"}})
    assert info.value.field == "flowControl.defaultRequestTTL"


def test_unknown_flow_control_key_is_rejected():
    with pytest.raises(ConfigError) as info:
        settings_from_config({"flowControl": {"maxRequest": 3}})
    assert info.value.field == "flowControl.maxRequest"


def test_usage_limit_other_than_static_is_rejected():
    config = {
        "plugins": [{"name": "hold", "type": "priority-holdback-policy"}],
        "flowControl": {"usageLimitPolicyPluginRef": "hold"},
    }
    with pytest.raises(ConfigError, match="priority-holdback-policy"):
        settings_from_config(config)


def test_detector_from_config_builds_the_named_detector_with_its_parameters():
    detector = detector_from_config(load_config(text=FULL))
    assert isinstance(detector, ConcurrencyDetector) and detector.max_concurrency == 8
    default = detector_from_config(load_config(text=BASE), staleness=0.5)
    assert isinstance(default, UtilizationDetector) and default.staleness == 0.5


def test_detector_parameter_errors_name_the_parameter():
    config = {
        "plugins": [{"name": "u", "type": "utilization-detector",
                     "parameters": {"kvCacheUtilThreshold": 2}}],
        "saturationDetector": {"pluginRef": "u"},
    }  # fmt: skip
    with pytest.raises(ConfigError) as info:
        detector_from_config(config)
    assert info.value.field == "plugins[0].parameters.kvCacheUtilThreshold"


def test_flow_control_turns_lag_correction_on_unless_configured_off():
    on = FlowControl.from_config({"flowControl": {}})
    assert on._detector_for(None).lag_correction is True
    plugin = {"name": "u", "type": "utilization-detector", "parameters": {"lagCorrection": False}}
    config = {"plugins": [plugin], "flowControl": {"saturationDetector": {"pluginRef": "u"}}}
    assert FlowControl.from_config(config)._detector_for(None).lag_correction is False
    assert detector_from_config({}).lag_correction is False  # the legacy path: reference formula


async def test_per_pool_configs_keep_the_legacy_path_where_flow_control_is_off():
    from flowcontrol.helpers import make_pool
    from igw.errors import DROP_REASON_HEADER, InferenceError
    from igw.pipeline import Request

    flow = FlowControl.from_configs({"on": {"flowControl": {}}, "off": {}})
    assert flow is not None
    on, off = make_pool(name="on"), make_pool(name="off")
    for pool in (on, off):  # stale metrics: both read saturated
        pool.table.update(pool.endpoints()[0].id, waiting=9, running=0, kv_util=0, now=1.0)
    with pytest.raises(InferenceError) as legacy:
        await flow.admit(Request("a", priority=-1), off)
    assert DROP_REASON_HEADER not in legacy.value.headers  # the reference's legacy answer
    await flow.admit(Request("b", priority=0), off)  # legacy: never queued
    with pytest.raises(InferenceError) as controlled:
        await flow.admit(Request("c", priority=-1), on)
    assert controlled.value.headers[DROP_REASON_HEADER] == "rejected-saturated"
    assert FlowControl.from_configs({"a": {}, "b": {}}) is None


def test_per_pool_config_errors_name_the_pool_and_field():
    with pytest.raises(ConfigError) as info:
        FlowControl.from_configs(
            {"good": {"flowControl": {}}, "bad": {"flowControl": {"maxBytes": "x"}}}
        )
    assert info.value.source == "pool bad" and info.value.field == "flowControl.maxBytes"
