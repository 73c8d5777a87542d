"""Turn a validated EndpointPickerConfig into runnable profiles.

As in the reference, a profile's plugins are assigned to slots by their kind: filters run in
order, scorers are weighted (default weight 1), and at most one picker (default
``max-score-picker``). Plugins that are not filters, scorers or pickers (parsers, producers,
data sources) may not appear in a profile. Exactly one profile handler is used; with none,
``single-profile-handler`` is implied, which needs exactly one profile. A config with no
profile at all gets one profile named ``default`` holding every scorer, filter and picker of
``plugins`` (weights 1), as the reference does; with none of those it picks at random.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from igw.config import ConfigError, EndpointPickerConfig
from igw.scheduling.framework import CorePicker, CoreScorer, PassivePlugin, PrefixSettings
from igw.scheduling.plugins.profile_handlers import SingleProfileHandler
from igw.scheduling.registry import PluginKind, PluginRegistry

DEFAULT_PICKER = CorePicker(name="max-score-picker", type="max-score-picker", max_endpoints=1)


@dataclasses.dataclass(frozen=True)
class NotImplementedPlugin:
    """A recognised reference plugin type with no igw implementation, listed but unused."""

    name: str
    type: str
    params: Any = None


@dataclasses.dataclass
class BuiltProfile:
    name: str
    filters: list[tuple[Any, str, str]] = dataclasses.field(default_factory=list)  # obj, type, name
    core_scorers: list[tuple[CoreScorer, float]] = dataclasses.field(default_factory=list)
    # (plugin, weight, type, name)
    python_scorers: list[tuple[Any, float, str, str]] = dataclasses.field(default_factory=list)
    picker: CorePicker = DEFAULT_PICKER
    prefix: PrefixSettings = dataclasses.field(default_factory=PrefixSettings)

    @functools.cached_property
    def request_charge(self) -> int:
        """Tokens the engine adds to the primary's in-flight count per request (until release)."""
        return max((s.request_tokens for s, _ in self.core_scorers), default=0)

    @functools.cached_property
    def hot_prefix_factor(self) -> float:
        """> 0: requests of hot prefixes are charged ``hot_request_charge`` instead."""
        return max((s.hot_prefix_factor for s, _ in self.core_scorers), default=0.0)

    @functools.cached_property
    def hot_request_charge(self) -> int:
        return max((s.hot_request_tokens for s, _ in self.core_scorers), default=0)

    @functools.cached_property
    def narrows_in_core(self) -> bool:
        """Core filters run inside this profile's pick (ranked fallbacks may need a refill)."""
        return any(getattr(s, "is_filter", False) for s, _ in self.core_scorers)

    @functools.cached_property
    def prefill_gate_tokens(self) -> int:
        """> 0: streamed requests with this many uncached tokens pass the prefill gate."""
        return max((s.prefill_gate_tokens for s, _ in self.core_scorers), default=0)

    @functools.cached_property
    def prefill_gate_max_wait(self) -> float:
        return max((s.prefill_gate_max_wait for s, _ in self.core_scorers), default=0.0)

    @functools.cached_property
    def uses_lora(self) -> bool:
        return any(s.type == "lora-affinity-scorer" for s, _ in self.core_scorers)

    @functools.cached_property
    def calibrates(self) -> bool:
        """A predicted-ttft scorer learns prefill rates from this profile's first tokens."""
        return any(s.type == "predicted-ttft-scorer" and s.calibrate for s, _ in self.core_scorers)

    @property
    def needs_prefix(self) -> bool:
        """Hash the prompt only when something reads the match (scorers, token-aware load)."""
        return bool(self.core_scorers) or bool(self.python_scorers)


@dataclasses.dataclass
class BuiltConfig:
    config: EndpointPickerConfig
    profiles: dict[str, BuiltProfile]
    handler: Any
    plugins: dict[str, Any]  # instance name -> plugin object (passive ones included)

    def passive(self, type_name: str) -> list[PassivePlugin]:
        return [
            p for p in self.plugins.values() if isinstance(p, PassivePlugin) and p.type == type_name
        ]


