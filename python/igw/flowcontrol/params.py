"""Flow-control settings from an EndpointPickerConfig (the reference's ``flowControl`` section).

``igw.config`` validates the file's structure; this module gives the section its meaning:
quantities and durations become numbers, ``fairnessPolicyRef`` / ``orderingPolicyRef`` /
``saturationDetector.pluginRef`` resolve through ``plugins`` to plugin types, and each
detector's ``parameters`` are parsed strictly. It accepts the config object or a plain dict
(the raw YAML), so it does not depend on how ``igw.config`` models the section.

Flow control is on when ``featureGates`` enables ``flowControl``, or when a ``flowControl:``
section is present and the gate is not explicitly ``flowControl=false``.

Reference defaults (pkg/epp/flowcontrol/registry/config.go, controller/config.go): per band
``maxRequests`` 5000 and ``maxBytes`` 1 GB; global limits off (0); ``defaultRequestTTL`` and
``noEndpointRequestTTL`` 60 s; fairness ``global-strict``, ordering ``fcfs``. Every
distinct priority gets its own band, made from ``defaultPriorityBand`` (or, for negative
priorities, ``defaultNegativePriorityBand`` when set) unless ``priorityBands`` names it.

Policies igw does not implement (``program-aware-fairness``, the usage-limit policies other
than ``static-usage-limit-policy`` at threshold 1.0) are configuration errors: silently
ignoring a policy that gates bands would change who gets served.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from igw.config import (
    ConfigError,
    parse_duration,
    parse_quantity,
    validation_to_config_error,
)
from igw.flowcontrol import queues
from igw.flowcontrol.detectors import (
    CONCURRENCY,
    UTILIZATION,
    ConcurrencyDetector,
    UtilizationDetector,
)

log = logging.getLogger("igw.flowcontrol")

GATE = "flowControl"
DEFAULT_BAND_MAX_REQUESTS = 5000
DEFAULT_BAND_MAX_BYTES = 1_000_000_000
DEFAULT_TTL = 60.0
DEFAULT_NO_ENDPOINT_TTL = 60.0
DEFAULT_TICK = 0.005
STATIC_USAGE_LIMIT = "static-usage-limit-policy"

FAIRNESS_ALIASES = {
    "global-strict": queues.GLOBAL_STRICT,
    "round-robin": queues.ROUND_ROBIN,
    queues.GLOBAL_STRICT: queues.GLOBAL_STRICT,
    queues.ROUND_ROBIN: queues.ROUND_ROBIN,
}
ORDERING_ALIASES = {
    "fcfs": queues.FCFS,
    "edf": queues.EDF,
    "slo-deadline": queues.SLO_DEADLINE,
    queues.FCFS: queues.FCFS,
    queues.EDF: queues.EDF,
    queues.SLO_DEADLINE: queues.SLO_DEADLINE,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _BandModel(_Strict):
    priority: int | None = None
    maxBytes: int | float | str | None = None
    maxRequests: int | float | str | None = None
    fairnessPolicyRef: str | None = None
    orderingPolicyRef: str | None = None


class _DetectorRef(_Strict):
    pluginRef: str = ""


class _FlowControlModel(_Strict):
    maxBytes: int | float | str | None = None
    maxRequests: int | float | str | None = None
    defaultRequestTTL: str | int | float | None = None
    noEndpointRequestTTL: str | int | float | None = None
    defaultPriorityBand: _BandModel | None = None
    defaultNegativePriorityBand: _BandModel | None = None
    priorityBands: list[_BandModel] = Field(default_factory=list)
    usageLimitPolicyPluginRef: str | None = None
    saturationDetector: _DetectorRef | None = None
    enableEviction: bool = False


class UtilizationParams(_Strict):
    queueDepthThreshold: int = Field(default=5, gt=0)
    kvCacheUtilThreshold: float = Field(default=0.8, gt=0, le=1)
    metricsStalenessThreshold: str | int | float | None = None
    headroom: float = Field(default=0.0, ge=0)
    lagCorrection: bool | None = None  # igw: count requests sent since the scrape as waiting

    @field_validator("metricsStalenessThreshold")
    @classmethod
    def _duration(cls, value: str | int | float | None) -> str | int | float | None:
        if value is not None and not parse_duration(value) > 0:
            raise ValueError("expected a duration > 0 such as '200ms'")
        return value


class ConcurrencyParams(_Strict):
    maxConcurrency: int = Field(default=100, gt=0)
    maxTokenConcurrency: int | None = Field(default=None, gt=0)
    concurrencyMode: Literal["requests", "tokens", "hybrid"] = "requests"
    headroom: float = Field(default=0.0, ge=0)
    inFlightLoadProducerName: str = ""


class StaticUsageLimitParams(_Strict):
    threshold: float = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class BandSettings:
    max_requests: int = DEFAULT_BAND_MAX_REQUESTS
    max_bytes: float = DEFAULT_BAND_MAX_BYTES
    fairness: str = queues.GLOBAL_STRICT
    ordering: str = queues.FCFS


@dataclasses.dataclass(frozen=True, slots=True)
class DetectorSpec:
    type: str = UTILIZATION
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class FlowControlSettings:
    """Everything a controller needs, in plain numbers (seconds, requests, bytes)."""

    max_requests: int = 0  # global, all bands; 0 = no limit
    max_bytes: float = 0  # global; 0 = no limit
    default_ttl: float = DEFAULT_TTL
    no_endpoint_ttl: float = DEFAULT_NO_ENDPOINT_TTL
    default_band: BandSettings = BandSettings()
    default_negative_band: BandSettings | None = None
    bands: dict[int, BandSettings] = dataclasses.field(default_factory=dict)
    detector: DetectorSpec = DetectorSpec()
    tick: float = DEFAULT_TICK  # fallback dispatch tick while work is queued and blocked

    @property
    def queue_sheddable(self) -> bool:
        """Whether negative priorities queue (the config gave them a band) or are shed."""
        return self.default_negative_band is not None or any(p < 0 for p in self.bands)

    def band_for(self, priority: int) -> tuple[BandSettings, bool]:
        """A priority's band settings, and whether the band is configured explicitly."""
        found = self.bands.get(priority)
        if found is not None:
            return found, True
        if priority < 0 and self.default_negative_band is not None:
            return self.default_negative_band, False
        return self.default_band, False


