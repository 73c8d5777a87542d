"""Third-party guard checks named in config: ``{type: "pkg.module:Name", params: {...}}``.

``Name`` is any callable (usually a class) called with ``params`` as keyword arguments. What
it returns decides where it runs: an object with ``async check(request)`` is a prompt check
(guard.in, after the built-in ones), an object with ``on_chunk`` / ``on_headers`` /
``on_finish`` is a response stage (guard.out); one object may be both. Every failure names
the plugin's field, so a typo in a module path reads as a config error, not a traceback.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from igw.config import ConfigError
from igw.guard.config import PluginRef

_RESPONSE_HOOKS = ("on_headers", "on_chunk", "on_finish")


def load_plugin(ref: PluginRef, index: int, source: str = "") -> tuple[Any, bool, bool]:
    """The plugin object and whether it is a prompt check and/or a response stage."""
    field = f"guard.plugins[{index}]"
    module_name, _, attr = ref.type.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            source,
            f"{field}.type",
            f"expected an importable module, {module_name!r} is not ({exc})",
        ) from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ConfigError(
            source, f"{field}.type", f"expected a class or function {attr!r} in {module_name}"
        )
    try:
        plugin = factory(**ref.params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(source, f"{field}.params", f"rejected by {ref.type}: {exc}") from None
    check = getattr(plugin, "check", None)
    is_check = check is not None and inspect.iscoroutinefunction(check)
    if check is not None and not is_check:
        raise ConfigError(
            source,
            f"{field}.type",
            f"{ref.type}: expected check() to be 'async def check(request)'",
        )
    is_response = all(callable(getattr(plugin, hook, None)) for hook in _RESPONSE_HOOKS)
    if not (is_check or is_response):
        raise ConfigError(
            source, f"{field}.type",
            f"{ref.type}: expected an object with 'async check(request)' or the response-stage "
            "methods on_headers/on_chunk/on_finish",
        )  # fmt: skip
    if is_response and not isinstance(getattr(plugin, "name", None), str):
        try:
            plugin.name = ref.type
        except AttributeError:
            pass
    return plugin, is_check, is_response
