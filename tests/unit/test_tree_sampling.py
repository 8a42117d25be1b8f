"""Recursive rejection sampling over trees preserves the target distribution (chi-square tests).

The target is a first-order Markov chain over a 4-token vocabulary: the
distribution after token t is ``MARKOV[t]``, so the target row of a tree node is
``MARKOV[token of that node]``. A trial verifies one drafted tree from the root
token 0, then continues sampling from the chain until ``LENGTH`` tokens exist
(what the next decode steps would do); the joint distribution of those tokens
must be the chain's. Negative controls show that the test can fail.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from quickdraft.tree import children
from quickdraft.verify import (
    Verdict, sample_without_replacement, verify_sampling, verify_tree_sampling,
)

VOCAB = 4
MARKOV = torch.tensor([  # MARKOV[t] = target distribution after token t
    [0.10, 0.50, 0.25, 0.15],
    [0.40, 0.05, 0.35, 0.20],
    [0.30, 0.30, 0.10, 0.30],
    [0.55, 0.15, 0.15, 0.15],
])
DRAFT_MODEL = torch.tensor([  # a poor drafter's distribution after token t
    [0.40, 0.20, 0.10, 0.30],
    [0.10, 0.60, 0.20, 0.10],
    [0.25, 0.25, 0.25, 0.25],
    [0.10, 0.30, 0.50, 0.10],
])
ROOT = 1
MARKOV_NP = MARKOV.double().numpy()
MARKOV_NP /= MARKOV_NP.sum(axis=1, keepdims=True)
DRAFT_NP = DRAFT_MODEL.double().numpy()
DRAFT_NP /= DRAFT_NP.sum(axis=1, keepdims=True)


def chi2_critical(dof: int, z: float = 3.09) -> float:
    """Upper chi-square quantile (Wilson-Hilferty), z = 3.09 for p = 0.001."""
    a = 2.0 / (9.0 * dof)
    return dof * (1.0 - a + z * math.sqrt(a)) ** 3


def chi2_statistic(counts: dict, expected_probs: dict) -> tuple[float, int]:
    """Pearson's statistic, pooling cells expected fewer than 5 times; returns (statistic, dof)."""
    trials = sum(counts.values())
    stat, pooled_obs, pooled_exp, cells = 0.0, 0.0, 0.0, 0
    for cell, prob in expected_probs.items():
        expected = prob * trials
        if expected < 5:
            pooled_obs += counts.get(cell, 0)
            pooled_exp += expected
            continue
        stat += (counts.get(cell, 0) - expected) ** 2 / expected
        cells += 1
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        cells += 1
    return stat, cells - 1


def markov_joint(length: int) -> dict:
    out = {}
    for seq in itertools.product(range(VOCAB), repeat=length):
        prob, prev = 1.0, ROOT
        for t in seq:
            prob *= float(MARKOV[prev, t])
            prev = t
        out[seq] = prob
    return out


def target_rows(tokens: list[int]) -> torch.Tensor:
    return MARKOV[[ROOT, *tokens]]  # [n + 1, V]


