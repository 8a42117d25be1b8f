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
