"""The plugin registry: plugin type name -> how to build it, what slot it fills.

A registry is an object, not module state, so each test (and each engine) can build its own;
``igw.scheduling.wiring.default_registry()`` returns one with every built-in plugin.

Each entry has a kind (filter, scorer, picker, profile-handler, parser, producer, other), an
optional strict pydantic parameter model and a factory ``factory(name, params) -> plugin``.
Types of the reference picker that igw does not implement are *recognised* (factory None):
a config may list them in ``plugins`` (so a reference config loads), but referencing one from
a scheduling profile, or configuring a profile handler igw lacks, is a ``ConfigError`` that
says "not implemented in igw" — silently ignoring a routing rule would be worse.

User plugins: ``type: python:package.module:ClassName`` imports the class at load time; a
class with ``score`` is a scorer, with ``filter`` a filter. If the class has a nested pydantic
``Params`` model the parameters are parsed with it and passed as the only argument, otherwise
they are passed as keyword arguments.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import importlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from igw.config import ConfigError, EndpointPickerConfig, validation_to_config_error

if TYPE_CHECKING:
    from igw.scheduling.profiles import BuiltConfig

PYTHON_PREFIX = "python:"


class PluginKind(str, enum.Enum):
    FILTER = "filter"
    SCORER = "scorer"
    PICKER = "picker"
    PROFILE_HANDLER = "profile-handler"
    PARSER = "parser"
    PRODUCER = "producer"
    OTHER = "other"


Factory = Callable[[str, Any], Any]


@dataclasses.dataclass(frozen=True)
class PluginType:
    """One registered type name."""

    type_name: str
    kind: PluginKind
    factory: Factory | None  # None: recognised reference type with no igw implementation
    params: type[BaseModel] | None = None  # strict parameter model; None = any mapping
    note: str = ""

    @property
    def implemented(self) -> bool:
        return self.factory is not None


class PluginRegistry:
    """Type name -> PluginType. Built explicitly in one wiring place."""

    def __init__(self) -> None:
        self._types: dict[str, PluginType] = {}

    def register(
        self,
        type_name: str,
        factory: Factory,
        kind: PluginKind | str = PluginKind.OTHER,
        *,
        params: type[BaseModel] | None = None,
        note: str = "",
    ) -> None:
        """Register (or replace) a plugin type; ``factory(name, params)`` builds an instance."""
        if not type_name or type_name.startswith(PYTHON_PREFIX):
            raise ValueError(f"invalid plugin type name {type_name!r}")
        self._types[type_name] = PluginType(type_name, PluginKind(kind), factory, params, note)

    def recognise(self, type_names: Iterable[str], kind: PluginKind | str, note: str = "") -> None:
        """Mark reference plugin types that igw knows of but does not implement."""
        for type_name in type_names:
            self._types.setdefault(
                type_name, PluginType(type_name, PluginKind(kind), None, None, note)
            )

    def __contains__(self, type_name: str) -> bool:
        return type_name in self._types or type_name.startswith(PYTHON_PREFIX)

    def types(
        self, kind: PluginKind | None = None, *, implemented: bool | None = None
    ) -> list[str]:
        return sorted(
            t.type_name
            for t in self._types.values()
            if (kind is None or t.kind == kind)
            and (implemented is None or t.implemented == implemented)
        )

    def get(self, type_name: str) -> PluginType:
        """The entry for a type (``python:`` types are resolved by import). KeyError if unknown."""
        if type_name.startswith(PYTHON_PREFIX):
            return _python_plugin_type(type_name)
        return self._types[type_name]

    def kind_of(self, type_name: str) -> PluginKind | None:
        try:
            return self.get(type_name).kind
        except (KeyError, ConfigError):
            return None

    def create(self, name: str, type_name: str, parameters: dict[str, Any] | None) -> Any:
        """Build one plugin instance; raises ``ConfigError`` with a field path relative to the
        plugin (``parameters.x``) and no source — callers add the source and prefix."""
        try:
            entry = self.get(type_name)
        except KeyError:
            raise ConfigError("", "type", self._unknown_message(type_name)) from None
        if entry.factory is None:
            raise ConfigError(
                "", "type", f"plugin type {type_name!r} is not implemented in igw{_note(entry)}"
            )
        params: Any = dict(parameters or {})
        if entry.params is not None:
            try:
                params = entry.params.model_validate(params)
            except ValidationError as exc:
                raise validation_to_config_error(exc, "", ("parameters",)) from None
        try:
            return entry.factory(name, params)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError("", "parameters", f"rejected by {type_name}: {exc}") from None

    def _unknown_message(self, type_name: str) -> str:
        close = difflib.get_close_matches(type_name, list(self._types), n=3, cutoff=0.6)
        hint = f"; did you mean one of: {', '.join(close)}" if close else ""
        return (
            f"unknown plugin type {type_name!r}{hint} (user plugins: "
            f"'python:package.module:ClassName')"
        )

    # -- whole configs ----------------------------------------------------------------------
    def build(self, config: EndpointPickerConfig, source: str = "<config>") -> BuiltConfig:
        """Instantiate every plugin and assemble the profiles; ``ConfigError`` on any problem.

        Core filters that no Python filter follows move into each profile's core plugins
        (``core_plugins.lower_core_filters``), so they run inside the core pick."""
        from igw.scheduling.plugins.core_plugins import lower_core_filters
        from igw.scheduling.profiles import build_config

        built = build_config(self, config, source)
        for profile in built.profiles.values():
            lower_core_filters(profile)
        return built

    def validate(self, config: EndpointPickerConfig, source: str = "<config>") -> None:
        """Everything ``build`` checks, for ``load_config``."""
        self.build(config, source)


def _note(entry: PluginType) -> str:
    return f" ({entry.note})" if entry.note else ""


def _python_plugin_type(type_name: str) -> PluginType:
    """``python:pkg.mod:Class`` -> a PluginType whose factory instantiates the class."""
    target = type_name[len(PYTHON_PREFIX) :]
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            "", "type", f"expected 'python:package.module:ClassName', got {type_name!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError("", "type", f"cannot import module {module_name!r}: {exc}") from None
    cls: Any = module
    for part in attr.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            raise ConfigError("", "type", f"module {module_name!r} has no attribute {attr!r}")
    if callable(getattr(cls, "score", None)):
        kind = PluginKind.SCORER
    elif callable(getattr(cls, "filter", None)):
        kind = PluginKind.FILTER
    else:
        raise ConfigError(
            "",
            "type",
            f"{attr} must define score(request, snapshot, endpoints) (a scorer) or "
            f"filter(request, pool, snapshot, mask) (a filter)",
        )
    params_model = getattr(cls, "Params", None)
    if not (isinstance(params_model, type) and issubclass(params_model, BaseModel)):
        params_model = None

    def factory(name: str, params: Any) -> Any:
        plugin = cls(params) if params_model is not None else cls(**params)
        if not getattr(plugin, "name", None):
            try:
                plugin.name = name
            except AttributeError:
                pass
        return plugin

    return PluginType(type_name, kind, factory, params_model, "user plugin")
