"""Token Recycling: the template, tree expansion and matrix updates on small hand-built cases."""

import numpy as np
import pytest
import torch

from quickdraft.drafters import DraftContext, StepOutcome
from quickdraft.drafters.recycle import (
    DEFAULT_RANK_PROBS, TokenRecycling, expand_template, rank_template, update_adjacency,
)
from quickdraft.tree import depths


def test_template_prefixes_are_the_smaller_templates():
    full = rank_template(DEFAULT_RANK_PROBS, 64)
    for m in (1, 2, 5, 16, 40):
        small = rank_template(DEFAULT_RANK_PROBS, m)
        assert small == (full[0][:m], full[1][:m])


def test_template_is_a_tree_wide_near_the_root():
    parents, ranks = rank_template(DEFAULT_RANK_PROBS, 64)
    assert all(p <= i for i, p in enumerate(parents))
    per_depth = np.bincount(depths(parents)[1:])
    assert per_depth[1] == len(DEFAULT_RANK_PROBS)  # every candidate of the root's row
    assert all(a >= b for a, b in zip(per_depth[2:], per_depth[3:]))  # narrower deeper down
    # siblings read distinct matrix columns
    seen = set(zip(parents, ranks))
    assert len(seen) == len(parents)


ADJ = np.array([
    [1, 2, 3],     # after token 0
    [2, 0, -1],    # after token 1 (third unknown)
    [-1, -1, -1],  # token 2 never seen
    [0, 1, 2],
])


def test_expand_reads_rows_and_skips_unknowns():
    # template: root ranks 0, 1, 2; under the first: ranks 0, 1, 2; under its first: rank 0
    template = ((0, 0, 0, 1, 1, 1, 4), (0, 1, 2, 0, 1, 2, 0))
    tokens, parents = expand_template(ADJ, 0, template, max_depth=8)
    # root 0 -> 1, 2, 3 ; node "1" -> 2, 0 (rank 2 unknown) ; node "2" under "1" has an unknown row
    assert tokens == (1, 2, 3, 2, 0)
    assert parents == (0, 0, 0, 1, 1)


def test_expand_respects_depth_and_keeps_prefix_order():
    template = rank_template([0.5, 0.3, 0.2], 12)
    full = expand_template(ADJ, 3, template, max_depth=8)
    shallow = expand_template(ADJ, 3, template, max_depth=1)
    assert shallow == ((0, 1, 2), (0, 0, 0))
    for m in range(1, 12):  # the draft of the first m template nodes is a prefix of the full draft
        tokens, parents = expand_template(ADJ, 3, (template[0][:m], template[1][:m]), max_depth=8)
        assert tokens == full[0][: len(tokens)] and parents == full[1][: len(parents)]


def reference_update(adjacency, node_tokens, logits, path):
    """Slow reference: one row at a time, root and path last."""
    k = adjacency.shape[1]
    order = [i for i in range(len(node_tokens)) if i not in set(path) | {0}] + [0, *path]
    for i in order:
        if node_tokens[i] < adjacency.shape[0]:
            adjacency[node_tokens[i]] = torch.topk(logits[i], k).indices.to(adjacency.dtype)


def test_update_writes_topk_rows_with_the_path_winning():
    adjacency = torch.full((6, 2), -1, dtype=torch.int32)
    logits = torch.tensor([
        [0, 5, 4, 0, 0, 0],  # root (token 3): top-2 = 1, 2
        [9, 0, 0, 0, 8, 0],  # node 1 (token 4, off the path): 0, 4
        [0, 0, 0, 7, 9, 0],  # node 2 (token 4, on the path): 4, 3
        [1, 2, 3, 4, 5, 6],  # node 3 (token 9: beyond the vocabulary, ignored)
    ], dtype=torch.float32)
    update_adjacency(adjacency, [3, 4, 4, 9], logits, path=(2,))
    assert adjacency[3].tolist() == [1, 2]
    assert adjacency[4].tolist() == [4, 3]
    assert (adjacency[[0, 1, 2, 5]] == -1).all()


def test_vectorised_update_equals_the_reference():
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        n = int(torch.randint(1, 12, (), generator=g))
        tokens = torch.randint(0, 7, (n + 1,), generator=g).tolist()  # many repeats
        logits = torch.randn(n + 1, 7, generator=g)
        path = tuple(sorted(set(torch.randint(1, n + 1, (2,), generator=g).tolist())))
        fast = torch.full((7, 3), -1, dtype=torch.int32)
        slow = fast.clone()
        update_adjacency(fast, tokens, logits, path)
        reference_update(slow, tokens, logits, path)
        assert torch.equal(fast, slow)


def context(tokens, budget=20, nodes=None):
    return DraftContext(tokens=np.asarray(tokens, dtype=np.int64), prompt_len=1, budget=budget, nodes=nodes)


