"""Drafters, one module each; each registers itself by name in :mod:`.registry` (``@register``), declaring
what it needs from a backend, whether it is lossless, how ``auto`` may use it and where it is listed.

Every module of this package is imported here (:func:`discover`), so a new drafter is one new file: no
list to extend. Modules without a registration are helpers of the drafters.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import EMPTY_DRAFT, Draft, DraftContext, Drafter, StepOutcome
from .registry import BuildContext, MethodSpec, SourceSpec, build_drafter, get_method, methods, register, sources


def discover() -> list[str]:
    """Import every module of this package (also from folders added to its ``__path__``); their names."""
    names = sorted(info.name for info in pkgutil.iter_modules(__path__))
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names


discover()

from .pld import PromptLookup, find_continuation  # noqa: E402  (after discovery: pld is a drafter module)

__all__ = [
    "BuildContext", "Draft", "DraftContext", "Drafter", "EMPTY_DRAFT", "MethodSpec", "PromptLookup", "SourceSpec",
    "StepOutcome", "build_drafter", "discover", "find_continuation", "get_method", "methods", "register", "sources",
]
