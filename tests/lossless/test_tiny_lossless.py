"""Every method equals plain greedy decoding, token for token, on a tiny random model."""

from __future__ import annotations

import pytest

from quickdraft import methods
from quickdraft.engine import Stats, decode
from quickdraft.models import TargetModel
from quickdraft.sampling import SamplingParams
from tests.drafters_for_tests import OracleDrafter, OracleTreeDrafter, RandomDrafter

GREEDY = SamplingParams()
# Combined methods are not listed by methods() (any a+b is one); cover some here, ppd's prompt tokens
# riding in a merged tree first and last.
COMBINED = ["pld+recycle", "ppd+ngram", "recycle+ppd"]
PROMPTS = [
    "the quick brown fox jumps over the lazy dog. the quick brown fox",
    "abcabcabcabc",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod",
]


def options_for(options: dict, method: str) -> dict | None:
    """The options of a method, or the union of its parts' for a combined one."""
    merged = {k: v for part in method.split("+") for k, v in (options.get(part) or {}).items()}
    return merged or None


def run(target, prompt_ids, drafter, max_new_tokens=48):
    stats = Stats()
    out = [t for step in decode(target, prompt_ids, drafter, GREEDY, max_new_tokens, stats) for t in step]
    return out, stats


def plain(engine, prompt_ids, max_new_tokens=48):
    return run(engine.target, prompt_ids, engine.drafter("ar"), max_new_tokens)[0]


@pytest.fixture(scope="module")
def prompts(tiny_engine):
    return [tiny_engine.encode(p, chat=False) for p in PROMPTS]


LOSSY: tuple[str, ...] = ()  # a lossy method would be listed here by name, and tested as such elsewhere


def test_every_method_is_lossless_or_named_lossy():
    """The lossless suites run every registered method: a method registered with ``lossless=False`` must be
    named in LOSSY, so it can never drop out of them silently."""
    assert tuple(m.name for m in methods() if not m.lossless) == LOSSY


@pytest.mark.parametrize("method", [m.name for m in methods() if m.name not in ("ar", *LOSSY)] + COMBINED)
def test_every_registered_method_equals_plain_greedy(tiny_engine, tiny_method_options, prompts, method):
    for ids in prompts:
        expected = plain(tiny_engine, ids)
        got, stats = run(tiny_engine.target, ids, tiny_engine.drafter(method, options_for(tiny_method_options, method)))
        assert got == expected
        assert stats.new_tokens == len(expected) and stats.steps <= len(expected)


@pytest.mark.parametrize("method", [m.name for m in methods() if m.name not in ("ar", *LOSSY)] + COMBINED)
def test_every_method_equals_plain_greedy_in_bfloat16(tiny_bf16_engine, tiny_method_options, method):
    """bfloat16 on CPU: verified rows are computed as plain decoding computes them (see quickdraft.attention)."""
    engine = tiny_bf16_engine
    for text in PROMPTS:
        ids = engine.encode(text, chat=False)
        expected = plain(engine, ids)
        got, _ = run(engine.target, ids, engine.drafter(method, options_for(tiny_method_options, method)))
        assert got == expected


def test_oracle_drafter_accepts_everything(tiny_engine, prompts):
    for ids in prompts:
        expected = plain(tiny_engine, ids)
        got, stats = run(tiny_engine.target, ids, OracleDrafter(len(ids), expected, k=5))
        assert got == expected
        assert stats.mean_accepted > 4.0  # 5 drafted + bonus per step, budget permitting


def test_random_drafter_changes_nothing(tiny_engine, prompts):
    for ids in prompts:
        expected = plain(tiny_engine, ids)
        got, stats = run(tiny_engine.target, ids, RandomDrafter(tiny_engine.target.vocab_size, k=6))
        assert got == expected
        assert stats.drafted_tokens > 0


def test_tree_with_decoys_equals_plain_greedy(tiny_engine, prompts):
    for ids in prompts:
        expected = plain(tiny_engine, ids)
        drafter = OracleTreeDrafter(len(ids), expected, tiny_engine.target.vocab_size, depth=4)
        got, stats = run(tiny_engine.target, ids, drafter)
        assert got == expected
        assert stats.mean_accepted > 3.0


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 7, 13])
def test_max_new_tokens_cut_inside_an_accepted_run(tiny_engine, prompts, max_new_tokens):
    ids = prompts[0]
    expected = plain(tiny_engine, ids, max_new_tokens=max_new_tokens)
    assert len(expected) == max_new_tokens
    reference = plain(tiny_engine, ids, max_new_tokens=40)
    for drafter in (OracleDrafter(len(ids), reference, k=5),
                    OracleTreeDrafter(len(ids), reference, tiny_engine.target.vocab_size, depth=5)):
        got, _ = run(tiny_engine.target, ids, drafter, max_new_tokens)
        assert got == expected


def test_eos_inside_an_accepted_run_stops_there(tiny_engine, prompts):
    ids = prompts[0]
    reference = plain(tiny_engine, ids, max_new_tokens=40)
    # Declare the token generated at position 10 an end-of-sequence token.
    eos = reference[10]
    first = reference.index(eos)
    target = TargetModel(tiny_engine.target.model, tiny_engine.tokenizer, name="tiny-eos")
    target.eos_ids = frozenset({eos})
    expected = run(target, ids, OracleDrafter(0, [], k=0))[0]
    assert expected == reference[: first + 1]
    for drafter in (OracleDrafter(len(ids), reference, k=6),
                    OracleTreeDrafter(len(ids), reference, target.vocab_size, depth=6),
                    RandomDrafter(target.vocab_size)):
        got, _ = run(target, ids, drafter)
        assert got == expected


def test_context_limit_stops_generation(tiny_engine):
    limit = tiny_engine.target.max_context
    ids = tiny_engine.encode("x" * (limit - 5), chat=False)
    got, _ = run(tiny_engine.target, ids, tiny_engine.drafter("pld"), max_new_tokens=50)
    assert len(ids) + len(got) == limit