def test_drafter_learns_from_what_it_verified_and_keeps_it_across_requests():
    drafter = TokenRecycling(vocab_size=5, topk=2, nodes=6)
    assert drafter.memory_bytes == 5 * 2 * 4
    assert len(drafter.propose(context([1, 3]))) == 0  # nothing known yet
    # the target, at the root (token 3), ranks 4 then 0
    drafter.observe(StepOutcome(draft=drafter.propose(context([1, 3])), path=(), tokens=(4,),
                                target_logits=torch.tensor([[2.0, 0, 0, 0, 5]])))
    drafter.reset()  # a new request: the matrix stays
    draft = drafter.propose(context([2, 3]))
    assert draft.tokens == (4, 0) and draft.parents == (0, 0)
    # verifying that tree teaches rows for tokens 4 and 0 too
    logits = torch.tensor([[2.0, 0, 0, 0, 5], [0, 3.0, 2, 0, 0], [0, 0, 0, 1.0, 2]])  # rows of 3, 4, 0
    drafter.observe(StepOutcome(draft=draft, path=(1,), tokens=(4, 1), target_logits=logits))
    nxt = drafter.propose(context([2, 3]))
    # template (best first): 3->r0, r0->r0, 3->r1, (r0,r0)->r0 [row 1 unknown], r0->r1, r1->r0
    assert nxt.tokens == (4, 1, 0, 2, 4) and nxt.parents == (0, 1, 0, 1, 3)
    assert drafter.stats()["rows_known"] == 3


def test_drafter_respects_node_hint_and_depth_budget():
    drafter = TokenRecycling(vocab_size=4, topk=3, nodes=12)
    drafter.adjacency[:] = torch.tensor(ADJ, dtype=torch.int32).clamp_min(0)
    assert len(drafter.propose(context([0], nodes=3))) == 3
    shallow = drafter.propose(context([0], budget=1))
    assert set(shallow.parents) == {0}
    assert len(drafter.propose(context([0], budget=0))) == 0


def test_bad_options_raise():
    with pytest.raises(ValueError):
        TokenRecycling(vocab_size=4, topk=0)
    with pytest.raises(ValueError):
        TokenRecycling(vocab_size=4, nodes=0)


def test_the_template_deepens_when_the_top_candidate_is_always_right():
    from quickdraft.verify import verify_tree_greedy

    drafter = TokenRecycling(vocab_size=3, topk=2, nodes=8, refresh=10)
    drafter.adjacency[:] = torch.tensor([[1, 2], [2, 0], [0, 1]], dtype=torch.int32)  # rank 0: the cycle 0-1-2
    before = max(depths(drafter.template[0]))
    last = 0
    for _ in range(40):
        draft = drafter.propose(context([last]))
        node_tokens = torch.tensor([last, *draft.tokens])
        logits = torch.nn.functional.one_hot((node_tokens + 1) % 3, 3).float()  # the target follows the cycle
        verdict = verify_tree_greedy(logits, list(draft.tokens), draft.parents)
        drafter.observe(StepOutcome(draft=draft, path=verdict.path, tokens=verdict.tokens, target_logits=logits))
        last = verdict.tokens[-1]
    assert drafter.stats()["rank_probs"][0] > 0.6
    assert max(depths(drafter.template[0])) > before


@pytest.mark.parametrize("seed", range(3))
def test_successor_matrix_equals_counting_by_hand(seed):
    from collections import Counter

    from quickdraft.drafters.recycle import successor_matrix

    rng = np.random.default_rng(seed)
    tokens = rng.integers(-1, 6, size=300)  # -1: document ends
    counts = {a: Counter() for a in range(6)}
    for a, b in zip(tokens[:-1], tokens[1:]):
        if a >= 0 and b >= 0:
            counts[a][b] += 1
    got = successor_matrix(tokens, vocab_size=6, k=3)
    for a in range(6):
        best = sorted(counts[a], key=lambda b: (-counts[a][b], b))[:3]
        assert got[a].tolist() == best + [-1] * (3 - len(best))


def test_recycle_prior_option(tiny_engine, tmp_path):
    """prior: the matrix starts from a datastore's successor counts; 'none' and no shipped one: empty."""
    from quickdraft.datastore import Datastore
    from quickdraft.drafters import BuildContext, get_method
    from quickdraft.drafters.recycle import successor_matrix
    from tests.conftest import make_datastore

    path = make_datastore(tiny_engine, ["abc abd abc abd", "the quick brown fox"], tmp_path / "ds")

    def build(**options):
        return get_method("recycle").build(BuildContext(target=tiny_engine.target, options=options))

    primed = build(prior=str(path))
    expected = successor_matrix(Datastore.open(path).index.tokens, primed.adjacency.shape[0], 8)
    assert (primed.adjacency.numpy() == expected).all() and (expected[:, 0] >= 0).sum() > 3
    for empty in (build(prior="none"), build()):  # none is shipped for the tiny model
        assert (empty.adjacency == -1).all()
