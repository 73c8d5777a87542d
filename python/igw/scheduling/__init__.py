"""igw's scheduling layer: plugin registry, profiles, Python plugins, and the engine that runs
them on the core (``igw._core``, or its pure-Python twin ``igw.core_reference``).

Typical use::

    engine = SchedulingEngine(load_config(path))      # or named_policy("predicted-ttft")
    decision = engine.schedule(request, pool, k=3)    # reserves the primary's in-flight load
    ...
    engine.observe_first_token(decision, ttft_s)      # optional: calibrates prefill rates
    engine.release(decision)                          # always, exactly once in effect
"""

from igw.scheduling.engine import SchedulingEngine
from igw.scheduling.framework import Filter, Scorer
from igw.scheduling.policies import POLICIES, named_policy
from igw.scheduling.registry import PluginKind, PluginRegistry
from igw.scheduling.wiring import default_registry

__all__ = [
    "POLICIES",
    "Filter",
    "PluginKind",
    "PluginRegistry",
    "SchedulingEngine",
    "Scorer",
    "default_registry",
    "named_policy",
]
