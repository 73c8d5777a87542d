"""Whatever the file holds, loading ends in a config or one ConfigError, never anything else."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from igw.config import API_VERSION, ConfigError, parse_config
from igw.objectives import parse_objectives

KEYS = [
    "apiVersion",
    "kind",
    "plugins",
    "schedulingProfiles",
    "name",
    "type",
    "parameters",
    "pluginRef",
    "weight",
    "featureGates",
    "flowControl",
    "maxBytes",
    "requestHandler",
    "parsers",
    "blockSizeTokens",
    "matchLabels",
    "spec",
    "metadata",
    "poolRef",
    "rules",
    "targets",
    "matches",
    "model",
    "value",
    "priority",
    "modelRewrite",
]
TYPES = [
    "queue-scorer",
    "prefix-cache-scorer",
    "max-score-picker",
    "by-label",
    "x",
    "python:",
    "InferenceObjective",
    "InferenceModelRewrite",
    "Exact",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**7),
    st.floats(allow_nan=True),
    st.sampled_from(TYPES),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=5),
    ),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
def test_any_config_mapping_loads_or_raises_config_error(data):
    data.setdefault("apiVersion", API_VERSION)
    data.setdefault("kind", "EndpointPickerConfig")
    try:
        parse_config(data, "fuzz.yaml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yaml")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(KEYS), values, max_size=6), max_size=3))
def test_any_objectives_document_parses_or_raises_config_error(docs):
    for doc in docs:
        doc.setdefault("apiVersion", "llm-d.ai/v1alpha2")
    text = yaml.safe_dump_all(docs)
    try:
        parse_objectives(text, "fuzz.yaml", pool_name="p")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yaml")
