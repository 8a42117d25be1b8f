"""Sparse trees from per-depth guesses: best-first against a brute-force reference."""

import itertools

import pytest
import torch

from quickdraft.drafters.topk_tree import Guesses, ScoredTree, best_first_tree, end_probabilities
from quickdraft.tree import depths


def brute_force_scores(guesses: Guesses, budget: int, max_depth: int) -> list[float]:
    """Every rank path up to max_depth, scored; the best ``budget`` scores, descending."""
    probs = guesses.probs.tolist()
    k = len(probs[0])
    scores = []
    for d in range(1, max_depth + 1):
        for ranks in itertools.product(range(k), repeat=d):
            score = 1.0
            for level, r in enumerate(ranks):
                score *= probs[level][r]
            scores.append(score)
    return sorted(scores, reverse=True)[:budget]


def random_guesses(seed: int, depth: int = 4, k: int = 3) -> Guesses:
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(depth, 50, generator=g) * 3, dim=-1)
    top, tokens = probs.topk(k, dim=-1)
    return Guesses(tokens=tokens, probs=top)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("budget, max_depth", [(1, 4), (5, 4), (12, 3), (30, 4), (200, 2)])
def test_best_first_takes_the_highest_scoring_paths(seed, budget, max_depth):
    guesses = random_guesses(seed)
    tree = best_first_tree(guesses, budget, max_depth=max_depth)
    expected = brute_force_scores(guesses, budget, max_depth)
    assert len(tree.tokens) == len(expected)
    assert sorted(tree.scores[1:], reverse=True) == pytest.approx(expected)
    assert all(p < i for i, p in enumerate(tree.parents, start=1)), "parents precede children"
    assert max(depths(tree.parents)) <= max_depth
    # each node's score is its parent's times its own branch probability
    for node, (parent, branch) in enumerate(zip(tree.parents, tree.branch), start=1):
        assert tree.scores[node] == pytest.approx(tree.scores[parent] * branch)
    # siblings carry distinct tokens (else verification could not tell them apart)
    pairs = list(zip(tree.parents, tree.tokens))
    assert len(set(pairs)) == len(pairs)


def test_node_tokens_come_from_their_depth():
    guesses = random_guesses(3)
    tree = best_first_tree(guesses, 20)
    node_depth = depths(tree.parents)
    for node, token in enumerate(tree.tokens, start=1):
        assert token in guesses.tokens[node_depth[node] - 1].tolist()


def test_nothing_to_draft():
    g = random_guesses(0)
    assert best_first_tree(g, 0).tokens == ()
    assert best_first_tree(g, 5, max_depth=0).tokens == ()
    assert best_first_tree(Guesses(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3)), 5).tokens == ()


def test_end_probabilities_sum_to_one_for_a_full_tree():
    # With every candidate of the distribution in the tree, stopping somewhere is certain.
    probs = torch.tensor([[0.7, 0.3], [0.6, 0.4]])
    tree = best_first_tree(Guesses(tokens=torch.tensor([[1, 2], [3, 4]]), probs=probs), budget=6)
    assert len(tree.tokens) == 6
    assert sum(end_probabilities(tree)) == pytest.approx(1.0)


def test_end_probabilities_never_negative():
    tree = ScoredTree(tokens=(1, 2), parents=(0, 0), scores=(1.0, 0.7, 0.5), branch=(0.7, 0.5))  # sums past 1
    assert end_probabilities(tree)[0] == 0.0


def test_guesses_from_logits_are_softmax_top_k():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    g = Guesses.from_logits(logits, k=2)
    assert g.tokens.tolist() == [[1, 2], [0, 1]] or g.tokens.tolist() == [[1, 2], [0, 2]]
    assert g.probs[0, 0] == pytest.approx(torch.softmax(logits[0], -1)[1].item())
