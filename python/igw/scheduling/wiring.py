"""The one place where plugin types are registered.

``default_registry()`` returns a fresh registry holding every built-in plugin and every other
type name of the reference picker (recognised; see ``registry`` for what that means). Tests
and embedders build their own registry from it and add plugins with ``register``.

What igw does with each family of reference types:
* scheduling scorers/pickers/filters with a core implementation, Python filters, the single
  and header profile handlers: implemented;
* request parsers (``*-parser``), data-layer sources/extractors, saturation detectors and
  flow-control policies: accepted, their parameters kept for the layer that owns them;
* data producers whose job igw's core does anyway (``approx-prefix-cache-producer``,
  ``inflight-load-producer``, ``token-producer``/``tokenizer`` with the estimate backend):
  accepted as built in;
* everything else (P/D handlers and deciders, latency predictors, session affinity,
  precise-prefix from KV events, multimodal, topology, multicluster): recognised but not
  implemented; usable in ``plugins`` only while no profile references it, and a
  profile handler of that kind is rejected at load time.
"""

from __future__ import annotations

from igw.scheduling.plugins import core_plugins as cp
from igw.scheduling.plugins import filters as fl
from igw.scheduling.plugins.affinity import AffinityParams, PrefixCacheAffinityFilter
from igw.scheduling.plugins.profile_handlers import (
    HeaderProfileHandler,
    HeaderProfileParams,
    SingleProfileHandler,
)
from igw.scheduling.plugins.rotation import RoundRobinScorer
from igw.scheduling.plugins.spread import SpreadParams, spread_filter_factory
from igw.scheduling.plugins.utilization import UtilizationFilter, UtilizationParams
from igw.scheduling.registry import PluginKind, PluginRegistry

PARSERS = (
    "openai-parser",
    "anthropic-parser",
    "vllmgrpc-parser",
    "vllmhttp-parser",
    "sglanghttp-parser",
    "vertexai-parser",
    "passthrough-parser",
)
DATA_LAYER = (
    "metrics-data-source",
    "core-metrics-extractor",
    "models-data-extractor",
    "models-data-source",
    "file-discovery",
    "endpoint-notification-source",
    "k8s-notification-source",
)
SATURATION_AND_FLOW = (
    "utilization-detector",
    "concurrency-detector",
    "global-strict-fairness-policy",
    "round-robin-fairness-policy",
    "program-aware-fairness",
    "fcfs-ordering-policy",
    "edf-ordering-policy",
    "slo-deadline-ordering-policy",
    "static-usage-limit-policy",
    "priority-holdback-policy",
    "soft-reflective-ceiling-policy",
    "sheddable-eviction-filter",
    "priority-then-time-eviction-order-policy",
)
BUILT_IN_PRODUCERS = ("inflight-load-producer", "token-producer", "tokenizer")

NOT_IMPLEMENTED: dict[PluginKind, tuple[str, ...]] = {
    PluginKind.SCORER: (
        "no-hit-lru-scorer",
        "session-affinity-scorer",
        "context-length-aware",
        "latency-scorer",
        "endpoint-attribute-scorer",
        "mm-embeddings-cache-scorer",
        "precise-prefix-cache-scorer",
        "topology-affinity-scorer",
        "header-label-affinity-scorer",
        "multicluster-prefix-cache-scorer",
        "multicluster-queue-scorer",
        "multicluster-kv-cache-utilization-scorer",
    ),
    PluginKind.FILTER: (
        "session-affinity-filter",
        "endpoint-attribute-filter",
        "slo-headroom-tier-filter",
        "topology-affinity-filter",
        "multicluster-session-affinity-filter",
    ),
    PluginKind.PROFILE_HANDLER: (
        "data-parallel-profile-handler",
        "disagg-profile-handler",
        "pd-profile-handler",
    ),
    PluginKind.PRODUCER: (
        "predicted-latency-producer",
        "session-id-producer",
        "burst-prefix-cache-producer",
        "p2p-source-producer",
        "mm-embeddings-cache-producer",
        "precise-prefix-cache-producer",
        "multicluster-approx-prefix-cache-producer",
    ),
    PluginKind.OTHER: (
        "always-disagg-pd-decider",
        "prefix-based-pd-decider",
        "always-disagg-multimodal-decider",
        "disagg-headers-handler",
        "prefill-header-handler",
        "latency-slo-admitter",
        "probabilistic-admitter",
        "disaggregatedset-rollout-screener",
        "disaggregatedset-rollout-pod-extractor",
        "agent-identity",
        "request-attribute-reporter",
        "destination-endpoint-served-verifier",
        "topology-extractor",
        "dcgm-data-source",
        "dcgm-extractor",
        "local-syncer",
        "multicluster-file-discovery",
        "multicluster-metrics-data-source",
        "multicluster-metrics-extractor",
    ),
}


