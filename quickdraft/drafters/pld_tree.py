"""``pld-tree``: prompt lookup with several continuations merged into one tree.

Chain ``pld`` copies what followed the most recent earlier occurrence of the
context's longest matching suffix n-gram. When that text occurred several
times with different continuations, one chain bets on one of them; a tree can
carry them all for little extra verification cost where wide passes are cheap.

The first continuation inserted is exactly chain ``pld``'s (longest n, most
recent occurrence), so under greedy decoding the tree accepts at least what the
chain would with the same length. A separate name keeps chain ``pld`` (and its
measurements) as it was; drafts are deterministic, siblings distinct (a trie).
"""

from __future__ import annotations

import numpy as np

from ..sizing import AdaptiveNodeBudget, adaptive_node_budget
from ..tree import TokenTrie
from .base import Draft, DraftContext, Drafter, StepOutcome
from .registry import BuildContext, register


def find_continuations(tokens: np.ndarray, *, min_n: int, max_n: int, k: int, limit: int) -> list[np.ndarray]:
    """Distinct continuations of earlier occurrences of the context's suffix n-grams, best first.

    Suffix lengths go from ``max_n`` down to ``min_n``; within one length the
    most recent occurrence comes first. Each continuation is up to ``k`` tokens;
    repeats of an earlier continuation are skipped; at most ``limit`` are returned.
    The first one is what :func:`~quickdraft.drafters.pld.find_continuation` returns.

    tokens: [T] int token ids.

    >>> ctx = np.array([1, 2, 7, 1, 2, 8, 3, 2, 9, 1, 2])
    >>> [c.tolist() for c in find_continuations(ctx, min_n=1, max_n=2, k=2, limit=5)]
    [[8, 3], [7, 1], [9, 1]]
    """
    total = len(tokens)
    found: list[np.ndarray] = []
    seen: set[tuple[int, ...]] = set()
    if k <= 0 or limit <= 0:
        return found
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        if n <= 0:
            break
        suffix = tokens[total - n:]
        windows = np.lib.stride_tricks.sliding_window_view(tokens[: total - 1], n)  # [total - n, n]
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        for hit in hits[::-1]:
            start = int(hit) + n
            continuation = np.asarray(tokens[start: start + k], dtype=np.int64)
            key = tuple(continuation.tolist())
            if not key or key in seen:
                continue
            seen.add(key)
            found.append(continuation)
            if len(found) >= limit:
                return found
    return found


class PromptLookupTree(Drafter):
    """Prompt lookup drafting several continuations at once, merged into a trie.

    k: tokens per continuation (depth); limit: continuations considered;
    nodes: a fixed node budget, else ``budget`` chooses per step.
    """

    def __init__(self, *, min_n: int = 1, max_n: int = 3, k: int = 10, limit: int = 8, nodes: int | None = None,
                 budget: AdaptiveNodeBudget | None = None) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        if nodes is not None and nodes < 1:
            raise ValueError(f"nodes must be at least 1, got {nodes}")
        self.min_n, self.max_n, self.k, self.limit = min_n, max_n, k, limit
        self.nodes = nodes if nodes is not None or budget is not None else 32
        self.budget = budget if nodes is None else None
        self._used = 0

    def propose(self, context: DraftContext) -> Draft:
        size = self.nodes if self.budget is None else self.budget.next_budget(len(context.tokens))
        if context.nodes is not None:
            size = min(size, context.nodes)
        self._used = size
        depth = min(self.k, context.budget)
        found = find_continuations(context.tokens, min_n=self.min_n, max_n=self.max_n, k=depth, limit=self.limit)
        trie = TokenTrie(budget=size)
        for continuation in found:
            trie.insert(continuation)
            if len(trie) >= size:
                break
        return Draft(tokens=tuple(trie.tokens), parents=tuple(trie.parents))

    def observe(self, outcome: StepOutcome) -> None:
        if self.budget is not None and len(outcome.draft):
            self.budget.record(self._used, outcome.path)


@register("pld-tree", order=2,
          source={"options": {"k": 24, "limit": 8}, "signal": True, "default": ("trees", "chains")},
          description="prompt lookup as a tree: distinct continuations of matching n-grams merged into one trie")
def build(ctx: BuildContext) -> Drafter:
    opts = ctx.pick("min_n", "max_n", "k", "limit", "nodes")
    budget = None if opts.get("nodes") else adaptive_node_budget(ctx.target)
    return PromptLookupTree(budget=budget, **opts)
