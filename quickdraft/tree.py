"""Draft trees as parent arrays: depths, ancestor masks, paths (pure functions).

Nodes are numbered 0..n: node 0 is the root (the last committed token, fed to
the model but not yet in the KV cache) and node ``i >= 1`` is draft token
``i - 1``. ``parents[i - 1]`` is the parent node of node ``i``; parents always
precede their children. A chain of k tokens has ``parents = [0, 1, ..., k-1]``.
A parent of ``-1`` makes a node a further root (a forest; only the layout of a
pass, :func:`exact_layout`, makes those): it has depth 0 and no ancestors.

Example tree (root r with children a, b; a has child c)::

    r ─ a ─ c          parents = [0, 0, 1]    (a, b, c = nodes 1, 2, 3)
      └ b              depths  = [0, 1, 1, 2]
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Sequence

import torch


def chain_parents(k: int) -> tuple[int, ...]:
    """Parents of a k-token chain. >>> chain_parents(3)
    (0, 1, 2)
    """
    return tuple(range(k))


def depths(parents: tuple[int, ...] | list[int]) -> list[int]:
    """Depth of every node, root included (root = 0).

    >>> depths([0, 0, 1])
    [0, 1, 1, 2]
    """
    out = [0]
    for p in parents:
        out.append(out[p] + 1 if p >= 0 else 0)
    return out


def ancestor_mask(parents: tuple[int, ...] | list[int]) -> torch.Tensor:
    """[n + 1, n + 1] bool: entry (i, j) is True when node j is node i or an ancestor of it.

    >>> ancestor_mask([0, 0, 1]).int().tolist()
    [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]]
    """
    n = len(parents) + 1
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[0, 0] = True
    for i, p in enumerate(parents, start=1):
        if p >= 0:
            mask[i] = mask[p]
        mask[i, i] = True
    return mask


def path_to(parents: tuple[int, ...] | list[int], node: int) -> list[int]:
    """Nodes from the root's child down to ``node`` (root excluded).

    >>> path_to([0, 0, 1], 3)
    [1, 3]
    >>> path_to([0, 0, 1], 0)
    []
    """
    path = []
    while node != 0:
        path.append(node)
        node = parents[node - 1]
    return path[::-1]


def children(parents: tuple[int, ...] | list[int]) -> list[list[int]]:
    """Child nodes of every node, in node order.

    >>> children([0, 0, 1])
    [[1, 2], [3], [], []]
    """
    out: list[list[int]] = [[] for _ in range(len(parents) + 1)]
    for i, p in enumerate(parents, start=1):
        if p >= 0:  # -1: a second root (see exact_layout)
            out[p].append(i)
    return out


def exact_layout(parents: tuple[int, ...] | list[int], start: int) -> tuple[list[int], tuple[int, ...]]:
    """Where to put a tree's nodes in a pass so each row is computed exactly as plain decoding computes it.

    Returns ``(nodes, slot_parents)``: ``nodes[s]`` is the node placed in slot
    s of the pass's keys (a node can have several slots; the pass computes each
    node once, and the cache repeats its keys and values in its later slots,
    :meth:`~quickdraft.cache.KVCache.spread`) and ``slot_parents`` the parent slot
    of each slot after the first (``-1``: no parent in the tree; the slot sees
    the cache only). Slots form a tree (a forest) in the format of this module.

    Why (measured on this CPU, bfloat16): the product of attention weights and
    values adds the keys in aligned pairs (key ``2i + 1`` then ``2i``, pair
    after pair; keys a row does not see add zero), so a row's sum is the same
    as in plain decoding exactly when the keys it sees fall into the same pairs
    in the same order. In plain decoding a token at depth d sits at position
    ``start + d``, so a node at an even position and its child share a pair.
    Hence each such node is directly followed by its child, in an aligned pair;
    for its second and later children a copy of the node (a copy computes the
    same as the original) is placed before each child. A node whose position is
    odd follows its parent. A leaf at an even position shares its pair with no
    key its row sees, so it can go anywhere after its parent: such leaves go
    last, which keeps every pair before them aligned. The first-child chain (a
    tree builder's most likely path) comes first; a chain is laid out as is.

    >>> exact_layout([0, 0, 1, 3], start=10)   # r -> a -> c -> d, r -> b; r at even position 10
    ([0, 1, 3, 4, 0, 2], (0, 1, 2, -1, 4))
    >>> exact_layout([0, 0, 1, 3], start=11)   # r at odd position 11: a and b pair with their children
    ([0, 1, 3, 4, 2], (0, 1, 2, 0))
    """
    if all(p == i for i, p in enumerate(parents)):  # a chain (every verify pass of a chain drafter): as is
        return list(range(len(parents) + 1)), tuple(parents)
    kids = children(parents)
    nodes: list[int] = [0]
    slot_parents: list[int] = []
    leaves: list[tuple[int, int]] = []  # (leaf at an even position, its parent's slot): placed last

    def place(node: int, parent_slot: int, depth: int) -> int:
        assert len(nodes) % 2 == depth % 2, "pairs stay aligned: a slot's parity is its node's depth's"
        nodes.append(node)
        slot_parents.append(parent_slot)
        return len(nodes) - 1

    stack = [[0, 0, 0, 0]]  # depth-first: [node, its slot, its depth, next child to place]
    while stack:
        top = stack[-1]
        node, slot, depth, i = top
        if i == len(kids[node]):
            stack.pop()
            continue
        top[3] += 1
        child = kids[node][i]
        if not kids[child] and (start + depth + 1) % 2 == 0:
            leaves.append((child, slot))
            continue
        parent_slot = slot
        if i and (start + depth) % 2 == 0:  # an even position is followed by its child: a copy per later child
            parent_slot = place(node, slot_parents[slot - 1] if slot else -1, depth)
        stack.append([child, place(child, parent_slot, depth + 1), depth + 1, 0])
    for leaf, parent_slot in leaves:
        nodes.append(leaf)
        slot_parents.append(parent_slot)
    return nodes, tuple(slot_parents)


def interleaved_layout(parents: tuple[int, ...] | list[int], start: int, *,
                       width: int = 4) -> tuple[list[int], tuple[int, ...]]:
    """:func:`exact_layout` for a product kernel that adds a row's keys in interleaved partial sums.

    The kernel (measured: ATen's own bfloat16 matrix product, which torch uses on
    x86 CPUs without AVX-512, ``width`` 4): the key at position p of a pass of N
    keys goes into partial sum ``p % width``, except the last ``N % width`` keys,
    which all go into the first partial sum; each partial sum adds its keys in
    position order, and the partial sums are added at the end. A key a row does
    not see adds an exact zero. So a row is computed as plain decoding computes
    it (a two-row pass: the node at ``start + depth``, one ignored key after it)
    exactly when each key it sees lands in the same partial sum, in the same
    order. In plain decoding a key lands in partial sum ``position % width``
    except the row's own last ``(position + 2) % width - 2`` keys, which the pass's
    tail sends into the first one (width 4: a node at a position ``= 1 (mod 4)``
    adds its own key into the first sum).

    Returns ``(nodes, slot_parents)`` in :func:`exact_layout`'s format. Each node
    is computed at its first slot, whose residue (``(start + slot) % width``) is
    where its row needs its own key; a node whose descendants need its key in
    another partial sum gets a second slot there (a copy: its keys repeated, not
    computed). Slots of node ``-1`` only pad to the wanted residues (a row that
    nobody sees), and the pass is padded to a multiple of ``width`` keys so that
    no key of the pass is in its tail. A chain is laid out too.

    >>> interleaved_layout([0, 1], start=8)     # positions 8, 9, 10: node 1 (9 = 1 mod 4) adds into sum 0
    ([0, -1, -1, -1, 1, 1, 2, -1], (-1, -1, -1, 0, 0, 5, -1))
    >>> interleaved_layout([0, 1], start=10)    # positions 10, 11, 12: no tail keys in plain decoding
    ([0, 1, 2, -1, -1, -1], (0, 1, -1, -1, -1))
    """
    kids = children(parents)
    node_depths = depths(parents)
    nodes: list[int] = []
    slot_parents: list[int] = []  # for slots 1..; slot 0's parent is implicit (none)

    def put(node: int, parent_slot: int, residue: int) -> int:
        while (start + len(nodes)) % width != residue:  # pad up to the wanted partial sum
            nodes.append(-1)
            slot_parents.append(-1)
        nodes.append(node)
        slot_parents.append(parent_slot)
        return len(nodes) - 1

    natural: dict[int, int] = {}  # node -> its slot in partial sum (start + depth) % width, seen by descendants
    stack = [0]
    while stack:  # depth-first, first child first (a tree builder's most likely path)
        node = stack.pop()
        position = start + node_depths[node]
        path = [0] + path_to(parents, node)
        moved = max(0, (position + 2) % width - 2)  # the row's own last keys that plain decoding adds into sum 0
        if moved:  # the row's own slots: its last `moved` path keys, each in sum 0 (copies of the ancestors)
            slot = natural[path[-moved - 1]] if len(path) > moved else -1
            for member in path[-moved:]:
                slot = put(member, slot, 0)
        if not moved or kids[node]:
            parent_slot = natural[path[-2]] if len(path) > 1 else -1
            natural[node] = put(node, parent_slot, position % width)
        stack.extend(reversed(kids[node]))
    while (start + len(nodes)) % width:
        nodes.append(-1)
        slot_parents.append(-1)
    return nodes, tuple(slot_parents[1:])


class TokenTrie:
    """Builds a draft tree from token sequences, sharing common prefixes.

    Sequences are continuations of the root (the last committed token). Each
    inserted sequence adds only the nodes it does not share; ``budget`` caps
    the node count, so insert the most promising sequences first.

    >>> trie = TokenTrie(budget=5)
    >>> trie.insert([4, 5, 6]); trie.insert([4, 7]); trie.insert([9, 9, 9])
    3
    1
    1
    >>> trie.tokens, trie.parents   # 4-5-6, 4-7, then 9 (the budget is spent)
    ([4, 5, 6, 7, 9], [0, 1, 2, 1, 0])
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self._child: dict[tuple[int, int], int] = {}  # (parent node, token) -> node

    def __len__(self) -> int:
        return len(self.tokens)

    def insert(self, sequence, parent: int = 0) -> int:
        """Add a token sequence under ``parent`` (default: the root); return how many nodes were new."""
        added = 0
        node = parent
        for token in sequence:
            token = int(token)
            child = self._child.get((node, token))
            if child is None:
                if len(self.tokens) >= self.budget:
                    break
                self.tokens.append(token)
                self.parents.append(node)
                child = len(self.tokens)
                self._child[(node, token)] = child
                added += 1
            node = child
        return added

    def child(self, node: int, token: int) -> int | None:
        """The node for ``token`` under ``node``, if present."""
        return self._child.get((node, int(token)))


@dataclass(frozen=True)
class SequencePlan:
    """A token tree as one llama.cpp batch: a row per node, each row in the KV-cache sequences of every leaf
    below it (a node sees exactly its ancestors: the cells it shares a sequence with), as llama.cpp's own
    tree speculation does.

    order: the nodes in batch order, depth first with children in node order (the root first), so a
        node's first child is the row right after it, and the first-child chain from the root (sequence
        0's branch) is rows 0, 1, 2, ...
    depth: each node's depth (its position is the root's position plus its depth), in node order.
    seqs: each node's sequence ids, in node order: leaves are numbered 0, 1, ... in batch order.
    leaves: the number of leaves (sequences used).
    """

    order: tuple[int, ...]
    depth: tuple[int, ...]
    seqs: tuple[tuple[int, ...], ...]
    leaves: int

    def contiguous(self, path: Sequence[int]) -> int:
        """How many nodes of an accepted path (root excluded) sit in the rows right after the root, in
        order: that part of the path keeps its cells in place; the rest must be computed again.

        >>> plan_sequences([0, 0, 1])              # root -> 1, 2; 1 -> 3: rows root, 1, 3, 2
        SequencePlan(order=(0, 1, 3, 2), depth=(0, 1, 1, 2), seqs=((0, 1), (0,), (1,), (0,)), leaves=2)
        >>> plan_sequences([0, 0, 1]).contiguous([1, 3]), plan_sequences([0, 0, 1]).contiguous([2])
        (2, 0)
        """
        row = {node: i for i, node in enumerate(self.order)}
        count = 0
        for i, node in enumerate(path, start=1):
            if row[node] != i:
                break
            count += 1
        return count


def plan_sequences(parents: Sequence[int] | None, n: int | None = None) -> SequencePlan:
    """The :class:`SequencePlan` of a tree (``parents``: one entry per node after the root; None: a chain
    of ``n`` draft nodes).

    >>> plan_sequences(None, 2)
    SequencePlan(order=(0, 1, 2), depth=(0, 1, 2), seqs=((0,), (0,), (0,)), leaves=1)
    >>> plan_sequences([0, 0, 0]).seqs          # three siblings: three sequences
    ((0, 1, 2), (0,), (1,), (2,))
    """
    if parents is None:
        parents = chain_parents(n or 0)
    kids = children(parents)
    order: list[int] = []
    stack = [0]
    while stack:  # depth first, children in node order
        node = stack.pop()
        order.append(node)
        stack.extend(reversed(kids[node]))
    leaf_seq: dict[int, int] = {}
    for node in order:
        if not kids[node]:
            leaf_seq[node] = len(leaf_seq)
    seqs: list[set[int]] = [set() for _ in kids]
    for leaf, seq in leaf_seq.items():
        node = leaf
        while True:
            seqs[node].add(seq)
            if node == 0:
                break
            node = parents[node - 1]
    return SequencePlan(order=tuple(order), depth=tuple(depths(parents)), seqs=tuple(tuple(sorted(s)) for s in seqs),
                        leaves=len(leaf_seq))


def first_branch(parents: Sequence[int]) -> list[int]:
    """The nodes (root excluded) of the chain that follows each node's first child from the root: a
    draft's best path when children are listed best first.

    >>> first_branch([0, 0, 1, 2])      # root -> 1, 2; 1 -> 3; 2 -> 4
    [1, 3]
    """
    kids = children(parents)
    out, node = [], 0
    while kids[node]:
        node = kids[node][0]
        out.append(node)
    return out


# How a pass lays out draft nodes so every row is computed as plain decoding computes it, by the product
# kernel's way of adding a row's keys (quickdraft.exactness finds which holds on this machine):
LAYOUTS = {
    "pairs": exact_layout,  # keys added in aligned pairs (oneDNN's bfloat16 product on AVX-512 CPUs)
    "interleaved4": partial(interleaved_layout, width=4),  # 4 interleaved partial sums (ATen's, AVX2 CPUs)
}
