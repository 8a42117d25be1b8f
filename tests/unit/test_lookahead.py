"""Lookahead decoding: n-gram collection, the Jacobi window update, the pool and the drafted tree."""

import numpy as np
import pytest
import torch

from quickdraft.drafters import Draft, DraftContext, StepOutcome
from quickdraft.drafters.lookahead import LookaheadDrafter, NgramPool, collect_ngrams, next_window
from quickdraft.tree import path_to


def ctx(tokens, budget=16, nodes=None):
    return DraftContext(tokens=np.array(tokens, dtype=np.int64), prompt_len=len(tokens), budget=budget, nodes=nodes)


def test_collect_ngrams_pairs_window_tokens_with_the_next_output():
    # root 9, window 1 2 3 4, the model's outputs after each window token 20 30 40 50
    assert collect_ngrams(9, [1, 2, 3, 4], [20, 30, 40, 50], n=4) == [(9, 1, 2, 30), (1, 2, 3, 40), (2, 3, 4, 50)]
    assert collect_ngrams(9, [1, 2], [20, 30], n=2) == [(1, 20), (2, 30)]
    assert collect_ngrams(9, [1, 2], [20, 30], n=5) == []
    with pytest.raises(ValueError):
        collect_ngrams(9, [1], [2], n=1)


def test_next_window_shifts_by_the_committed_tokens_and_pads():
    level = [10, 11, 12, 13, 14]  # guesses for 1..5 places after the root
    assert next_window(level, 1, 4, pad=[0, 0]) == [11, 12, 13, 14]
    assert next_window(level, 3, 4, pad=[7, 8, 9]) == [13, 14, 7, 8]
    assert next_window(level, 5, 2, pad=[7, 8]) == [7, 8]


def test_pool_keeps_the_newest_tails_per_first_token_and_dedups():
    pool = NgramPool(per_key=2, max_keys=2)
    pool.add([(1, 2, 3), (1, 4, 5)])
    pool.add([(1, 2, 3)])  # seen again: becomes the newest
    assert pool.candidates(1) == [(2, 3), (4, 5)]
    pool.add([(1, 6, 7)])
    assert pool.candidates(1) == [(6, 7), (2, 3)]
    pool.add([(2, 0, 0), (3, 0, 0)])  # a third key evicts the least recently updated (1)
    assert pool.candidates(1) == [] and pool.candidates(3) == [(0, 0)]
    assert len(pool) == 2


def test_window_is_a_chain_of_the_first_nodes_and_candidates_hang_off_the_root():
    drafter = LookaheadDrafter(window=3, ngram=3, candidates=2)
    drafter.pool.add([(5, 7, 8), (5, 7, 9), (6, 1, 1)])
    draft = drafter.propose(ctx([1, 2, 3, 4, 5]))
    assert draft.parents[:3] == (0, 1, 2)  # the window: a chain of 3 tokens from the context
    assert all(t in (1, 2, 3, 4, 5) for t in draft.tokens[:3])
    paths = {tuple(draft.tokens[n - 1] for n in path_to(draft.parents, node)) for node in range(1, len(draft) + 1)}
    assert (7, 9) in paths and (7, 8) in paths  # both candidates for root 5, sharing the node for 7
    assert len(draft) <= 3 + 2 * 2


def test_observe_runs_one_jacobi_step_and_pools_its_ngrams():
    drafter = LookaheadDrafter(window=3, ngram=3, candidates=2, seed=0, from_context=False)
    draft = drafter.propose(ctx([4, 4, 4, 4]))  # window from the context: 4 4 4
    assert draft.tokens == (4, 4, 4)
    logits = torch.eye(20)[[10, 11, 12, 13]]  # argmax at root, window nodes 1..3
    drafter.observe(StepOutcome(draft=draft, path=(), tokens=(10,), target_logits=logits))
    # new level [10, 11, 12, 13]; one token committed (10), so the window is 11 12 13
    assert drafter._window == [11, 12, 13]
    # n-grams (root 4, window 4 4 4, outputs 11 12 13): (4, 4, 12), (4, 4, 13)
    assert drafter.pool.candidates(4) == [(4, 13), (4, 12)]
    nxt = drafter.propose(ctx([4, 4, 4, 4, 10]))
    assert nxt.tokens[:3] == (11, 12, 13)


def test_observe_after_an_accepted_window_keeps_the_converged_guesses():
    drafter = LookaheadDrafter(window=4, ngram=2, candidates=0, from_context=False)
    drafter._window = [7, 8, 9, 3]
    draft = drafter.propose(ctx([1, 6]))
    logits = torch.eye(20)[[7, 8, 9, 5, 2]]  # the target agrees with 7 8 9, then says 5 (not 3)
    drafter.observe(StepOutcome(draft=draft, path=(1, 2, 3), tokens=(7, 8, 9, 5), target_logits=logits))
    assert drafter._window[0] == 2  # the guess after 7 8 9 3, shifted by the 4 committed tokens


def test_the_committed_texts_ngrams_are_pooled_once_each():
    drafter = LookaheadDrafter(window=2, ngram=3, candidates=3)
    draft = drafter.propose(ctx([1, 2, 3, 1, 2]))
    assert drafter.pool.candidates(1) == [(2, 3)] and drafter.pool.candidates(3) == [(1, 2)]
    assert drafter.pool.candidates(2) == [(3, 1)]
    drafter._verifying = []  # (skip the Jacobi part: nothing verified)
    drafter.propose(ctx([1, 2, 3, 1, 2, 7]))  # only the new n-gram (1, 2, 7) is added
    assert drafter.pool.candidates(1) == [(2, 7), (2, 3)]
    assert len(drafter.pool) == 4
    nxt = drafter.propose(ctx([5, 1]))  # a new request: both of 1's continuations are drafted
    assert {(2, 7), (2, 3)} <= {tuple(nxt.tokens[n - 1] for n in path_to(nxt.parents, node))
                                for node in range(1, len(nxt) + 1)}
    assert len(draft) >= 2


def test_a_draft_verified_differently_restarts_the_window():
    drafter = LookaheadDrafter(window=3, ngram=3, from_context=False)
    draft = drafter.propose(ctx([1, 2, 3]))
    other = Draft(tokens=(9,) + draft.tokens[1:], parents=draft.parents)
    drafter.observe(StepOutcome(draft=other, path=(), tokens=(5,), target_logits=torch.zeros(len(other) + 1, 10)))
    assert drafter._window == [] and len(drafter.pool) == 0


def test_budget_and_node_hint_shrink_the_window():
    drafter = LookaheadDrafter(window=6, ngram=3, candidates=2)
    assert len(drafter.propose(ctx([1, 2, 3], budget=2))) == 2
    assert len(drafter.propose(ctx([1, 2, 3], nodes=4))) == 4
    assert len(drafter.propose(ctx([1, 2, 3], budget=0))) == 0


@pytest.mark.parametrize("bad", [dict(window=0), dict(ngram=1), dict(candidates=-1), dict(nodes=0)])
def test_bad_settings_raise(bad):
    with pytest.raises(ValueError):
        LookaheadDrafter(**bad)
