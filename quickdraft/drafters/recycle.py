"""``recycle``: Token Recycling (Luo et al. 2024, "Turning Trash into Treasure").

Every verification pass computes the target's logits at every draft node, and
all but the accepted path's are normally thrown away. Token Recycling keeps
them: an adjacency matrix ``[V, k]`` holds, for every token, the top-k tokens
the target last predicted after it (at any node, accepted or not). A draft is
a tree grown breadth-first from the last committed token by a static template
of candidate ranks (wide near the root, narrow deeper down), reading each
node's children from the matrix row of its token.

Drafts are deterministic (one-hot for speculative sampling) and siblings are
always distinct tokens (a matrix row holds k distinct tokens). The matrix is
the drafter's only state beyond a few counters: ``V * k * 4`` bytes (1.5 MB
for SmolLM2's 49,152 tokens at k = 8). It persists across the requests of an
engine; :meth:`TokenRecycling.reset` keeps it.

The matrix starts empty, or (option ``prior``, as for ``ngram``: a datastore
directory, default ``shipped``, the one shipped for the model, ``none``) from
the successors seen most often after each token in a datastore
(:func:`successor_matrix`): for the embedded model, its own answers. Rows are
overwritten by the target's own top-k as soon as it is verified there.
"""

from __future__ import annotations

import heapq
from typing import Sequence

import numpy as np
import torch

from ..datastore import SEP, prior_datastore
from ..sizing import AdaptiveNodeBudget, adaptive_node_budget
from .base import Draft, DraftContext, Drafter, StepOutcome
from .registry import BuildContext, register

# Rough chance that the target's next token is the r-th candidate of a matrix
# row: the template is built from these (wide near the root, narrow deeper).
DEFAULT_RANK_PROBS = (0.40, 0.12, 0.06, 0.04, 0.03, 0.02, 0.015, 0.01)


