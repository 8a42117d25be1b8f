"""Prompt lookup as a tree: several continuations merged, the chain's always first."""

import numpy as np
import pytest

from quickdraft.drafters import DraftContext, find_continuation
from quickdraft.drafters.pld_tree import PromptLookupTree, find_continuations


def arr(*tokens):
    return np.array(tokens, dtype=np.int64)


def test_longer_matches_first_then_most_recent():
    ctx = arr(5, 6, 1, 9, 6, 2, 5, 6, 3, 4, 5, 6)
    found = [c.tolist() for c in find_continuations(ctx, min_n=1, max_n=2, k=2, limit=10)]
    # 2-gram (5, 6): at 6 -> [3, 4], at 0 -> [1, 9]; then 1-gram (6): at 4 -> [2, 5] (7 and 1 repeat)
    assert found == [[3, 4], [1, 9], [2, 5]]


def test_limit_no_match_and_empty_cases():
    ctx = arr(1, 2, 1, 3, 1, 4, 1)
    assert len(find_continuations(ctx, min_n=1, max_n=1, k=3, limit=2)) == 2
    assert find_continuations(arr(1, 2, 3), min_n=1, max_n=2, k=3, limit=4) == []
    assert find_continuations(ctx, min_n=1, max_n=1, k=0, limit=4) == []
    assert find_continuations(arr(7), min_n=1, max_n=3, k=3, limit=4) == []


def test_the_first_continuation_is_chain_pld():
    rng = np.random.default_rng(0)
    for _ in range(200):
        ctx = rng.integers(0, 4, size=int(rng.integers(2, 30)))
        chain = find_continuation(ctx, min_n=1, max_n=3, k=5)
        tree = find_continuations(ctx, min_n=1, max_n=3, k=5, limit=4)
        if chain.size:
            assert tree[0].tolist() == chain.tolist()
        else:
            assert tree == []


def context(tokens, budget=20, nodes=None):
    return DraftContext(tokens=np.asarray(tokens, dtype=np.int64), prompt_len=1, budget=budget, nodes=nodes)


def test_drafter_merges_continuations_into_a_trie():
    ctx = [5, 6, 1, 9, 6, 2, 5, 6, 3, 4, 5, 6]
    draft = PromptLookupTree(max_n=2, k=2, nodes=10).propose(context(ctx))
    # [3, 4], [1, 9], [2, 5] share no prefix: three root children, each with one child
    assert draft.tokens == (3, 4, 1, 9, 2, 5) and draft.parents == (0, 1, 0, 3, 0, 5)
    chain = find_continuation(np.array(ctx), min_n=1, max_n=2, k=2)
    assert list(draft.tokens[: len(chain)]) == chain.tolist()  # the chain is the first path


def test_shared_prefixes_are_merged_and_budgets_hold():
    ctx = [1, 2, 3, 9, 1, 2, 3, 8, 1, 2, 3]
    draft = PromptLookupTree(max_n=3, k=3, nodes=10).propose(context(ctx))
    # continuations of (1, 2, 3): [8, 1, 2] then [9, 1, 2]: distinct first tokens
    assert draft.tokens[:3] == (8, 1, 2)
    assert len(PromptLookupTree(max_n=3, k=3, nodes=4).propose(context(ctx))) == 4
    assert len(PromptLookupTree(max_n=3, k=3, nodes=10).propose(context(ctx, nodes=2))) == 2
    shallow = PromptLookupTree(max_n=3, k=3, nodes=10).propose(context(ctx, budget=1))
    assert set(shallow.parents) == {0}


def test_bad_options_raise():
    with pytest.raises(ValueError):
        PromptLookupTree(min_n=3, max_n=2)
    with pytest.raises(ValueError):
        PromptLookupTree(nodes=0)
