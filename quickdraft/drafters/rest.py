"""``rest``: retrieval-based drafting (He et al. 2024, "REST: Retrieval-Based Speculative Decoding").

At each step the longest suffix of the context (up to ``max_len`` tokens)
that occurs in a datastore (:mod:`quickdraft.datastore`, a suffix array over
a tokenized corpus) is looked up; the tokens that followed its occurrences
are merged into a draft tree, most frequent prefixes first
(:func:`retrieval_tree`). Build a datastore with
``quickdraft index build CORPUS... --out DIR`` (or ``--answers DATA``: the
model's own answers to a prompt set) and select it with ``--datastore DIR``
(option ``datastore``); without one, the datastore shipped for the model (the
embedded model's answers to ``selfinstruct``) is used, if there is one.
"""

from __future__ import annotations

import numpy as np

from ..datastore import SEP, Datastore, shipped_datastore
from ..errors import QuickdraftError
from ..sizing import AdaptiveNodeBudget, adaptive_node_budget
from ..tree import TokenTrie
from .base import Draft, DraftContext, Drafter, StepOutcome
from .registry import BuildContext, register

DEFAULT_NODES = 24  # draft nodes per step for a target that cannot be profiled


def retrieval_tree(continuations: np.ndarray, nodes: int) -> tuple[list[int], list[int]]:
    """Merge retrieved continuations into a tree of the ``nodes`` most frequent prefixes.

    continuations: [m, d] token ids, each row cut at the first SEP (the rest SEP).
    Every prefix (length 1..d, no SEP) is counted over the rows; the most
    frequent are kept (ties: shorter, then the lexicographically smaller), so a
    kept prefix's parent is always kept too. Returns (tokens, parents) as in
    :mod:`quickdraft.tree`, in that order.

    >>> rows = np.array([[1, 2, 3], [1, 2, 4], [1, 5, -1], [7, 8, 9]])
    >>> retrieval_tree(rows, nodes=4)   # 1 (x3), 1-2 (x2), then the count-1 prefixes: 7, then 1-5
    ([1, 2, 7, 5], [0, 1, 0, 1])
    """
    if continuations.ndim != 2:
        raise ValueError(f"continuations must be [m, d], got shape {continuations.shape}")
    m, d = continuations.shape
    if m == 0 or d == 0 or nodes <= 0:
        return [], []
    rows = continuations[np.lexsort(continuations.T[::-1])]  # equal prefixes become contiguous
    differs = rows[1:] != rows[:-1]  # [m - 1, d]
    first_diff = np.where(differs.any(axis=1), differs.argmax(axis=1), d)  # [m - 1]
    counts, depth_of, row_of = [], [], []
    for k in range(d):  # prefixes of length k + 1
        start = np.ones(m, dtype=bool)
        start[1:] = first_diff <= k
        starts = np.flatnonzero(start)
        sizes = np.diff(np.append(starts, m))
        valid = rows[starts, k] != SEP
        counts.append(sizes[valid])
        depth_of.append(np.full(int(valid.sum()), k))
        row_of.append(starts[valid])
    count, depth, row = np.concatenate(counts), np.concatenate(depth_of), np.concatenate(row_of)
    order = np.lexsort((row, depth, -count))[:nodes]  # most frequent, then shallower, then sorted order
    trie = TokenTrie(budget=nodes)
    for i in order:
        trie.insert(rows[row[i], : depth[i] + 1])
    return trie.tokens, trie.parents


class RestDrafter(Drafter):
    """Drafts the continuations of the longest context suffix found in a datastore.

    max_len: the longest suffix tried; min_len: the shortest that counts as a
    match; depth: the longest continuation; limit: the most occurrences
    counted (spread evenly over all of them); nodes: a fixed node budget, else
    ``budget`` (an :class:`AdaptiveNodeBudget`) chooses per step, else
    DEFAULT_NODES. Trees are built most frequent prefix first, so the first m
    nodes are the tree made with m, as the adaptive budget assumes.
    """

    def __init__(self, datastore: Datastore, *, nodes: int | None = None, budget: AdaptiveNodeBudget | None = None,
                 max_len: int = 16, min_len: int = 1, depth: int = 8, limit: int = 256,
                 vocab_size: int | None = None) -> None:
        if not 1 <= min_len <= max_len or (nodes is not None and nodes < 1) or depth < 1 or limit < 1:
            raise ValueError("need 1 <= min_len <= max_len, nodes >= 1, depth >= 1, limit >= 1")
        self.datastore = datastore
        self.budget = budget if nodes is None else None
        self.nodes = nodes if nodes is not None or budget is not None else DEFAULT_NODES
        self.max_len, self.min_len, self.depth, self.limit = max_len, min_len, depth, limit
        self.vocab_size = vocab_size
        self._used = 0  # the node budget of the pending draft

    def propose(self, context: DraftContext) -> Draft:
        size = self.nodes if self.budget is None else self.budget.next_budget(len(context.tokens))
        if context.nodes is not None:
            size = min(size, context.nodes)
        self._used = size
        depth = min(self.depth, context.budget)
        if depth <= 0 or size <= 0:
            return Draft()
        index = self.datastore.index
        n, lo, hi = index.longest_match(context.tokens, max_len=self.max_len, min_len=self.min_len)
        if n == 0:
            return Draft()
        rows = index.continuations(lo, hi, n, depth, limit=self.limit)
        if self.vocab_size is not None:  # never feed the model an id it has no embedding for
            bad = np.cumsum(rows >= self.vocab_size, axis=1) > 0
            rows[bad] = SEP
        tokens, parents = retrieval_tree(rows, size)
        return Draft(tokens=tuple(tokens), parents=tuple(parents))

    def observe(self, outcome: StepOutcome) -> None:
        if self.budget is not None and len(outcome.draft):
            self.budget.record(self._used, outcome.path)


@register("rest", order=6,
          # with a datastore given (not the shipped one by default: the model's own answers are in ngram's prior
          # already; measured, auto 1.580x with it as a source too, 1.555x without: noise)
          source={"needs": "datastore"},
          description="retrieval (REST): continuations of the longest context suffix in a datastore, as a tree")
def build(ctx: BuildContext) -> Drafter:
    path = ctx.options.get("datastore") or shipped_datastore(ctx.target.name)
    if not path:
        raise QuickdraftError(f"method 'rest' needs a datastore (none is shipped for model {ctx.target.name}): "
                              "build one with `quickdraft index build CORPUS... --out DIR` (or --answers "
                              "selfinstruct: the model's own answers) and pass --datastore DIR")
    datastore = Datastore.open(path, tokenizer=ctx.target.tokenizer, model_name=ctx.target.name)
    options = ctx.pick("nodes", "max_len", "min_len", "depth", "limit")
    budget = None if options.get("nodes") else adaptive_node_budget(ctx.target)
    return RestDrafter(datastore, budget=budget, vocab_size=ctx.target.vocab_size, **options)


__all__ = ["RestDrafter", "retrieval_tree"]
