"""Method and drafter options as the command line writes them: ``--methods`` lists with variants in
brackets (``ngram[nodes=8]``) and ``--option [METHOD.]KEY=VALUE`` pairs. Pure parsing, shared by the CLI,
the benchmark and the server."""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from .errors import QuickdraftError


def split_variant(name: str) -> tuple[str, dict[str, Any]]:
    """A method name and the options it carries in brackets: ``ngram[nodes=8,width=2]``.

    Values are read as for ``--option`` (JSON where they parse, else strings); a
    comma starts a new option only where ``key=`` follows, so a value may hold
    commas (``swift[skip=4,6,8]``).

    >>> split_variant("ngram[nodes=8, prior=none]")
    ('ngram', {'nodes': 8, 'prior': 'none'})
    >>> split_variant("auto[sources=pld-tree,ngram,max_nodes=16]")
    ('auto', {'sources': 'pld-tree,ngram', 'max_nodes': 16})
    >>> split_variant("pld+recycle")
    ('pld+recycle', {})
    """
    name = name.strip()
    if "[" not in name and "]" not in name:
        return name, {}
    base, bracket, rest = name.partition("[")
    if not bracket or not rest.endswith("]") or "[" in rest[:-1] or "]" in rest[:-1] or not base.strip():
        raise QuickdraftError(f"cannot read method {name!r}; a method's own options go in brackets: "
                              f"ngram[nodes=8,width=2]")
    options: dict[str, Any] = {}
    for pair in filter(None, (p.strip() for p in _NEXT_OPTION.split(rest[:-1]))):
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise QuickdraftError(f"cannot read {pair!r} in method {name!r}; expected key=value")
        options[key.strip()] = read_value(raw.strip())
    if not options:
        raise QuickdraftError(f"method {name!r} has empty brackets; give options (ngram[nodes=8]) or none (ngram)")
    return base.strip(), options


_NEXT_OPTION = re.compile(r",(?=\s*[A-Za-z_][\w-]*\s*=)")  # a comma followed by key=


def split_methods(text: str) -> list[str]:
    """``--methods``: names separated by commas, except inside a variant's brackets.

    >>> split_methods("pld, ngram[nodes=8,width=2],auto")
    ['pld', 'ngram[nodes=8,width=2]', 'auto']
    """
    out, depth, current = [], 0, []
    for char in text:
        depth += (char == "[") - (char == "]")
        if char == "," and depth <= 0:
            out.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    out.append("".join(current).strip())
    return [name for name in out if name]


def read_value(raw: str) -> Any:
    """An option's value: JSON where it parses (numbers, true/false, null), else the string."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def render_value(value: Any) -> str:
    """An option's value as :func:`read_value` reads it back (a string that would read as another type is quoted).

    >>> [render_value(v) for v in ("none", "2", 2, True)]
    ['none', '"2"', '2', 'true']
    """
    if isinstance(value, str) and read_value(value) == value:
        return value
    return json.dumps(value)


def parse_options(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--option`` values: ``key=value`` for every method, ``method.key=value`` for one method.

    Values are read as JSON where they parse (numbers, true/false, null) and as
    strings otherwise. Returns ``{"": {shared}, "method": {...}}``.

    >>> parse_options(["k=8", "pld.max_n=4", "datastore=/tmp/ds"])
    {'': {'k': 8, 'datastore': '/tmp/ds'}, 'pld': {'max_n': 4}}
    """
    out: dict[str, dict[str, Any]] = {"": {}}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        method, dot, name = key.rpartition(".")
        if not sep or not name or (dot and not method):
            raise QuickdraftError(f"--option expects key=value or method.key=value, got {pair!r}")
        out.setdefault(method, {})[name] = read_value(raw)
    return out


def options_for(method: str, options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Shared options overlaid with the method's own (the method's win)."""
    return {**options.get("", {}), **options.get(method, {})}


__all__ = ["options_for", "parse_options", "read_value", "render_value", "split_methods", "split_variant"]