def build_config(
    registry: PluginRegistry, config: EndpointPickerConfig, source: str
) -> BuiltConfig:
    plugins: dict[str, Any] = {}
    kinds: dict[str, PluginKind] = {}
    types: dict[str, str] = {}
    handler = None
    for i, spec in enumerate(config.plugins):
        name = spec.instance_name
        try:
            entry = registry.get(spec.type)
            if not entry.implemented and entry.kind != PluginKind.PROFILE_HANDLER:
                # listed but unused is fine (a reference config loads); use is checked below
                plugin = NotImplementedPlugin(name, spec.type, spec.parameters)
            else:
                plugin = registry.create(name, spec.type, spec.parameters)
        except KeyError:
            raise ConfigError(
                source, f"plugins[{i}].type", registry._unknown_message(spec.type)
            ) from None
        except ConfigError as exc:
            raise ConfigError(source, _join(f"plugins[{i}]", exc.field), exc.expected) from None
        kind = entry.kind
        plugins[name], kinds[name], types[name] = plugin, kind, spec.type
        if kind == PluginKind.PROFILE_HANDLER:
            if handler is not None:
                raise ConfigError(
                    source,
                    f"plugins[{i}]",
                    f"only one profile handler is allowed; {handler.name!r} is already one",
                )
            handler = plugin

    # producer-level prefix settings apply unless a profile's prefix scorer sets its own
    producer_prefix = None
    for plugin in plugins.values():
        if isinstance(plugin, PassivePlugin) and plugin.type == "approx-prefix-cache-producer":
            producer_prefix = plugin.params.prefix_settings()

    profiles_cfg = list(config.schedulingProfiles)
    if not profiles_cfg:
        profiles_cfg = _implicit_profile(config, kinds)
    profiles: dict[str, BuiltProfile] = {}
    for i, profile_cfg in enumerate(profiles_cfg):
        built = BuiltProfile(name=profile_cfg.name)
        built.prefix = producer_prefix or PrefixSettings()
        picker_seen = False
        for j, ref in enumerate(profile_cfg.plugins):
            where = f"schedulingProfiles[{i}].plugins[{j}]"
            plugin, kind = plugins[ref.pluginRef], kinds[ref.pluginRef]
            if isinstance(plugin, NotImplementedPlugin):
                raise ConfigError(
                    source,
                    f"{where}.pluginRef",
                    f"plugin {ref.pluginRef!r} has type {plugin.type!r}, which is not "
                    f"implemented in igw; remove it from the profile",
                )
            if kind == PluginKind.FILTER:
                built.filters.append((plugin, types[ref.pluginRef], ref.pluginRef))
            elif kind == PluginKind.SCORER:
                if isinstance(plugin, CoreScorer):
                    built.core_scorers.append((plugin, ref.effective_weight))
                    if plugin.prefix is not None:
                        built.prefix = plugin.prefix
                else:
                    built.python_scorers.append(
                        (plugin, ref.effective_weight, types[ref.pluginRef], ref.pluginRef)
                    )
            elif kind == PluginKind.PICKER:
                if picker_seen:
                    raise ConfigError(
                        source, f"{where}.pluginRef", "a profile may have only one picker"
                    )
                picker_seen = True
                if isinstance(plugin, CorePicker):
                    built.picker = plugin
            else:
                raise ConfigError(
                    source,
                    f"{where}.pluginRef",
                    f"plugin {ref.pluginRef!r} is a {kind.value} ({types[ref.pluginRef]}); a "
                    f"scheduling profile takes filters, scorers and one picker",
                )
        profiles[built.name] = built

    if handler is None:
        handler = SingleProfileHandler("single-profile-handler")
    problem = handler.check(list(profiles))
    if problem:
        raise ConfigError(source, "schedulingProfiles", problem)
    return BuiltConfig(config=config, profiles=profiles, handler=handler, plugins=plugins)


def _implicit_profile(config: EndpointPickerConfig, kinds: dict[str, PluginKind]):
    from igw.config import ProfilePlugin, SchedulingProfile

    refs = [
        ProfilePlugin(pluginRef=name)
        for name, kind in kinds.items()
        if kind in (PluginKind.FILTER, PluginKind.SCORER, PluginKind.PICKER)
    ]
    return [SchedulingProfile(name="default", plugins=refs)]


def _join(prefix: str, field: str) -> str:
    if not field:
        return prefix
    return f"{prefix}{field}" if field.startswith("[") else f"{prefix}.{field}"