def register_builtins(registry: PluginRegistry) -> PluginRegistry:
    """Register every built-in plugin of igw into ``registry``."""
    for type_name, (params, factory) in cp.CORE_SCORERS.items():
        registry.register(type_name, factory, PluginKind.SCORER, params=params)
    for type_name in cp.CORE_PICKERS:
        registry.register(
            type_name, cp.picker_factory(type_name), PluginKind.PICKER, params=cp.PickerParams
        )
    registry.register(
        "round-robin-scorer",
        lambda name, _: RoundRobinScorer(name),
        PluginKind.SCORER,
        params=cp.NoParams,
        note="igw: rotates over eligible endpoints",
    )

    # filters
    def selector(name: str, params: fl.LabelSelectorParams) -> fl.LabelSelectorFilter:
        return fl.LabelSelectorFilter(name, params)

    for type_name in ("label-selector-filter", "by-label-selector"):
        registry.register(type_name, selector, PluginKind.FILTER, params=fl.LabelSelectorParams)
    registry.register(
        "by-label",
        lambda name, p: fl.ByLabelFilter(name, p.label, p.validValues, p.allowsNoLabel),
        PluginKind.FILTER,
        params=fl.ByLabelParams,
    )
    for type_name in fl.ROLE_FILTERS:
        registry.register(
            type_name,
            lambda name, _, t=type_name: fl.role_filter(t, name),
            PluginKind.FILTER,
            params=cp.NoParams,
        )
    registry.register(
        "utilization-filter",
        lambda name, p: UtilizationFilter(name, p),
        PluginKind.FILTER,
        params=UtilizationParams,
    )
    registry.register(
        "prefix-cache-affinity-filter",
        lambda name, p: PrefixCacheAffinityFilter(name, p),
        PluginKind.FILTER,
        params=AffinityParams,
    )
    registry.register(
        "new-prefix-spread-filter",
        spread_filter_factory,
        PluginKind.FILTER,
        params=SpreadParams,
        note="igw, in the core: a prefix nobody holds goes to the endpoints holding the fewest "
        "prefixes",
    )
    registry.register(
        "header-based-testing-filter",
        lambda name, _: fl.HeaderBasedTestingFilter(name),
        PluginKind.FILTER,
        params=cp.NoParams,
    )

    # profile handlers
    registry.register(
        "single-profile-handler",
        lambda name, _: SingleProfileHandler(name),
        PluginKind.PROFILE_HANDLER,
        params=cp.NoParams,
    )
    registry.register(
        "header-profile-handler",
        lambda name, p: HeaderProfileHandler(name, p),
        PluginKind.PROFILE_HANDLER,
        params=HeaderProfileParams,
    )

    # accepted, done elsewhere or built into the core
    registry.register(
        "approx-prefix-cache-producer",
        cp.producer_factory,
        PluginKind.PRODUCER,
        params=cp.ProducerParams,
        note="built into igw's core prefix index",
    )
    for type_name in BUILT_IN_PRODUCERS:
        registry.register(
            type_name, cp.passive_factory(type_name), PluginKind.PRODUCER, params=cp.AnyParams
        )
    for type_name in PARSERS:
        registry.register(
            type_name, cp.passive_factory(type_name), PluginKind.PARSER, params=cp.AnyParams
        )
    for type_name in DATA_LAYER + SATURATION_AND_FLOW:
        registry.register(
            type_name, cp.passive_factory(type_name), PluginKind.OTHER, params=cp.AnyParams
        )

    for kind, names in NOT_IMPLEMENTED.items():
        registry.recognise(names, kind, note="a reference plugin type igw does not implement")
    return registry


def default_registry() -> PluginRegistry:
    """A fresh registry with igw's built-in plugins (cheap: build one per engine or test)."""
    return register_builtins(PluginRegistry())
