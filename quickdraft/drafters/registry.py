"""Methods by name: each drafter module registers itself here.

The engine looks a method up by name and builds its drafter; it never branches
on a method's name. ``quickdraft methods`` prints this table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import QuickdraftError
from .base import Drafter


@dataclass(frozen=True)
class BuildContext:
    """What a drafter factory may use: the target model and the user's options.

    target: the engine's :class:`~quickdraft.models.TargetModel` (for drafters
        that reuse the model, such as self-speculation).
    options: method-specific keyword options from the user (``--draft-model``, ...).
    """

    target: Any
    options: dict[str, Any] = field(default_factory=dict)

    def pick(self, *names: str) -> dict[str, Any]:
        """The options among ``names`` that the user set (others are for other drafters)."""
        return {name: self.options[name] for name in names if self.options.get(name) is not None}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    lossless: bool
    description: str
    build: Callable[[BuildContext], Drafter]


_REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, *, lossless: bool, description: str) -> Callable:
    """Decorator registering a drafter factory under ``name``."""

    def wrap(build: Callable[[BuildContext], Drafter]) -> Callable[[BuildContext], Drafter]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        _REGISTRY[name] = MethodSpec(name=name, lossless=lossless, description=description, build=build)
        return build

    return wrap


def methods() -> list[MethodSpec]:
    """Every registered method, in registration order."""
    return list(_REGISTRY.values())


def get_method(name: str) -> MethodSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise QuickdraftError(f"unknown method {name!r}; available methods: {known}") from None
