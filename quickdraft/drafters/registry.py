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
class SourceSpec:
    """How ``auto`` uses a method as one of its sources (declared by the method when it registers).

    learns: it learns from every step, so it observes every step (else only
    the steps it drafted for).
    sees_all: it can use the whole verified tree (so it observes even the
    steps it drafted nothing for).
    signal: its statistics are split by the prompt-lookup match length.
    sized: it honours ``DraftContext.nodes``.
    primes: it drafts from the previous step's outcome (heads: guesses
        from the last accepted hidden states), and observing is its costly part. It
        observes a step only when it will be asked at the next one (that
        time counts as its drafting time); otherwise it is reset.
    needs: a user option without which it is left out by default
        (``sources``: only when listed there; ``adapter``: given, or shipped
        for the model when ``shipped``; left out quietly when there is none).
    shipped: (needs ``adapter``) the adapter shipped for the model will do.
    default: the targets on which auto uses it unasked: ``trees`` (a backend that verifies whole trees),
        ``chains`` (one that verifies chains only).
    avoid: the device kinds (``gpu``, ``cpu``) on which it is never a default source.
    """

    method: str
    options: dict[str, Any] = field(default_factory=dict)
    learns: bool = False
    sees_all: bool = False
    signal: bool = False
    sized: bool = True
    primes: bool = False
    needs: str | None = None
    shipped: bool = True
    default: frozenset[str] = frozenset()
    avoid: frozenset[str] = frozenset()


@dataclass(frozen=True)
class MethodSpec:
    """A registered method. needs: what it takes from the target's backend besides logits
    (:data:`quickdraft.backends.CAPABILITIES`: ``hidden``, ``layers``, ``embeddings``). lossless: its output
    is plain decoding's (greedy) or the model's distribution (sampling); a lossy method says so, is labelled,
    and is never a default. source: how ``auto`` may use it (None: never). order: where ``quickdraft
    methods`` lists it."""

    name: str
    description: str
    build: Callable[[BuildContext], Drafter]
    needs: frozenset[str] = frozenset()
    lossless: bool = True
    source: SourceSpec | None = None
    order: float = 100.0

    def runs_on(self, capabilities: Collection[str]) -> bool:
        """Whether a backend with these capabilities can run it."""
        return self.needs <= set(capabilities)


_REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, *, description: str, needs: Collection[str] = (), lossless: bool = True,
             source: Mapping[str, Any] | None = None, order: float = 100.0) -> Callable:
    """Decorator registering a drafter factory under ``name``; the rest: see :class:`MethodSpec`
    (``source``: :class:`SourceSpec` fields but ``method``)."""
    unknown = set(needs) - set(CAPABILITIES)
    if unknown:
        raise ValueError(f"method {name!r} needs unknown capabilities {sorted(unknown)}")
    role = None
    if source is not None:
        fields = dict(source)
        for key in ("default", "avoid"):
            fields[key] = frozenset(fields.get(key, ()))
        role = SourceSpec(name, **fields)

    def wrap(build: Callable[[BuildContext], Drafter]) -> Callable[[BuildContext], Drafter]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        _REGISTRY[name] = MethodSpec(name=name, description=description, build=build, needs=frozenset(needs),
                                     lossless=lossless, source=role, order=order)
        return build

    return wrap


def methods() -> list[MethodSpec]:
    """Every registered method, in listing order (``order``, then registration)."""
    return sorted(_REGISTRY.values(), key=lambda spec: spec.order)


def sources() -> dict[str, SourceSpec]:
    """The methods ``auto`` may use as sources, by name, in listing order."""
    return {spec.name: spec.source for spec in methods() if spec.source is not None}


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
        from ..sizing import adaptive_node_budget
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
