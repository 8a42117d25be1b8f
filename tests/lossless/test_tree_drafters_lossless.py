"""Tree drafters on the tiny model: warm trees with EOS and the max_new_tokens cut inside, and sampling.

The registered-method suite (test_tiny_lossless.py) runs each method cold; here
the drafters first learn from a run over the same prompt, so their trees hold
the model's real continuations: long accepted paths, EOS tokens inside them,
and cuts in the middle of a path.
"""

from __future__ import annotations

import pytest
import torch

from quickdraft.drafters import BuildContext, Drafter, get_method
from quickdraft.engine import Stats, decode
from quickdraft.models import TargetModel
from quickdraft.sampling import SamplingParams, target_probs
from tests.unit.test_tree_sampling import chi2_critical, chi2_statistic

GREEDY = SamplingParams()
TREE_METHODS = ["pld-tree", "recycle", "pld+recycle"]
LEARNING = ["recycle", "pld+recycle"]  # pld-tree only copies text, which a random model's output rarely repeats
PROMPT = "the quick brown fox jumps over the lazy dog. the quick brown fox"


class Recorder(Drafter):
    """Wraps a drafter and records (draft tokens, is a chain, accepted) per step."""

    def __init__(self, inner: Drafter) -> None:
        self.inner, self.steps = inner, []

    def propose(self, context):
        return self.inner.propose(context)

    def observe(self, outcome):
        self.steps.append((outcome.draft.tokens, outcome.draft.is_chain, len(outcome.path)))
        self.inner.observe(outcome)


def run(target, ids, drafter, max_new_tokens, params=GREEDY):
    stats = Stats()
    return [t for step in decode(target, ids, drafter, params, max_new_tokens, stats) for t in step], stats


@pytest.fixture(scope="module")
def ids(tiny_engine):
    return tiny_engine.encode(PROMPT, chat=False)


@pytest.fixture(scope="module")
def reference(tiny_engine, ids):
    return run(tiny_engine.target, ids, tiny_engine.drafter("ar"), 40)[0]


def warm(engine, method, ids):
    """A new drafter for ``method`` (16-node trees), after one greedy run over the prompt."""
    drafter = get_method(method).build(BuildContext(target=engine.target, options={"nodes": 16}))
    run(engine.target, ids, drafter, 40)
    drafter.reset()
    return drafter


@pytest.mark.parametrize("method", LEARNING)
def test_warm_trees_are_accepted_and_equal_plain_greedy(tiny_engine, ids, reference, method):
    drafter = Recorder(warm(tiny_engine, method, ids))
    got, stats = run(tiny_engine.target, ids, drafter, 40)
    assert got == reference
    # non-vacuous: a random model's next token depends on more than the last one, so a
    # [V, k] matrix is often wrong; still, learned trees are accepted, two levels deep at times
    assert stats.mean_accepted > 1.2
    assert any(not chain and accepted >= 2 for _, chain, accepted in drafter.steps), "no tree path was accepted"


@pytest.mark.parametrize("method", TREE_METHODS)
@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 7])
def test_the_max_new_tokens_cut_inside_a_tree_path(tiny_engine, ids, reference, method, max_new_tokens):
    got, _ = run(tiny_engine.target, ids, warm(tiny_engine, method, ids), max_new_tokens)
    assert got == reference[:max_new_tokens]


@pytest.mark.parametrize("method", TREE_METHODS)
def test_eos_inside_an_accepted_tree_path_stops_there(tiny_engine, ids, reference, method):
    eos = reference[10]  # declare the token generated at position 10 an end-of-sequence token
    target = TargetModel(tiny_engine.target.model, tiny_engine.tokenizer, name="tiny-eos")
    target.eos_ids = frozenset({eos})
    expected = reference[: reference.index(eos) + 1]
    drafter = Recorder(warm(tiny_engine, method, ids))
    got, _ = run(target, ids, drafter, 40)
    assert got == expected
    if method in LEARNING:
        assert any(eos in tokens and not chain for tokens, chain, _ in drafter.steps), "no tree held the EOS token"


def test_tree_sampling_keeps_the_target_distribution(tiny_engine):
    """Sampled with warm recycle trees, the first two tokens follow the model's own distribution."""
    target = tiny_engine.target
    ids = tiny_engine.encode("abcabc", chat=False)

    def params(seed):
        return SamplingParams(temperature=1.0, top_k=3, seed=seed)

    def next_probs(prefix):
        return target_probs(target.forward(list(prefix), target.new_cache())[-1:], params(0))[0]

    exact = {}
    first = next_probs(ids)
    for t1 in torch.nonzero(first).flatten().tolist():
        second = next_probs([*ids, t1])
        for t2 in torch.nonzero(second).flatten().tolist():
            exact[(t1, t2)] = float(first[t1] * second[t2])
    drafter = Recorder(warm(tiny_engine, "recycle", ids))
    counts: dict = {}
    trials = 600
    for seed in range(trials):
        got: list[int] = []
        steps = decode(target, ids, drafter, params(seed), 3, Stats())  # room for depth-2 trees
        for emitted in steps:
            got.extend(emitted)
            if len(got) >= 2:
                break
        steps.close()
        counts[tuple(got[:2])] = counts.get(tuple(got[:2]), 0) + 1
    assert set(counts) <= set(exact)
    stat, dof = chi2_statistic(counts, exact)
    assert stat < chi2_critical(dof), f"chi2 {stat:.1f} >= {chi2_critical(dof):.1f}"
    trees = [s for s in drafter.steps if not s[1]]
    assert len(trees) > trials // 2 and sum(1 for s in trees if s[2] >= 2) > trials // 20  # deep paths accepted