def rank_template(rank_probs: Sequence[float], size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The static tree template: ``size`` nodes as (parents, ranks), best first.

    A node's score is the product of its path's rank probabilities; nodes are
    taken best-first, so every prefix of the template is the best template of
    its size (and a valid tree: a child never scores above its parent).
    ``ranks[i]`` is the matrix column node ``i + 1`` reads from its parent's row.

    >>> rank_template([0.5, 0.2], 4)  # 0.5, 0.25 (rank 0 under rank 0), 0.2, 0.125
    ((0, 1, 0, 2), (0, 0, 1, 0))
    """
    parents: list[int] = []
    ranks: list[int] = []
    counter = 0
    heap = []  # (-score, depth, order, parent node, rank)
    for rank, prob in enumerate(rank_probs):
        heap.append((-prob, 1, counter, 0, rank))
        counter += 1
    heapq.heapify(heap)
    while heap and len(parents) < size:
        neg_score, depth, _, parent, rank = heapq.heappop(heap)
        parents.append(parent)
        ranks.append(rank)
        node = len(parents)
        for child_rank, prob in enumerate(rank_probs):
            heapq.heappush(heap, (neg_score * prob, depth + 1, counter, node, child_rank))
            counter += 1
    return tuple(parents), tuple(ranks)


def expand_template(
    adjacency: np.ndarray, root: int, template: tuple[Sequence[int], Sequence[int]], *, max_depth: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Grow a draft tree from ``root`` along ``template``, reading tokens from the matrix.

    adjacency: [V, k] int, ``adjacency[t, r]`` = the r-th candidate after token
    t, or -1 when unknown. A template node whose parent was skipped, whose row
    entry is unknown, or that lies deeper than ``max_depth`` is skipped. The
    draft keeps the template's order, so its first m nodes are the draft of an
    m-node template. Returns (tokens, parents).

    >>> adj = np.array([[1, 2], [2, 0], [-1, -1]])
    >>> expand_template(adj, 0, ((0, 1, 0, 2), (0, 0, 1, 0)), max_depth=2)  # 0 -> 1 -> 2, 0 -> 2 (row 2 unknown)
    ((1, 2, 2), (0, 1, 0))
    """
    parents_t, ranks_t = template
    tokens: list[int] = []
    parents: list[int] = []
    node_of = {0: 0}  # template node -> draft node
    token_of = [root]  # draft node -> token
    depth_of = [0]
    for i, (parent, rank) in enumerate(zip(parents_t, ranks_t), start=1):
        node = node_of.get(parent)
        if node is None or depth_of[node] >= max_depth:
            continue
        token = int(adjacency[token_of[node], rank])
        if token < 0:
            continue
        tokens.append(token)
        parents.append(node)
        node_of[i] = len(tokens)
        token_of.append(token)
        depth_of.append(depth_of[node] + 1)
    return tuple(tokens), tuple(parents)


def successor_matrix(tokens: np.ndarray, vocab_size: int, k: int, separator: int = -1) -> np.ndarray:
    """[V, k] int32: the k tokens seen most often right after each token (most often first; ties: the
    smaller id), -1 where fewer were seen. tokens: [N] documents each ended by ``separator``.

    >>> successor_matrix(np.array([1, 2, 1, 3, 1, 2, -1, 2, 1]), vocab_size=4, k=2).tolist()
    [[-1, -1], [2, 3], [1, -1], [1, -1]]
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    first, then = tokens[:-1], tokens[1:]
    keep = (first != separator) & (then != separator) & (first < vocab_size) & (then < vocab_size)
    pairs, counts = np.unique(first[keep] * vocab_size + then[keep], return_counts=True)
    rows, successors = pairs // vocab_size, pairs % vocab_size
    order = np.lexsort((successors, -counts, rows))  # by row, then most frequent, then smaller id
    rows, successors = rows[order], successors[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows)  # position within the row
    out = np.full((vocab_size, k), -1, dtype=np.int32)
    top = rank < k
    out[rows[top], rank[top]] = successors[top]
    return out


def update_adjacency(adjacency: torch.Tensor, node_tokens: Sequence[int], target_logits: torch.Tensor,
                     path: Sequence[int]) -> None:
    """Write the target's top-k after every node's token into its matrix row (in place).

    adjacency: [V, k] int32; node_tokens: the n + 1 tokens at the root and
    every node; target_logits: [n + 1, V]. When a token sits at several nodes,
    the root and the accepted path win (their context is the committed one),
    then the later node.
    """
    k = adjacency.shape[1]
    assert target_logits.shape[0] == len(node_tokens), "one logits row per node"
    top = torch.topk(target_logits, k, dim=-1).indices.to(adjacency.device, adjacency.dtype)  # [n + 1, k]
    on_path = set(path) | {0}
    order = [i for i in range(len(node_tokens)) if i not in on_path] + [0, *path]  # last write wins
    tokens = np.asarray(node_tokens, dtype=np.int64)[order]
    inside = tokens < adjacency.shape[0]  # ids beyond the output vocabulary have no row
    tokens, order = tokens[inside], np.asarray(order)[inside]
    # keep the last occurrence of each token: unique over the reversed order
    unique, first_in_reversed = np.unique(tokens[::-1], return_index=True)
    rows = order[::-1][first_in_reversed]
    adjacency[torch.from_numpy(unique)] = top[torch.from_numpy(rows)]


class RankHits:
    """How often the target's next token was the r-th candidate of a known matrix row.

    Starts from ``prior`` as if seen ``weight`` times; :meth:`probs` feeds
    :func:`rank_template`, so the template follows the text and the model
    (deeper when the top candidate is usually right).

    >>> hits = RankHits([0.5, 0.1], weight=10)
    >>> hits.add(np.array([7, 3]), 7); hits.add(np.array([7, 3]), 9); hits.add(np.array([-1, -1]), 7)
    >>> [round(p, 3) for p in hits.probs()]
    [0.5, 0.083]
    """

    def __init__(self, prior: Sequence[float], *, weight: float = 50.0) -> None:
        self.hits = np.asarray(prior, dtype=np.float64) * weight
        self.lookups = float(weight)

    def add(self, row: np.ndarray, token: int) -> None:
        if row[0] < 0:  # an unknown row drafted nothing
            return
        self.lookups += 1.0
        rank = np.flatnonzero(row == token)
        if rank.size:
            self.hits[rank[0]] += 1.0

    def probs(self, floor: float = 1e-4) -> list[float]:
        return np.maximum(self.hits / self.lookups, floor).tolist()


class TokenRecycling(Drafter):
    """Token Recycling: a tree from the matrix of the target's recycled top-k guesses.

    vocab_size: rows of the matrix (the target's output vocabulary).
    topk: candidates kept per token (matrix columns) and the template's widest fan-out.
    nodes: a fixed node budget; None lets ``budget`` (an :class:`AdaptiveNodeBudget`) choose per step.
    adapt: re-derive the template from observed rank hit rates (:class:`RankHits`)
        every ``refresh`` steps; False keeps the static template of ``rank_probs``.
    """

    def __init__(self, vocab_size: int, *, topk: int = 8, nodes: int | None = None,
                 budget: AdaptiveNodeBudget | None = None, rank_probs: Sequence[float] = DEFAULT_RANK_PROBS,
                 max_depth: int = 16, adapt: bool = True, refresh: int = 32) -> None:
        if topk < 1:
            raise ValueError(f"topk must be at least 1, got {topk}")
        if nodes is not None and nodes < 1:
            raise ValueError(f"nodes must be at least 1, got {nodes}")
        self.adjacency = torch.full((vocab_size, topk), -1, dtype=torch.int32)  # [V, k], -1 = unknown
        self._rows = self.adjacency.numpy()  # the same memory, for cheap scalar reads
        self.nodes = nodes
        self.budget = budget if nodes is None else None
        self._max_nodes = nodes or (max(budget.candidates) if budget else 16)
        probs = list(rank_probs)[:topk] + [min(rank_probs)] * max(0, topk - len(rank_probs))
        self.template = rank_template(probs, self._max_nodes)
        self.ranks = RankHits(probs) if adapt else None
        self.refresh = refresh
        self._steps = 0
        self.max_depth = max_depth
        self._root: int | None = None
        self._used: int = 0  # the node budget of the pending draft

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the adjacency matrix."""
        return self.adjacency.element_size() * self.adjacency.nelement()

    def stats(self) -> dict:
        known = int((self.adjacency[:, 0] >= 0).sum())
        out = {"memory_bytes": self.memory_bytes, "rows_known": known, "rows": self.adjacency.shape[0],
               "node_budget": self.nodes if self.budget is None else self.budget.choice()}
        if self.ranks is not None:
            out["rank_probs"] = [round(p, 3) for p in self.ranks.probs()]
        return out

    def propose(self, context: DraftContext) -> Draft:
        size = self.nodes if self.budget is None else self.budget.next_budget(len(context.tokens))
        if context.nodes is not None:
            size = min(size, context.nodes)
        size = min(size, len(self.template[0]))
        self._root = int(context.tokens[-1])
        self._used = size
        if size <= 0 or context.budget <= 0 or self._root >= self.adjacency.shape[0]:
            return Draft()
        template = (self.template[0][:size], self.template[1][:size])
        tokens, parents = expand_template(self._rows, self._root, template,
                                          max_depth=min(self.max_depth, context.budget))
        return Draft(tokens=tokens, parents=parents)

    def observe(self, outcome: StepOutcome) -> None:
        if self._root is None:
            return
        node_tokens = [self._root, *outcome.draft.tokens]
        if self.ranks is not None:
            # where the next token ranked in each row we drafted along the path (before the update)
            for node, token in zip((0, *outcome.path), outcome.tokens):
                if node_tokens[node] < self.adjacency.shape[0]:
                    self.ranks.add(self._rows[node_tokens[node]], token)
            self._steps += 1
            if self._steps % self.refresh == 0:
                self.template = rank_template(self.ranks.probs(), self._max_nodes)
        update_adjacency(self.adjacency, node_tokens, outcome.target_logits, outcome.path)
        if self.budget is not None and len(outcome.draft):  # with nothing drafted, the budget did not matter
            self.budget.record(self._used, outcome.path)
        self._root = None

    def reset(self) -> None:
        self._root = None  # the matrix and the budget statistics carry over to the next request


@register("recycle", order=3, source={"learns": True, "sees_all": True, "default": ("trees",)},
          description="token recycling: a tree from a [V, 8] matrix of the target's own earlier top-8 guesses")
def build(ctx: BuildContext) -> Drafter:
    opts = ctx.pick("topk", "nodes", "max_depth", "adapt")
    budget = None if opts.get("nodes") else adaptive_node_budget(ctx.target)
    if budget is None and not opts.get("nodes"):
        opts["nodes"] = 16
    drafter = TokenRecycling(int(ctx.target.vocab_size), budget=budget, **opts)
    datastore = prior_datastore(ctx.target, ctx.options.get("prior"))
    if datastore is not None:
        rows, k = drafter.adjacency.shape
        drafter.adjacency.copy_(torch.from_numpy(successor_matrix(datastore.index.tokens, rows, k, SEP)))
    return drafter


__all__ = ["RankHits", "TokenRecycling", "expand_template", "rank_template", "successor_matrix",
           "update_adjacency"]
