"""ngram, lookahead and rest on the tiny model with drafters that know the answer: their trees reach
EOS and the max_new_tokens cut inside accepted paths, and the output still equals plain greedy."""

from __future__ import annotations

import numpy as np
import pytest

from quickdraft.datastore import SEP, Datastore, save_datastore
from quickdraft.drafters import Drafter
from quickdraft.drafters.lookahead import LookaheadDrafter
from quickdraft.drafters.ngram import NgramDrafter
from quickdraft.drafters.rest import RestDrafter
from quickdraft.models import TargetModel
from tests.lossless.test_tiny_lossless import PROMPTS, plain, run

METHODS = ["ngram", "lookahead", "rest"]


class Recording(Drafter):
    """Wraps a drafter and keeps every step's outcome."""

    def __init__(self, inner: Drafter) -> None:
        self.inner, self.outcomes = inner, []

    def propose(self, context):
        return self.inner.propose(context)

    def observe(self, outcome):
        self.outcomes.append(outcome)
        self.inner.observe(outcome)

    def reset(self):
        self.inner.reset()


@pytest.fixture(scope="module")
def case(tiny_engine):
    ids = tiny_engine.encode(PROMPTS[0], chat=False)
    return ids, plain(tiny_engine, ids, max_new_tokens=40)


def warmed(method, engine, ids, reference, tmp_path):
    """A drafter of ``method`` that has seen the reference answer (learned it, or retrieves it)."""
    if method == "rest":
        # the answer, plus copies that leave it after k tokens: retrieval then branches, as trees do
        docs = [[*ids, *reference]] + [[*ids, *reference[:k], (reference[k] + 1) % 256, 7, 7] for k in range(3, 36, 4)]
        tokens = np.array([t for doc in docs for t in (*doc, SEP)])
        save_datastore(tokens, engine.tokenizer, tmp_path / "ds", model_name="tiny")
        return RestDrafter(Datastore.open(tmp_path / "ds"), nodes=16, depth=8)
    drafter = NgramDrafter(nodes=16) if method == "ngram" else LookaheadDrafter(window=6, ngram=4, candidates=4)
    for _ in range(2):  # decoding the prompt teaches the n-gram table / fills the n-gram pool
        drafter.reset()
        assert run(engine.target, ids, drafter, max_new_tokens=40)[0] == reference
    drafter.reset()
    return drafter


@pytest.mark.parametrize("method", METHODS)
def test_eos_inside_an_accepted_tree_path_stops_there(tiny_engine, case, method, tmp_path):
    ids, reference = case
    eos = reference[12]  # declare this generated token an end-of-sequence token
    first = reference.index(eos)
    target = TargetModel(tiny_engine.target.model, tiny_engine.tokenizer, name="tiny-eos")
    target.eos_ids = frozenset({eos})
    drafter = Recording(warmed(method, tiny_engine, ids, reference, tmp_path))
    got, stats = run(target, ids, drafter)
    assert got == reference[: first + 1]
    # non-vacuous: EOS was an accepted draft token (not only the bonus token) of a tree
    assert any(eos in o.tokens[:-1] and not o.draft.is_chain for o in drafter.outcomes)


@pytest.mark.parametrize("method", METHODS)
def test_max_new_tokens_cut_inside_an_accepted_tree_path(tiny_engine, case, method, tmp_path):
    ids, reference = case
    drafter = warmed(method, tiny_engine, ids, reference, tmp_path)
    for max_new_tokens in (1, 2, 5, 11, 23):
        drafter.reset()
        got, stats = run(tiny_engine.target, ids, drafter, max_new_tokens=max_new_tokens)
        assert got == reference[:max_new_tokens]
        if max_new_tokens >= 11:
            assert stats.mean_accepted > 2.0  # trees were accepted deep, up to the cut


@pytest.mark.parametrize("method", METHODS)
def test_warmed_drafters_equal_plain_greedy_on_every_prompt(tiny_engine, method, tmp_path):
    for i, prompt in enumerate(PROMPTS):
        ids = tiny_engine.encode(prompt, chat=False)
        reference = plain(tiny_engine, ids, max_new_tokens=40)
        other = tiny_engine.encode(PROMPTS[i - 1], chat=False)  # a drafter that learned another prompt's answer
        drafter = warmed(method, tiny_engine, other, plain(tiny_engine, other, max_new_tokens=40), tmp_path / str(i))
        assert run(tiny_engine.target, ids, drafter, max_new_tokens=40)[0] == reference
