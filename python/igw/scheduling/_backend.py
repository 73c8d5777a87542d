"""Which core implementation the scheduling layer talks to.

The C++ extension ``igw._core`` is the product; ``igw.core_reference`` is its pure-Python
twin with the same names. A ``Pool`` carries its own core objects, so the engine never
guesses: ``core_of(pool)`` returns the module that built the pool's scheduler, and profiles
are made from that module's ``Profile`` class (a C++ scheduler only accepts C++ profiles).
``core`` is the module used when nothing else decides (fresh pools, tests).
"""

from __future__ import annotations

import sys
from types import ModuleType

from igw import _core

if hasattr(_core, "Scheduler"):
    core: ModuleType = _core
else:  # the C++ core is still a stub in this build: use the reference twin
    from igw import core_reference as _reference

    core = _reference


def core_of(scheduler: object) -> ModuleType:
    """The module whose classes built ``scheduler`` (``igw._core`` or ``igw.core_reference``)."""
    module = sys.modules.get(type(scheduler).__module__)
    if module is not None and hasattr(module, "Profile"):
        return module
    # pybind11 classes report the extension's name; fall back on the default choice
    return core


def is_core_error(exc: BaseException) -> bool:
    """True for the error type of either implementation."""
    from igw import core_reference

    return isinstance(exc, core_reference.Error) or isinstance(exc, getattr(_core, "Error", ()))
