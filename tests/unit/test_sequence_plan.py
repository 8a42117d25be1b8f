"""A token tree as one llama.cpp batch (pure): batch order, positions, sequence ids, kept cells."""

from quickdraft.drafters import Draft
from quickdraft.engine import best_chain
from quickdraft.tree import first_branch, plan_sequences


def test_a_chain_is_one_sequence_in_order():
    plan = plan_sequences(None, 3)
    assert plan.order == (0, 1, 2, 3) and plan.depth == (0, 1, 2, 3) and plan.leaves == 1
    assert plan.seqs == ((0,), (0,), (0,), (0,))
    assert plan.contiguous([1, 2, 3]) == 3 and plan.contiguous([1]) == 1


def test_a_node_is_in_the_sequences_of_every_leaf_below_it():
    #   root ─ a ─ c ─ e        parents of nodes 1..6: a=1 under 0, b=2 under 0, c=3 under 1,
    #        │   └ d            d=4 under 1, e=5 under 3, f=6 under 2
    #        └ b ─ f
    plan = plan_sequences([0, 0, 1, 1, 3, 2])
    assert plan.order == (0, 1, 3, 5, 4, 2, 6)  # depth first, children in node order
    assert plan.depth == (0, 1, 1, 2, 2, 3, 2)
    assert plan.leaves == 3  # e, d, f: sequences 0, 1, 2 in batch order
    assert plan.seqs[5] == (0,) and plan.seqs[4] == (1,) and plan.seqs[6] == (2,)
    assert plan.seqs[3] == (0,) and plan.seqs[1] == (0, 1) and plan.seqs[2] == (2,) and plan.seqs[0] == (0, 1, 2)
    # a node sees exactly its ancestors: they share a sequence with it, nothing else does
    ancestors = {5: {0, 1, 3}, 4: {0, 1}, 6: {0, 2}}
    for node, expected in ancestors.items():
        seen = {other for other in range(7) if other != node and set(plan.seqs[other]) & set(plan.seqs[node])
                and plan.depth[other] < plan.depth[node]}
        assert seen == expected


def test_only_the_first_branch_keeps_its_cells():
    plan = plan_sequences([0, 0, 1, 1, 3, 2])
    assert plan.contiguous([1, 3, 5]) == 3  # the first-child chain: rows 1, 2, 3
    assert plan.contiguous([1, 4]) == 1  # d sits at row 4, not 2: computed again next pass
    assert plan.contiguous([2, 6]) == 0
    assert first_branch([0, 0, 1, 1, 3, 2]) == [1, 3, 5]


def test_best_chain_keeps_the_first_branch_of_a_tree():
    draft = Draft(tokens=(10, 20, 30, 40), parents=(0, 0, 1, 2))  # 1, 2 under root; 3 under 1; 4 under 2
    chain = best_chain(draft)
    assert chain.tokens == (10, 30) and chain.is_chain
    assert best_chain(Draft(tokens=(1, 2))) == Draft(tokens=(1, 2))
