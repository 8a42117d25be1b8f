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
    """The method called ``name``; ``a+b+...`` combines registered methods into one merged tree."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if "+" in name:
        return _combined(name)
    known = ", ".join(_REGISTRY)
    raise QuickdraftError(f"unknown method {name!r}; available methods: {known} (combine them with '+')")


def _combined(name: str) -> MethodSpec:
    """A method whose drafts merge the drafts of its parts (see :mod:`.combine`)."""
    names = name.split("+")
    if any(not part for part in names):
        raise QuickdraftError(f"bad combined method {name!r}: an empty name around '+'")
    if len(set(names)) != len(names):
        raise QuickdraftError(f"bad combined method {name!r}: a method is listed twice")
    parts = [get_method(part) for part in names]

    def build(ctx: BuildContext) -> Drafter:
        from ..profile import adaptive_node_budget
        from .combine import Combined

        nodes = ctx.options.get("nodes")
        built = [(spec.name, spec.build(ctx)) for spec in parts]
        extra = sum(int(getattr(drafter, "extra_inputs", 0)) for _, drafter in built)  # fed with every tree
        budget = None if nodes else adaptive_node_budget(ctx.target, extra=extra)
        return Combined(built, nodes=nodes, budget=budget)

    return MethodSpec(
        name=name, lossless=all(spec.lossless for spec in parts), build=build,
        description="one tree merged from the drafts of " + ", ".join(names),
    )
