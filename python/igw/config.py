"""EndpointPickerConfig: the reference picker's YAML config, parsed strictly into typed objects.

The file format is the reference endpoint picker's (``apiVersion: llm-d.ai/v1alpha1`` or the
legacy ``inference.networking.x-k8s.io/v1alpha1``, ``kind: EndpointPickerConfig``), so a
config written for the reference works here unchanged. Parsing has two steps:

1. structure: pydantic models with ``extra="forbid"`` (the reference decodes strictly too), so
   a misspelt key fails with its path;
2. meaning: every plugin type must be known, every ``pluginRef`` must name a defined plugin,
   weights must be finite and >= 0 and every plugin's ``parameters`` must parse with that
   plugin's own strict parameter model. This step is done by a plugin registry
   (``igw.scheduling``); ``load_config`` uses the built-in one unless it is handed another.

Every failure is one ``ConfigError`` naming the file, the field path
(``schedulingProfiles[0].plugins[1].weight``) and what was expected, so an operator can fix
the file without reading code.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

if TYPE_CHECKING:
    from igw.scheduling.registry import PluginRegistry

API_VERSION = "llm-d.ai/v1alpha1"
LEGACY_API_VERSION = "inference.networking.x-k8s.io/v1alpha1"
API_VERSIONS = (API_VERSION, LEGACY_API_VERSION)
KIND = "EndpointPickerConfig"
DEFAULT_SCORER_WEIGHT = 1.0


class ConfigError(ValueError):
    """A config that cannot be used: which file, which field, what was expected."""

    def __init__(self, source: str, field: str, expected: str) -> None:
        self.source = source
        self.field = field
        self.expected = expected
        where = f"{source}: " if source else ""
        at = f"field {field}: " if field else ""
        super().__init__(f"{where}{at}{expected}")


def format_loc(loc: tuple[Any, ...] | list[Any]) -> str:
    """``('schedulingProfiles', 0, 'plugins', 1)`` -> ``schedulingProfiles[0].plugins[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe(error: dict[str, Any]) -> str:
    """A pydantic error as "expected ..., got ..." (short, no pydantic URLs)."""
    kind = error.get("type", "")
    given = error.get("input")
    shown = repr(given) if not isinstance(given, dict | list) else type(given).__name__
    if len(shown) > 60:
        shown = shown[:57] + "..."
    if kind == "extra_forbidden":
        return "unknown field (not part of this object; check the spelling)"
    if kind == "missing":
        return "required field is missing"
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    return f"{message} (got {shown})"


def validation_to_config_error(
    exc: ValidationError, source: str, prefix: tuple[Any, ...] = ()
) -> ConfigError:
    """The first error of a pydantic ``ValidationError`` as a ``ConfigError`` (others appended)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    field = format_loc((*prefix, *first["loc"]))
    expected = _describe(first)
    if len(errors) > 1:
        rest = "; ".join(f"{format_loc((*prefix, *e['loc']))}: {_describe(e)}" for e in errors[1:4])
        more = f" (+{len(errors) - 4} more)" if len(errors) > 4 else ""
        expected = f"{expected}; also {rest}{more}"
    return ConfigError(source, field, expected)


class StrictModel(BaseModel):
    """Unknown keys are errors, as in the reference's strict decoder."""

    model_config = ConfigDict(extra="forbid", strict=True)


# ------------------------------------------------------------------------ building blocks

_QUANTITY = re.compile(
    r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
)
_QUANTITY_SCALE = {
    None: 1,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_quantity(value: int | float | str) -> float:
    """A Kubernetes resource quantity ("1Gi", "500M", 100) as a number."""
    if isinstance(value, bool):
        raise ValueError("expected a quantity such as 100, '1Gi' or '500M'")
    if isinstance(value, int | float):
        return float(value)
    match = _QUANTITY.match(value.strip())
    if not match:
        raise ValueError("expected a quantity such as 100, '1Gi' or '500M'")
    return float(match.group(1)) * _QUANTITY_SCALE[match.group(2)]


_DURATION_PART = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")
_DURATION_SCALE = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | int | float) -> float:
    """A Go duration string ("1m30s", "200ms", "0") as seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '60s' or '200ms'")
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    if text in ("0", ""):
        return 0.0
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.lstrip("+-")
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_SCALE[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ValueError("expected a duration such as '60s', '1m30s' or '200ms'")
    return sign * total


Quantity = int | float | str
Duration = str


class PluginSpec(StrictModel):
    """One plugin instance: ``name`` defaults to ``type``; ``parameters`` is the plugin's own."""

    name: str | None = None
    type: str = Field(min_length=1)
    parameters: dict[str, Any] | None = None

    @property
    def instance_name(self) -> str:
        return self.name or self.type


class ProfilePlugin(StrictModel):
    pluginRef: str = Field(min_length=1)
    weight: float | None = None

    @field_validator("weight")
    @classmethod
    def _finite_non_negative(cls, value: float | None) -> float | None:
        if value is not None and (not math.isfinite(value) or value < 0):
            raise ValueError("expected a finite number >= 0")
        return value

    @property
    def effective_weight(self) -> float:
        return DEFAULT_SCORER_WEIGHT if self.weight is None else float(self.weight)


class SchedulingProfile(StrictModel):
    name: str = Field(min_length=1)
    plugins: list[ProfilePlugin] = Field(default_factory=list)


class PluginRef(StrictModel):
    pluginRef: str = Field(min_length=1)


class DataLayerSource(StrictModel):
    pluginRef: str = Field(min_length=1)
    extractors: list[PluginRef] = Field(default_factory=list)


class DataLayerConfig(StrictModel):
    injectDefaults: bool | None = None
    sources: list[DataLayerSource] = Field(default_factory=list)
    discovery: PluginRef | None = None
    peerDiscovery: PluginRef | None = None
    crossReplicaSyncerPluginRef: str | None = None
    crossReplicaSyncInterval: Duration | None = None

    @field_validator("crossReplicaSyncInterval")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class RequestHandlerConfig(StrictModel):
    parsers: list[PluginRef] = Field(default_factory=list)


class SaturationDetectorConfig(StrictModel):
    pluginRef: str = ""


class PriorityBandConfig(StrictModel):
    priority: int
    maxBytes: Quantity | None = None
    maxRequests: Quantity | None = None
    fairnessPolicyRef: str | None = None
    orderingPolicyRef: str | None = None

    @field_validator("maxBytes", "maxRequests")
    @classmethod
    def _quantity(cls, value: Quantity | None) -> Quantity | None:
        if value is not None:
            parse_quantity(value)
        return value


class FlowControlConfig(StrictModel):
    """Shape of the ``flowControl`` section; ``igw.flowcontrol`` validates its values and acts
    on it (see docs/flowcontrol.md)."""

    maxBytes: Quantity | None = None
    maxRequests: Quantity | None = None
    defaultRequestTTL: Duration | None = None
    noEndpointRequestTTL: Duration | None = None
    defaultPriorityBand: PriorityBandConfig | None = None
    defaultNegativePriorityBand: PriorityBandConfig | None = None
    priorityBands: list[PriorityBandConfig] = Field(default_factory=list)
    usageLimitPolicyPluginRef: str | None = None
    saturationDetector: SaturationDetectorConfig | None = None
    enableEviction: bool = False

    @field_validator("maxBytes", "maxRequests")
    @classmethod
    def _quantity(cls, value: Quantity | None) -> Quantity | None:
        if value is not None:
            parse_quantity(value)
        return value

    @field_validator("defaultRequestTTL", "noEndpointRequestTTL")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class EndpointPickerConfig(StrictModel):
    """The whole config file. Sections igw does not act on are validated and kept."""

    apiVersion: str = API_VERSION
    kind: str = KIND
    featureGates: list[str] = Field(default_factory=list)
    plugins: list[PluginSpec] = Field(default_factory=list)
    schedulingProfiles: list[SchedulingProfile] = Field(default_factory=list)
    dataLayer: DataLayerConfig | None = None
    flowControl: FlowControlConfig | None = None
    requestHandler: RequestHandlerConfig | None = None
    saturationDetector: SaturationDetectorConfig | None = None
    parser: PluginRef | None = None

    @field_validator("apiVersion")
    @classmethod
    def _api_version(cls, value: str) -> str:
        if value not in API_VERSIONS:
            raise ValueError(f"expected one of {', '.join(API_VERSIONS)}")
        return value

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value != KIND:
            raise ValueError(f"expected {KIND}")
        return value

    @field_validator("featureGates")
    @classmethod
    def _gates(cls, value: list[str]) -> list[str]:
        for gate in value:
            name, sep, flag = gate.partition("=")
            if not name.strip():
                raise ValueError("expected 'name', 'name=true' or 'name=false'")
            if sep and flag.strip().lower() not in ("true", "false", "1", "0", "t", "f"):
                raise ValueError(f"feature gate {name!r}: expected true or false after '='")
        return value

    # -- helpers for users of the config ------------------------------------------------
    def feature_enabled(self, gate: str, default: bool = False) -> bool:
        for item in self.featureGates:
            name, sep, flag = item.partition("=")
            if name.strip() == gate:
                return (not sep) or flag.strip().lower() in ("true", "1", "t")
        return default

    def plugin(self, name: str) -> PluginSpec | None:
        for spec in self.plugins:
            if spec.instance_name == name:
                return spec
        return None

    def parser_names(self) -> list[str]:
        """Plugin types of the configured request parsers, in order (empty = the default set)."""
        refs = list(self.requestHandler.parsers) if self.requestHandler else []
        if self.parser is not None:
            refs.append(self.parser)
        out = []
        for ref in refs:
            spec = self.plugin(ref.pluginRef)
            out.append(spec.type if spec else ref.pluginRef)
        return out


def default_config() -> EndpointPickerConfig:
    """The reference's config when none is given: queue 2, kv-cache 2, prefix 3, max-score."""
    return EndpointPickerConfig(
        plugins=[
            PluginSpec(type="queue-scorer"),
            PluginSpec(type="kv-cache-utilization-scorer"),
            PluginSpec(type="prefix-cache-scorer"),
            PluginSpec(type="max-score-picker"),
        ],
        schedulingProfiles=[
            SchedulingProfile(
                name="default",
                plugins=[
                    ProfilePlugin(pluginRef="queue-scorer", weight=2),
                    ProfilePlugin(pluginRef="kv-cache-utilization-scorer", weight=2),
                    ProfilePlugin(pluginRef="prefix-cache-scorer", weight=3),
                    ProfilePlugin(pluginRef="max-score-picker"),
                ],
            )
        ],
    )


def _check_structure(config: EndpointPickerConfig, source: str) -> None:
    """Relations the models cannot see alone: unique names, refs to defined plugins."""
    seen: dict[str, int] = {}
    for i, spec in enumerate(config.plugins):
        name = spec.instance_name
        if name in seen:
            raise ConfigError(
                source,
                f"plugins[{i}].name",
                f"duplicate plugin name {name!r} (also plugins[{seen[name]}]); "
                "names must be unique",
            )
        seen[name] = i
    defined = ", ".join(sorted(seen)) or "none"
    profile_names: set[str] = set()
    for i, profile in enumerate(config.schedulingProfiles):
        if profile.name in profile_names:
            raise ConfigError(
                source, f"schedulingProfiles[{i}].name", f"duplicate profile name {profile.name!r}"
            )
        profile_names.add(profile.name)
        for j, ref in enumerate(profile.plugins):
            if ref.pluginRef not in seen:
                raise ConfigError(
                    source,
                    f"schedulingProfiles[{i}].plugins[{j}].pluginRef",
                    f"references undefined plugin {ref.pluginRef!r}; defined plugins: {defined}",
                )
    refs: list[tuple[str, str]] = []
    if config.requestHandler:
        refs += [
            (f"requestHandler.parsers[{i}].pluginRef", r.pluginRef)
            for i, r in enumerate(config.requestHandler.parsers)
        ]
    if config.parser:
        refs.append(("parser.pluginRef", config.parser.pluginRef))
    if config.saturationDetector and config.saturationDetector.pluginRef:
        refs.append(("saturationDetector.pluginRef", config.saturationDetector.pluginRef))
    flow = config.flowControl
    if flow and flow.saturationDetector and flow.saturationDetector.pluginRef:
        refs.append(("flowControl.saturationDetector.pluginRef", flow.saturationDetector.pluginRef))
    if flow and flow.usageLimitPolicyPluginRef:
        refs.append(("flowControl.usageLimitPolicyPluginRef", flow.usageLimitPolicyPluginRef))
    if config.dataLayer:
        for i, src in enumerate(config.dataLayer.sources):
            refs.append((f"dataLayer.sources[{i}].pluginRef", src.pluginRef))
            refs += [
                (f"dataLayer.sources[{i}].extractors[{j}].pluginRef", e.pluginRef)
                for j, e in enumerate(src.extractors)
            ]
        if config.dataLayer.discovery:
            refs.append(("dataLayer.discovery.pluginRef", config.dataLayer.discovery.pluginRef))
    for field, ref in refs:
        if ref not in seen:
            raise ConfigError(
                source, field, f"references undefined plugin {ref!r}; defined plugins: {defined}"
            )


def parse_config(
    data: Any, source: str = "<config>", *, registry: PluginRegistry | None = None
) -> EndpointPickerConfig:
    """Validate an already-decoded mapping (structure, references, plugin types and params)."""
    if not isinstance(data, dict):
        raise ConfigError(
            source, "", f"expected a mapping with kind {KIND}, got {type(data).__name__}"
        )
    try:
        config = EndpointPickerConfig.model_validate(data)
    except ValidationError as exc:
        raise validation_to_config_error(exc, source) from None
    _check_structure(config, source)
    if registry is None:
        from igw.scheduling.wiring import default_registry

        registry = default_registry()
    registry.validate(config, source)
    return config


def load_config(
    path: str | Path | None = None,
    text: str | None = None,
    *,
    registry: PluginRegistry | None = None,
) -> EndpointPickerConfig:
    """Load and fully validate a config file or text; neither given -> the default config.

    Raises ``ConfigError`` naming the file (or ``<config-text>``), the field and the
    expectation. Plugin types and parameters are checked against ``registry`` (default: the
    built-in registry), so an unknown type or a bad parameter fails here, at start-up.
    """
    if path is not None and text is not None:
        raise ConfigError("", "", "give either a config file or config text, not both")
    if path is None and text is None:
        config = default_config()
        if registry is not None:
            registry.validate(config, "<default config>")
        return config
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(source, "", f"cannot read the file: {exc.strerror or exc}") from None
    else:
        source = "<config-text>"
    assert text is not None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, "", f"not valid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(source, "", f"the config is empty; expected kind {KIND}")
    return parse_config(data, source, registry=registry)
