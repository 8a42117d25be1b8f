"""Draft trees as parent arrays: depths, ancestor masks, paths (pure functions).

Nodes are numbered 0..n: node 0 is the root (the last committed token, fed to
the model but not yet in the KV cache) and node ``i >= 1`` is draft token
``i - 1``. ``parents[i - 1]`` is the parent node of node ``i``; parents always
precede their children. A chain of k tokens has ``parents = [0, 1, ..., k-1]``.

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
        out.append(out[p] + 1)
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
        out[p].append(i)
    return out


def first_child_order(parents: tuple[int, ...] | list[int]) -> list[int]:
    """Nodes in depth-first preorder, children in node order: ``order[i]`` is the node placed i-th.

    The chain of first children (a tree builder's most likely path) then sits
    in consecutive positions right after the root, as in plain decoding.

    >>> first_child_order([0, 0, 1, 3])   # r -> a -> c -> d, r -> b
    [0, 1, 3, 4, 2]
    """
    kids = children(parents)
    order: list[int] = []
    stack = [0]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(reversed(kids[node]))
    return order


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
