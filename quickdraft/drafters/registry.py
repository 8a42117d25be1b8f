"""Methods by name: each drafter module registers itself here.

The engine looks a method up by name and builds its drafter; it never branches
on a method's name. ``quickdraft methods`` prints this table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterator, Mapping

from ..backends import CAPABILITIES, check_capabilities
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
    options: Mapping[str, Any] = field(default_factory=dict)

    def pick(self, *names: str) -> dict[str, Any]:
        """The options among ``names`` that the user set (others are for other drafters)."""
        return {name: self.options[name] for name in names if self.options.get(name) is not None}


class ReadOptions(Mapping):
    """A method's options, recording which names its factory looks up (``read``).

    A factory asks for every option it understands (:meth:`BuildContext.pick`,
    ``options.get``), set or not, so after a build ``read`` names what the
    method takes, and an option the user set that is not among them was never
    used (:func:`build_drafter` reports it instead of ignoring it).
    """

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._options = dict(options)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return self._options[key]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return key in self._options

    def __iter__(self) -> Iterator[str]:
        return iter(self._options)

    def __len__(self) -> int:
        return len(self._options)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return self._options.get(key, default)


def build_drafter(method: str, target: Any, options: Mapping[str, Any] | None = None, *,
                  strict: Collection[str] = ()) -> Drafter:
    """Build ``method``'s drafter; an option named in ``strict`` (the user set it for this method) that the
    method does not take is an error naming the options it does take, not a setting silently ignored.

    Options outside ``strict`` may go unused (options shared by every method of a run, such as a
    datastore that only some methods read).
    """
    spec = get_method(method)
    check_capabilities(spec.name, spec.needs, target)
    tracked = ReadOptions(options or {})
    drafter = spec.build(BuildContext(target=target, options=tracked))
    unused = sorted(k for k in strict if k not in tracked.read)
    if unused:
        takes = ", ".join(sorted(tracked.read)) or "none"
        names = ", ".join(repr(k) for k in unused)
        raise QuickdraftError(f"method {method!r} has no option{'s' if len(unused) > 1 else ''} {names}; "
                              f"its options: {takes}")
    return drafter


@dataclass(frozen=True)
class MethodSpec:
    """A registered method. needs: what it takes from the target's backend besides logits
    (:data:`quickdraft.backends.CAPABILITIES`: ``hidden``, ``layers``, ``embeddings``)."""

    name: str
    lossless: bool
    description: str
    build: Callable[[BuildContext], Drafter]
    needs: frozenset[str] = frozenset()

    def runs_on(self, capabilities: Collection[str]) -> bool:
        """Whether a backend with these capabilities can run it."""
        return self.needs <= set(capabilities)


_REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, *, lossless: bool, description: str, needs: Collection[str] = ()) -> Callable:
    """Decorator registering a drafter factory under ``name``; ``needs``: see :class:`MethodSpec`."""
    unknown = set(needs) - set(CAPABILITIES)
    if unknown:
        raise ValueError(f"method {name!r} needs unknown capabilities {sorted(unknown)}")

    def wrap(build: Callable[[BuildContext], Drafter]) -> Callable[[BuildContext], Drafter]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        _REGISTRY[name] = MethodSpec(name=name, lossless=lossless, description=description, build=build,
                                     needs=frozenset(needs))
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


def canonical_method(name: str) -> str:
    """One spelling per method: the parts of a combination sorted (``recycle+pld`` -> ``pld+recycle``), so
    orderings of the same parts are one method (one drafter, one metrics label). Unknown names raise.

    >>> canonical_method("recycle+pld"), canonical_method("pld")
    ('pld+recycle', 'pld')
    """
    get_method(name)
    return "+".join(sorted(name.split("+"))) if "+" in name else name


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
        needs=frozenset().union(*(spec.needs for spec in parts)),
        description="one tree merged from the drafts of " + ", ".join(names),
    )
