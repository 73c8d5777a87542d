"""Named routing policies for ``igw serve --policy NAME`` and ``igw bench``.

Each name is a complete EndpointPickerConfig, so a policy can be printed, edited and passed
back as a config file. ``default`` is the reference picker's default profile unchanged;
``predicted-ttft`` is igw's cost model (see docs/configuration.md for why these weights);
the others are the baselines ``igw bench`` compares against.
"""

from __future__ import annotations

from collections.abc import Callable

from igw.config import (
    EndpointPickerConfig,
    PluginSpec,
    ProfilePlugin,
    SchedulingProfile,
    default_config,
)

# igw's cost model. The predicted-ttft scorer ranks endpoints by predicted time to first token
# (queued prefill work over the calibrated prefill rate, this request's uncached tokens from
# the prefix match); each in-flight request also counts as PER_REQUEST_TOKENS of work (its
# share of every decode step, so cache hits are not free), and a request of a hot prefix (one
# taking more than HOT_PREFIX_FACTOR replicas' fair share of recent requests) as
# HOT_REQUEST_TOKENS, so a hot prefix spreads to more replicas as its holder's load grows while
# the momentary imbalances of uniform traffic do not make igw re-prefill a prefix elsewhere.
# The prefix-cache term values what the TTFT of one request does not see: a miss costs
# the whole replica a prefill (every decode on it stalls meanwhile) and evicts other prefixes.
# A light KV-utilization term keeps away from replicas about to evict. A prefix nobody holds
# goes to the endpoints holding the fewest prefixes (new-prefix-spread-filter), since where it
# lands is where its future requests will go. Weights chosen with
# igw.scheduling.replay over shared-prefix, hot-prefix, bursty, multi-turn and slow-replica
# workloads (see docs/configuration.md for the table).
PER_REQUEST_TOKENS = 128
HOT_REQUEST_TOKENS = 512
HOT_PREFIX_FACTOR = 1.0
# A streamed request with at least this many uncached tokens waits at the gateway while its
# replica has another such prefill that has not produced its first token (igw.scheduling.gate):
# half of vLLM's usual 2,048-token step budget, so two long prefills could not share a step.
PREFILL_GATE_TOKENS = 1024
TTFT_WEIGHT = 4.0
PREFIX_WEIGHT = 3.0
KV_WEIGHT = 0.5


def _single(
    plugins: list[PluginSpec], refs: list[ProfilePlugin], name: str = "default"
) -> EndpointPickerConfig:
    return EndpointPickerConfig(
        plugins=plugins, schedulingProfiles=[SchedulingProfile(name=name, plugins=refs)]
    )


def predicted_ttft() -> EndpointPickerConfig:
    return _single(
        [
            PluginSpec(type="new-prefix-spread-filter"),
            PluginSpec(
                type="predicted-ttft-scorer",
                parameters={
                    "inflightRequestTokens": PER_REQUEST_TOKENS,
                    "hotRequestTokens": HOT_REQUEST_TOKENS,
                    "hotPrefixFactor": HOT_PREFIX_FACTOR,
                    "prefillGateTokens": PREFILL_GATE_TOKENS,
                },
            ),
            PluginSpec(type="prefix-cache-scorer"),
            PluginSpec(type="kv-cache-utilization-scorer"),
            PluginSpec(type="max-score-picker"),
        ],
        [
            ProfilePlugin(pluginRef="new-prefix-spread-filter"),
            ProfilePlugin(pluginRef="predicted-ttft-scorer", weight=TTFT_WEIGHT),
            ProfilePlugin(pluginRef="prefix-cache-scorer", weight=PREFIX_WEIGHT),
            ProfilePlugin(pluginRef="kv-cache-utilization-scorer", weight=KV_WEIGHT),
            ProfilePlugin(pluginRef="max-score-picker"),
        ],
    )


def round_robin() -> EndpointPickerConfig:
    return _single(
        [PluginSpec(type="round-robin-scorer"), PluginSpec(type="max-score-picker")],
        [
            ProfilePlugin(pluginRef="round-robin-scorer"),
            ProfilePlugin(pluginRef="max-score-picker"),
        ],
    )


def random_policy() -> EndpointPickerConfig:
    return _single([PluginSpec(type="random-picker")], [ProfilePlugin(pluginRef="random-picker")])


def least_loaded() -> EndpointPickerConfig:
    return _single(
        [PluginSpec(type="active-request-scorer"), PluginSpec(type="max-score-picker")],
        [
            ProfilePlugin(pluginRef="active-request-scorer"),
            ProfilePlugin(pluginRef="max-score-picker"),
        ],
    )


POLICIES: dict[str, Callable[[], EndpointPickerConfig]] = {
    "default": default_config,
    "predicted-ttft": predicted_ttft,
    "round-robin": round_robin,
    "random": random_policy,
    "least-loaded": least_loaded,
}


def named_policy(name: str) -> EndpointPickerConfig:
    """The config of a named policy; ``ValueError`` listing the valid names otherwise."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown policy {name!r}; valid policies: {', '.join(POLICIES)}"
        ) from None
    return factory()