def run_trials(make_draft, verifier, *, trials: int, length: int, seed: int) -> dict:
    """make_draft(rng, g) -> (tokens, parents, draft_probs | None); returns counts of the first `length` tokens."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    counts: dict = {}
    for _ in range(trials):
        tokens, parents, probs = make_draft(rng, g)
        verdict = verifier(target_rows(tokens), tokens, parents, probs, g)
        assert len(verdict.tokens) == len(verdict.path) + 1
        assert [tokens[i - 1] for i in verdict.path] == list(verdict.tokens[:-1])
        assert all(parents[b - 1] == a for a, b in zip((0, *verdict.path), verdict.path)), "path must follow the tree"
        seq = list(verdict.tokens[:length])
        while len(seq) < length:
            seq.append(int(rng.choice(VOCAB, p=MARKOV_NP[seq[-1]])))
        counts[tuple(seq)] = counts.get(tuple(seq), 0) + 1
    return counts


def passes(counts, length) -> tuple[bool, float, float]:
    stat, dof = chi2_statistic(counts, markov_joint(length))
    crit = chi2_critical(dof)
    return stat < crit, stat, crit


# --- drafts -------------------------------------------------------------------------

# A fixed deterministic tree, three levels deep, with duplicated sibling tokens:
#   root -> 1, 1 (duplicate), 2, 0
#   node 1 ("1") -> 2, 0 ; node 3 ("2") -> 1, 1, 3 ; node 5 ("2" under 1) -> 0 ; node 8 ("1" under 3) -> 3
FIXED_TOKENS = [1, 1, 2, 0, 2, 0, 1, 1, 3, 0, 3]
FIXED_PARENTS = (0, 0, 0, 0, 1, 1, 3, 3, 3, 5, 7)


def fixed_tree(rng, g):
    return FIXED_TOKENS, FIXED_PARENTS, None


def sampled_tree(width: int, depth: int, *, replacement: bool):
    """Every node gets `width` children drawn from DRAFT_MODEL[token], to `depth` levels."""

    def make(rng, g):
        tokens: list[int] = []
        parents: list[int] = []
        rows: list[torch.Tensor] = []
        frontier = [(0, ROOT)]
        for _ in range(depth):
            nxt = []
            for node, token in frontier:
                if replacement:
                    kids = [int(t) for t in rng.choice(VOCAB, size=width, p=DRAFT_NP[token])]
                    kid_rows = [DRAFT_MODEL[token]] * width
                else:
                    kids, stacked = sample_without_replacement(DRAFT_MODEL[token], width, g)
                    kid_rows = list(stacked)
                for kid, row in zip(kids, kid_rows):
                    tokens.append(kid)
                    parents.append(node)
                    rows.append(row)
                    nxt.append((len(tokens), kid))
            frontier = nxt
        return tokens, tuple(parents), torch.stack(rows)

    return make


# --- the tests ----------------------------------------------------------------------

def test_deterministic_tree_with_duplicates_matches_the_target():
    ok, stat, crit = passes(run_trials(fixed_tree, verify_tree_sampling, trials=20000, length=3, seed=1), 3)
    assert ok, f"chi2 {stat:.1f} >= {crit:.1f}"


def test_siblings_sampled_with_replacement_match_the_target():
    make = sampled_tree(width=3, depth=2, replacement=True)
    ok, stat, crit = passes(run_trials(make, verify_tree_sampling, trials=8000, length=3, seed=2), 3)
    assert ok, f"chi2 {stat:.1f} >= {crit:.1f}"


def test_siblings_sampled_without_replacement_match_the_target():
    make = sampled_tree(width=3, depth=2, replacement=False)
    ok, stat, crit = passes(run_trials(make, verify_tree_sampling, trials=5000, length=3, seed=3), 3)
    assert ok, f"chi2 {stat:.1f} >= {crit:.1f}"


def test_sampled_tokens_verified_as_one_hot_drafts_match_the_target():
    """Dropping draft probabilities (as the combined drafter does) stays exact."""
    make = sampled_tree(width=3, depth=2, replacement=True)

    def drop_probs(rng, g):
        tokens, parents, _ = make(rng, g)
        return tokens, parents, None

    ok, stat, crit = passes(run_trials(drop_probs, verify_tree_sampling, trials=8000, length=3, seed=4), 3)
    assert ok, f"chi2 {stat:.1f} >= {crit:.1f}"


def naive_tree_verifier(target_probs, tokens, parents, draft_probs, g):
    """WRONG: tries each sibling against the unchanged target row (no residual between siblings)."""
    kids = children(parents)
    path, out, node = [], [], 0
    while kids[node]:
        for child in kids[node]:
            if torch.rand((), generator=g) < target_probs[node, tokens[child - 1]]:
                break
        else:
            row = target_probs[node].clone()
            row[[tokens[c - 1] for c in kids[node]]] = 0
            out.append(int(torch.multinomial(row / row.sum(), 1, generator=g)))
            return Verdict(path=tuple(path), tokens=tuple(out))
        path.append(child)
        out.append(tokens[child - 1])
        node = child
    out.append(int(torch.multinomial(target_probs[node], 1, generator=g)))
    return Verdict(path=tuple(path), tokens=tuple(out))


def test_negative_control_no_residual_between_siblings_is_caught():
    ok, stat, crit = passes(run_trials(fixed_tree, naive_tree_verifier, trials=10000, length=3, seed=1), 3)
    assert not ok, f"the biased verifier passed: chi2 {stat:.1f} < {crit:.1f}"


def test_negative_control_without_replacement_verified_as_iid_is_caught():
    """Siblings drawn without replacement but verified with the unmodified draft row: biased, and seen."""
    make = sampled_tree(width=2, depth=1, replacement=False)

    def iid_rows(rng, g):
        tokens, parents, _ = make(rng, g)
        return tokens, parents, DRAFT_MODEL[[ROOT] * len(tokens)]

    ok, stat, crit = passes(run_trials(iid_rows, verify_tree_sampling, trials=6000, length=2, seed=5), 2)
    assert not ok, f"the biased verification passed: chi2 {stat:.1f} < {crit:.1f}"


@pytest.mark.parametrize("with_probs", [False, True])
def test_on_a_chain_it_equals_chain_speculative_sampling(with_probs):
    """Same generator state, same verdict: the tree verifier reduces to verify_sampling on chains."""
    g = torch.Generator().manual_seed(7)
    for trial in range(300):
        k = trial % 5
        tokens = [int(t) for t in torch.randint(0, VOCAB, (k,), generator=g)]
        probs = torch.softmax(torch.randn(k + 1, VOCAB, generator=g) * 2, dim=-1)
        draft = torch.softmax(torch.randn(k, VOCAB, generator=g), dim=-1) if with_probs else None
        seed = int(torch.randint(0, 1 << 30, (), generator=g))
        chain = verify_sampling(probs, tokens, draft, torch.Generator().manual_seed(seed))
        tree = verify_tree_sampling(probs, tokens, tuple(range(k)), draft, torch.Generator().manual_seed(seed))
        assert tree == chain


def test_certain_tokens_follow_the_only_possible_branch():
    # target puts all mass on one token per node: the path is forced, whatever the order of siblings
    tokens, parents = [3, 1, 2, 1, 0], (0, 0, 0, 3, 3)
    probs = torch.zeros(6, VOCAB)
    probs[0, 2] = 1  # root -> 2 (node 3)
    probs[3, 0] = 1  # node 3 -> 0 (node 5)
    probs[5, 1] = 1  # bonus 1
    probs[[1, 2, 4], 0] = 1
    verdict = verify_tree_sampling(probs, tokens, parents, None, torch.Generator().manual_seed(0))
    assert verdict == Verdict(path=(3, 5), tokens=(2, 0, 1))


def test_all_children_impossible_recovers_from_the_residual():
    tokens, parents = [0, 1], (0, 0)
    probs = torch.tensor([[0.0, 0.0, 0.5, 0.5], [1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    for seed in range(20):
        verdict = verify_tree_sampling(probs, tokens, parents, None, torch.Generator().manual_seed(seed))
        assert verdict.path == () and verdict.tokens[0] in (2, 3)


def test_sample_without_replacement_rows_exclude_earlier_tokens():
    g = torch.Generator().manual_seed(0)
    tokens, rows = sample_without_replacement(torch.tensor([0.4, 0.3, 0.2, 0.1]), 3, g)
    assert len(set(tokens)) == 3 and rows.shape == (3, 4)
    for j in range(3):
        assert rows[j].sum() == pytest.approx(1.0)
        assert all(rows[j, t] == 0 for t in tokens[:j])
