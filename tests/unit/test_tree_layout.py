"""exact_layout: the slots a tree's nodes take in a pass so that bfloat16 rows equal plain decoding's."""

import random

import pytest

from quickdraft.tree import ancestor_mask, chain_parents, children, depths, exact_layout, path_to


def random_tree(rng: random.Random, n: int) -> tuple[int, ...]:
    return tuple(rng.randint(0, i) for i in range(n - 1))


def slot_path(slot_parents, slot):
    """Slots from a root of the slot forest down to ``slot``."""
    path = [slot]
    while path[-1] and slot_parents[path[-1] - 1] >= 0:
        path.append(slot_parents[path[-1] - 1])
    return path[::-1]


def pairs(places: list[int], start: int) -> list[list[int]]:
    """The path's entries grouped as the value product adds them: by aligned pair of key positions."""
    groups: dict[int, list[int]] = {}
    for j, place in enumerate(places):
        groups.setdefault((start + place) // 2, []).append(j)
    return [groups[key] for key in sorted(groups)]


@pytest.mark.parametrize("start", [10, 11])
@pytest.mark.parametrize("seed", range(40))
def test_every_node_sees_its_ancestors_in_plain_decodings_pairs(start, seed):
    rng = random.Random(seed)
    parents = random_tree(rng, rng.randint(1, 30))
    nodes, slot_parents = exact_layout(parents, start)
    assert len(slot_parents) == len(nodes) - 1 and nodes[0] == 0
    assert sorted(set(nodes)) == list(range(len(parents) + 1))  # every node has a slot (some several)
    node_depths = depths(parents)
    for slot, node in enumerate(nodes):
        path = slot_path(slot_parents, slot)
        # the slots hold the node's ancestors, root first, in increasing slots
        assert [nodes[s] for s in path] == [0] + path_to(parents, node)
        assert path == sorted(path) and len(path) - 1 == node_depths[node]
        # plain decoding has them at positions start + depth; grouped into the same aligned pairs, in the
        # same order within a pair (which is by position), the value product adds them in the same order
        assert pairs(path, start) == pairs(list(range(len(path))), start)
        for group in pairs(path, start):
            if len(group) == 2:
                assert (start + path[group[0]]) % 2 == 0


def test_copies_only_where_needed_and_no_padding():
    # a binary tree: every node at an even position with two children is copied once
    parents = tuple((i + 1) // 2 for i in range(14))
    for start in (10, 11):
        nodes, _ = exact_layout(parents, start)
        heads = [v for v, d in enumerate(depths(parents)) if (start + d) % 2 == 0 and len(children(parents)[v]) == 2]
        assert len(nodes) == len(parents) + 1 + len(heads)


def test_the_first_child_chain_is_laid_out_first_and_a_chain_as_is():
    assert exact_layout((0, 1, 2, 3), 7) == ([0, 1, 2, 3, 4], (0, 1, 2, 3))
    nodes, _ = exact_layout((0, 0, 1, 2, 3), 8)  # r -> 1 -> 3 -> 5 is the first-child chain
    assert nodes[:4] == [0, 1, 3, 5]


def test_slot_forest_masks_and_depths():
    # the doc example: r at an even position has two children, so r is copied (a second root)
    nodes, slot_parents = exact_layout((0, 0, 1, 3), start=10)
    assert nodes == [0, 1, 3, 4, 0, 2] and slot_parents == (0, 1, 2, -1, 4)
    assert depths(slot_parents) == [0, 1, 2, 3, 0, 1]
    mask = ancestor_mask(slot_parents)
    assert mask[5].nonzero().flatten().tolist() == [4, 5]  # b sees the copy of r, not the first r
    assert mask[4].nonzero().flatten().tolist() == [4]
    assert children(slot_parents)[4] == [5] and children(slot_parents)[5] == []


def interleaved_sums(keys: list[int], pass_keys: int, width: int = 4) -> list[list[int]]:
    """The partial sums of ATen's bfloat16 product (the kernel interleaved_layout is for): which of a row's
    visible keys (positions ``keys``) each sum adds, in order, in a pass of ``pass_keys`` keys. The last
    ``pass_keys % width`` keys all go into the first sum."""
    tail = pass_keys - pass_keys % width
    sums: list[list[int]] = [[] for _ in range(width)]
    for j, position in enumerate(sorted(keys)):
        sums[0 if position >= tail else position % width].append(j)
    return sums


@pytest.mark.parametrize("start", [8, 9, 10, 11])
@pytest.mark.parametrize("seed", range(30))
def test_interleaved_layout_adds_every_rows_keys_as_plain_decoding(start, seed):
    from quickdraft.tree import interleaved_layout

    rng = random.Random(seed)
    parents = random_tree(rng, rng.randint(1, 30)) if seed else chain_parents(rng.randint(1, 9))
    nodes, slot_parents = interleaved_layout(parents, start)
    assert len(slot_parents) == len(nodes) - 1 and (start + len(nodes)) % 4 == 0
    assert sorted(set(nodes) - {-1}) == list(range(len(parents) + 1))
    node_depths = depths(parents)
    for node in range(len(parents) + 1):
        row = nodes.index(node)  # a node is computed at its first slot
        path = slot_path(slot_parents, row)
        assert [nodes[s] for s in path] == [0] + path_to(parents, node) and path == sorted(path)
        assert len(path) - 1 == node_depths[node]
        # plain decoding: the path at start .. start + depth, then one ignored key (the padding row)
        plain = interleaved_sums([start + d for d in range(len(path))], start + len(path) + 1)
        assert interleaved_sums([start + s for s in path], start + len(nodes)) == plain
    for slot, node in enumerate(nodes):  # a copy sees the ancestors its descendants need
        if node >= 0:
            assert [nodes[s] for s in slot_path(slot_parents, slot)] == [0] + path_to(parents, node)


def test_interleaved_layout_without_branches_or_moved_keys_is_the_chain_itself():
    from quickdraft.tree import interleaved_layout

    assert interleaved_layout((0, 1), 10) == ([0, 1, 2, -1, -1, -1], (0, 1, -1, -1, -1))
    # and the kernel model does tell layouts apart: node order would add a moved key in the wrong sum
    assert interleaved_sums([9], 11) == [[0], [], [], []] != interleaved_sums([9], 16)


def test_pass_plans_chains_trees_padding_and_spread_copies():
    """plan_pass (the layout of a transformers pass, pure): a chain is fed as is; a tree gets depths as
    positions and its ancestor mask; a padded plain step a second, ignored row; a layout with copies feeds each
    node once, spreads the copies' keys, and maps rows and cache entries back to node order."""
    import torch

    from quickdraft.passplan import plan_pass
    from quickdraft.tree import LAYOUTS, ancestor_mask, depths

    chain = plan_pass(4, 0, None, start=7)
    assert chain.fed == [0, 1, 2, 3] and chain.allowed is None and chain.keep is None and chain.spread is None
    tree = (0, 0, 1, 1)
    plan = plan_pass(5, 0, tree, start=7)
    assert plan.positions == [7 + d for d in depths(tree)] and torch.equal(plan.allowed, ancestor_mask(tree))
    padded = plan_pass(1, 0, None, start=3, pad_single=True)
    assert padded.slots == [0, -1] and padded.keep == [0] and padded.picked == [0] and padded.allowed is None
    wide = (0, 0, 0, 1, 1, 2, 3, 3)
    for name in LAYOUTS:
        slots, _ = LAYOUTS[name](wide, 100)
        copied = plan_pass(9, 0, wide, start=100, pad_single=True, layout=name, can_spread=True)
        assert copied.slots == slots and len(copied.fed) == len(set(slots))  # each node (and padding) fed once
        assert [copied.slots[copied.fed[row]] for row in copied.picked] == list(range(9))  # rows back in node order
        assert all(copied.slots[s] == n for n, s in enumerate(copied.keep))
        assert copied.spread is not None and len(copied.spread) == len(slots)
        assert copied.allowed.shape == (len(copied.fed), len(slots))
        computed = plan_pass(9, 0, wide, start=100, pad_single=True, layout=name, can_spread=False)
        assert computed.fed == list(range(len(slots))) and computed.spread is None  # copies computed as rows
