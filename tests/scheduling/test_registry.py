"""The plugin registry: an object per test, every reference type recognised, custom plugins."""

from __future__ import annotations

import numpy as np
import pytest

from igw.config import ConfigError, load_config
from igw.scheduling import PluginKind, PluginRegistry, default_registry
from igw.scheduling.framework import CorePicker, CoreScorer

# every plugin type name REFERENCE.md 4b lists for the reference picker
REFERENCE_TYPES = """
queue-scorer kv-cache-utilization-scorer prefix-cache-scorer lora-affinity-scorer
running-requests-size-scorer token-load-scorer load-aware-scorer active-request-scorer
no-hit-lru-scorer session-affinity-scorer context-length-aware latency-scorer
endpoint-attribute-scorer mm-embeddings-cache-scorer precise-prefix-cache-scorer
topology-affinity-scorer label-selector-filter by-label by-label-selector encode-filter
prefill-filter decode-filter session-affinity-filter endpoint-attribute-filter
utilization-filter prefix-cache-affinity-filter slo-headroom-tier-filter
header-based-testing-filter topology-affinity-filter max-score-picker random-picker
weighted-random-picker single-profile-handler data-parallel-profile-handler
disagg-profile-handler pd-profile-handler header-profile-handler always-disagg-pd-decider
prefix-based-pd-decider always-disagg-multimodal-decider approx-prefix-cache-producer
inflight-load-producer predicted-latency-producer session-id-producer token-producer
burst-prefix-cache-producer p2p-source-producer mm-embeddings-cache-producer tokenizer
latency-slo-admitter probabilistic-admitter disaggregatedset-rollout-screener agent-identity
request-attribute-reporter destination-endpoint-served-verifier metrics-data-source
core-metrics-extractor models-data-extractor topology-extractor dcgm-extractor
utilization-detector concurrency-detector openai-parser anthropic-parser vllmgrpc-parser
vllmhttp-parser sglanghttp-parser vertexai-parser passthrough-parser
""".split()


def test_every_reference_plugin_type_is_recognised():
    registry = default_registry()
    missing = [t for t in REFERENCE_TYPES if t not in registry]
    assert missing == []


@pytest.mark.parametrize(
    ("type_name", "kind"),
    [
        ("queue-scorer", PluginKind.SCORER),
        ("decode-filter", PluginKind.FILTER),
        ("weighted-random-picker", PluginKind.PICKER),
        ("header-profile-handler", PluginKind.PROFILE_HANDLER),
        ("openai-parser", PluginKind.PARSER),
        ("no-hit-lru-scorer", PluginKind.SCORER),
    ],
)
def test_plugin_kinds(type_name, kind):
    assert default_registry().kind_of(type_name) == kind


def test_builtin_scorer_maps_reference_params_to_core_params():
    registry = default_registry()
    scorer = registry.create("la", "load-aware-scorer", {"threshold": 64})
    assert scorer == CoreScorer(
        name="la", type="load-aware-scorer", params={"queueThreshold": 64.0}
    )
    prefix = registry.create("p", "prefix-cache-scorer", {"matchLengthScaleTokens": 4096})
    assert prefix.params["scaleTokens"] == 4096.0
    assert prefix.prefix.block_tokens == 64 and prefix.prefix.block_bytes == 256
    picker = registry.create("k", "max-score-picker", {"maxNumOfEndpoints": 4})
    assert picker == CorePicker(name="k", type="max-score-picker", max_endpoints=4)


def test_prefix_block_size_rules():
    registry = default_registry()
    # blockSizeTokens below 64 is clamped up like the reference; 128 tokens = 512 bytes
    assert (
        registry.create("p", "prefix-cache-scorer", {"blockSizeTokens": 16}).prefix.block_tokens
        == 64
    )
    big = registry.create("p", "prefix-cache-scorer", {"blockSizeTokens": 128}).prefix
    assert (big.block_bytes, big.max_blocks) == (512, 131072 // 128)
    # deprecated blockSize is characters of text
    legacy = registry.create(
        "p", "prefix-cache-scorer", {"blockSize": 10, "maxPrefixTokensToMatch": 0}
    )
    assert (legacy.prefix.block_bytes, legacy.prefix.max_blocks) == (10, 2048)


def test_registries_are_independent_objects():
    mine = default_registry()
    mine.register("always-one", lambda name, params: _One(name), PluginKind.SCORER)
    assert "always-one" in mine
    assert "always-one" not in default_registry()
    assert "always-one" not in PluginRegistry()


class _One:
    def __init__(self, name: str) -> None:
        self.name = name

    def score(self, request, snapshot, endpoints):
        return np.ones(len(endpoints), dtype=np.float32)


def test_config_validates_against_the_registry_it_is_given():
    text = (
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins: [{type: always-one}]\n"
    )
    with pytest.raises(ConfigError, match="unknown plugin type 'always-one'"):
        load_config(text=text)
    registry = default_registry()
    registry.register("always-one", lambda name, params: _One(name), PluginKind.SCORER)
    assert load_config(text=text, registry=registry).plugins[0].type == "always-one"


def test_recognised_but_unimplemented_type_cannot_be_created():
    with pytest.raises(ConfigError, match="not implemented in igw"):
        default_registry().create("x", "session-affinity-filter", {})


def test_register_rejects_reserved_names():
    with pytest.raises(ValueError):
        PluginRegistry().register("python:x:y", lambda n, p: None)