def _as_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if hasattr(config, "model_dump"):
        return config.model_dump(by_alias=True, exclude_none=True)
    if isinstance(config, dict):
        return config
    raise ConfigError("", "", f"expected an EndpointPickerConfig or a mapping, got {config!r}")


def _gate(gates: list[Any], name: str) -> bool | None:
    for item in gates:
        gate, sep, flag = str(item).partition("=")
        if gate.strip() == name:
            return (not sep) or flag.strip().lower() in ("true", "1", "t")
    return None


def flow_control_enabled(config: Any) -> bool:
    """True when the feature gate is on, or a ``flowControl`` section is present and the
    gate is not explicitly off."""
    data = _as_dict(config)
    gate = _gate(list(data.get("featureGates") or []), GATE)
    if gate is not None:
        return gate
    return data.get("flowControl") is not None


def _plugin_types(data: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Plugin instance name -> (type, parameters)."""
    out = {}
    for spec in data.get("plugins") or []:
        if isinstance(spec, dict) and spec.get("type"):
            out[spec.get("name") or spec["type"]] = (spec["type"], spec.get("parameters") or {})
    return out


def _plugin_field(data: dict[str, Any], name: str, fallback: str) -> str:
    """``plugins[i]`` of the instance called ``name`` (where its parameters live)."""
    for i, spec in enumerate(data.get("plugins") or []):
        if isinstance(spec, dict) and (spec.get("name") or spec.get("type")) == name:
            return f"plugins[{i}]"
    return fallback


def _resolve(
    plugins: dict[str, tuple[str, dict[str, Any]]], ref: str, field: str, allowed: dict[str, str]
) -> tuple[str, dict[str, Any]]:
    type_name, params = plugins.get(ref, (ref, {}))
    if type_name not in allowed:
        expected = ", ".join(sorted(set(allowed.values())))
        raise ConfigError(
            "",
            field,
            f"{ref!r} is a plugin of type {type_name!r}, which igw's flow control does not "
            f"implement; expected a plugin of type: {expected}"
            if ref in plugins
            else f"references undefined plugin {ref!r}; expected a plugin of type: {expected}",
        )
    return allowed[type_name], params


def _count(value: Any, field: str, default: float) -> float:
    if value is None:
        return default
    try:
        number = parse_quantity(value)
    except ValueError as exc:
        raise ConfigError("", field, str(exc)) from None
    if number < 0:
        raise ConfigError("", field, f"expected a quantity >= 0, got {value!r}")
    return number if number > 0 else default  # 0 means "unset" in the reference


def _seconds(value: Any, field: str, default: float) -> float:
    if value is None:
        return default
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ConfigError("", field, str(exc)) from None
    if seconds < 0:
        raise ConfigError("", field, f"expected a duration >= 0, got {value!r}")
    return seconds if seconds > 0 else default


def _band(
    model: _BandModel,
    field: str,
    plugins: dict[str, tuple[str, dict[str, Any]]],
    base: BandSettings,
) -> BandSettings:
    fairness, ordering = base.fairness, base.ordering
    if model.fairnessPolicyRef:
        fairness, _ = _resolve(
            plugins, model.fairnessPolicyRef, f"{field}.fairnessPolicyRef", FAIRNESS_ALIASES
        )
    if model.orderingPolicyRef:
        ordering, _ = _resolve(
            plugins, model.orderingPolicyRef, f"{field}.orderingPolicyRef", ORDERING_ALIASES
        )
    return BandSettings(
        max_requests=int(_count(model.maxRequests, f"{field}.maxRequests", base.max_requests)),
        max_bytes=_count(model.maxBytes, f"{field}.maxBytes", base.max_bytes),
        fairness=fairness,
        ordering=ordering,
    )


def _detector_spec(data: dict[str, Any], plugins: dict[str, tuple[str, dict[str, Any]]]):
    flow = data.get("flowControl") or {}
    for field, section in (
        ("flowControl.saturationDetector.pluginRef", flow.get("saturationDetector")),
        ("saturationDetector.pluginRef", data.get("saturationDetector")),
    ):
        ref = (section or {}).get("pluginRef") if isinstance(section, dict) else None
        if ref:
            allowed = {UTILIZATION: UTILIZATION, CONCURRENCY: CONCURRENCY}
            type_name, params = _resolve(plugins, ref, field, allowed)
            return DetectorSpec(type_name, dict(params)), _plugin_field(data, ref, field)
    return DetectorSpec(), ""


def detector_from_spec(
    spec: DetectorSpec, *, staleness: float = 0.2, field: str = "", lag_correction: bool = False
):
    """Build the detector a spec names; bad parameters are one ``ConfigError``.

    ``lag_correction`` is the utilization detector's default when its parameters do not set
    ``lagCorrection`` (flow control passes True; the legacy path keeps the reference's
    formula)."""
    prefix = (f"{field}.parameters",) if field else ("parameters",)
    try:
        if spec.type == CONCURRENCY:
            c = ConcurrencyParams.model_validate(spec.params)
            return ConcurrencyDetector(
                c.concurrencyMode, c.maxConcurrency, c.maxTokenConcurrency, c.headroom
            )
        u = UtilizationParams.model_validate(spec.params)
    except ValidationError as exc:
        raise validation_to_config_error(exc, "", prefix) from None
    if u.metricsStalenessThreshold is not None:
        staleness = parse_duration(u.metricsStalenessThreshold)
    return UtilizationDetector(
        u.queueDepthThreshold,
        u.kvCacheUtilThreshold,
        staleness,
        headroom=u.headroom,
        lag_correction=lag_correction if u.lagCorrection is None else u.lagCorrection,
    )


def detector_from_config(config: Any, *, staleness: float = 0.2):
    """The saturation detector a config names (the utilization detector when none)."""
    data = _as_dict(config)
    spec, field = _detector_spec(data, _plugin_types(data))
    return detector_from_spec(spec, staleness=staleness, field=field)


def settings_from_config(config: Any) -> FlowControlSettings:
    """Parse the ``flowControl`` section (absent = the reference's defaults)."""
    data = _as_dict(config)
    plugins = _plugin_types(data)
    try:
        model = _FlowControlModel.model_validate(data.get("flowControl") or {})
    except ValidationError as exc:
        raise validation_to_config_error(exc, "", ("flowControl",)) from None
    if model.usageLimitPolicyPluginRef:
        field = "flowControl.usageLimitPolicyPluginRef"
        _, params = _resolve(
            plugins, model.usageLimitPolicyPluginRef, field, {STATIC_USAGE_LIMIT: "static"}
        )
        try:
            threshold = StaticUsageLimitParams.model_validate(params).threshold
        except ValidationError as exc:
            raise validation_to_config_error(exc, "", (field, "parameters")) from None
        if threshold != 1.0:
            raise ConfigError(
                "", f"{field}.parameters.threshold", "igw supports only threshold 1.0"
            )
    if model.enableEviction:
        log.warning("flowControl.enableEviction: igw does not evict in-flight requests; ignored")
    default_band = BandSettings()
    if model.defaultPriorityBand is not None:
        default_band = _band(
            model.defaultPriorityBand, "flowControl.defaultPriorityBand", plugins, default_band
        )
    negative = None
    if model.defaultNegativePriorityBand is not None:
        negative = _band(
            model.defaultNegativePriorityBand,
            "flowControl.defaultNegativePriorityBand",
            plugins,
            default_band,
        )
    bands: dict[int, BandSettings] = {}
    for i, band in enumerate(model.priorityBands):
        field = f"flowControl.priorityBands[{i}]"
        if band.priority is None:
            raise ConfigError("", f"{field}.priority", "required field is missing")
        if band.priority in bands:
            raise ConfigError("", f"{field}.priority", f"duplicate priority band {band.priority}")
        base = negative if band.priority < 0 and negative is not None else default_band
        bands[band.priority] = _band(band, field, plugins, base)
    spec, _ = _detector_spec(data, plugins)
    return FlowControlSettings(
        max_requests=int(_count(model.maxRequests, "flowControl.maxRequests", 0)),
        max_bytes=_count(model.maxBytes, "flowControl.maxBytes", 0),
        default_ttl=_seconds(model.defaultRequestTTL, "flowControl.defaultRequestTTL", DEFAULT_TTL),
        no_endpoint_ttl=_seconds(
            model.noEndpointRequestTTL, "flowControl.noEndpointRequestTTL", DEFAULT_NO_ENDPOINT_TTL
        ),
        default_band=default_band,
        default_negative_band=negative,
        bands=bands,
        detector=spec,
    )
