"""Adding a drafter is one new file: a module in the drafters package registers itself and is discovered,
listed, verified losslessly, usable in a combination and by name in the CLI, without touching any other file."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

import quickdraft.drafters as drafters
from quickdraft.drafters import discover, methods, registry

THROWAWAY = '''
from quickdraft.drafters.base import Draft, Drafter
from quickdraft.drafters.registry import register


class Echo(Drafter):
    """Guesses that the last token repeats, three times (right now and then, wrong mostly)."""

    def propose(self, context):
        last = int(context.tokens[-1])
        return Draft(tokens=(last, last, last))


@register("throwaway-echo", description="guesses that the last token repeats (a test drafter)")
def build(ctx):
    return Echo()
'''


@pytest.fixture
def throwaway(tmp_path):
    (tmp_path / "throwaway_echo.py").write_text(THROWAWAY)
    drafters.__path__.append(str(tmp_path))
    try:
        yield discover()
    finally:
        drafters.__path__.remove(str(tmp_path))
        registry._REGISTRY.pop("throwaway-echo", None)
        sys.modules.pop("quickdraft.drafters.throwaway_echo", None)


def test_a_new_drafter_file_is_discovered_listed_and_lossless(throwaway, tiny_engine):
    from quickdraft.cli import main

    assert "throwaway_echo" in throwaway
    spec = next(m for m in methods() if m.name == "throwaway-echo")
    assert spec.lossless and spec.source is None  # lossless by default; auto does not use it unless declared
    listed = CliRunner().invoke(main, ["methods"])
    assert "throwaway-echo" in listed.output
    prompt = "ab ab ab ab"
    plain = tiny_engine.generate(prompt, method="ar", max_new_tokens=24, chat=False)
    for method in ("throwaway-echo", "throwaway-echo+pld"):
        got = tiny_engine.generate(prompt, method=method, max_new_tokens=24, chat=False)
        assert got.token_ids == plain.token_ids, method
        assert got.stats.drafted_tokens > 0


def test_every_drafter_module_registers_or_is_a_known_helper():
    """A drafter module that forgot its @register would silently not exist: every module registers at
    least one method, or is one of the drafters' helper modules."""
    helpers = {"base", "combine", "lm", "model_drafter", "registry", "self_spec", "topk_tree"}
    registered = {spec.build.__module__.rsplit(".", 1)[-1] for spec in methods() if "+" not in spec.name}
    import pkgutil

    modules = {info.name for info in pkgutil.iter_modules(drafters.__path__)}
    assert modules - helpers <= registered, sorted(modules - helpers - registered)
