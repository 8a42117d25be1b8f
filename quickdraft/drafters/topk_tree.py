"""Sparse draft trees from per-depth top-k guesses (pure functions), and the drafter base that proposes them.

Learned drafters (``ppd``, ``heads``) predict, for each of the next few
positions, a distribution over tokens, without conditioning on the guesses
for the earlier positions. The best tree for a node budget then takes the
node paths with the highest estimated probability of being accepted, the
product of the guessed probabilities along the path (as in Medusa's and PPD's
sparse trees). Because probabilities are at most 1, a path's score never
exceeds its prefix's, so taking nodes best-first always keeps a node's parent.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch

from ..sizing import AdaptiveNodeBudget
from .base import EMPTY_DRAFT, Draft, DraftContext, Drafter, StepOutcome


@dataclass(frozen=True)
class Guesses:
    """Top-k guesses for the tokens at depths 1..D below the root.

    tokens: [D, k] token ids, best first; probs: [D, k] their estimated probabilities.
    """

    tokens: torch.Tensor
    probs: torch.Tensor

    def __post_init__(self) -> None:
        assert self.tokens.shape == self.probs.shape and self.tokens.dim() == 2, "tokens and probs must be [D, k]"

    @property
    def depth(self) -> int:
        return int(self.tokens.shape[0])

    @staticmethod
    def from_logits(logits: torch.Tensor, k: int) -> Guesses:
        """logits: [D, V] -> the top-k tokens per depth with their softmax probabilities."""
        probs, tokens = torch.softmax(logits.float(), dim=-1).topk(min(k, logits.shape[-1]), dim=-1)
        return Guesses(tokens=tokens, probs=probs)


@dataclass(frozen=True)
class ScoredTree:
    """A draft tree (see :mod:`quickdraft.tree`) with each node's estimated probability of acceptance.

    scores: n + 1 entries, node 0 (the root) first with score 1.
    branch: n entries, the estimated probability of each node given its parent.
    """

    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    scores: tuple[float, ...]
    branch: tuple[float, ...]


def best_first_tree(guesses: Guesses, budget: int, max_depth: int | None = None) -> ScoredTree:
    """The ``budget`` tree nodes with the highest path probability.

    A node at depth d whose path ranks are (r1, ..., rd) has score
    ``probs[0, r1] * ... * probs[d-1, rd]``. Candidates are enumerated lazily:
    taking a node offers its next sibling and its first child.

    >>> g = Guesses(tokens=torch.tensor([[5, 6], [7, 8]]), probs=torch.tensor([[0.9, 0.1], [0.5, 0.4]]))
    >>> t = best_first_tree(g, budget=3)
    >>> t.tokens, t.parents        # 5 (0.9), 5-7 (0.45), 5-8 (0.36); 6 (0.1) misses the budget
    ((5, 7, 8), (0, 1, 1))
    """
    depth_limit = guesses.depth if max_depth is None else min(guesses.depth, max_depth)
    k = guesses.tokens.shape[1] if guesses.depth else 0
    if budget <= 0 or depth_limit <= 0 or k == 0:
        return ScoredTree((), (), (1.0,), ())
    probs = guesses.probs.tolist()
    tokens_at = guesses.tokens.tolist()
    out_tokens: list[int] = []
    out_parents: list[int] = []
    scores = [1.0]
    branch: list[float] = []
    # heap entries: (-score, tie-breaker, depth index, rank, parent node)
    heap = [(-probs[0][0], 0, 0, 0, 0)]
    counter = 1
    while heap and len(out_tokens) < budget:
        neg, _, d, r, parent = heapq.heappop(heap)
        out_tokens.append(int(tokens_at[d][r]))
        out_parents.append(parent)
        scores.append(-neg)
        branch.append(probs[d][r])
        node = len(out_tokens)
        if r + 1 < k:
            heapq.heappush(heap, (-scores[parent] * probs[d][r + 1], counter, d, r + 1, parent))
            counter += 1
        if d + 1 < depth_limit:
            heapq.heappush(heap, (-scores[node] * probs[d + 1][0], counter, d + 1, 0, node))
            counter += 1
    return ScoredTree(tuple(out_tokens), tuple(out_parents), tuple(scores), tuple(branch))


def end_probabilities(tree: ScoredTree) -> list[float]:
    """For every node (root first), the estimated probability that acceptance stops exactly there.

    That is the probability of reaching the node times the probability that
    none of its children in the tree is accepted:
    ``scores[a] * (1 - sum(branch[c] for c in children(a)))``.

    >>> t = ScoredTree(tokens=(5, 7), parents=(0, 1), scores=(1.0, 0.9, 0.45), branch=(0.9, 0.5))
    >>> [round(p, 3) for p in end_probabilities(t)]
    [0.1, 0.45, 0.45]
    """
    rest = [1.0] * len(tree.scores)
    for node, (parent, p) in enumerate(zip(tree.parents, tree.branch), start=1):
        rest[parent] -= p
    return [s * max(r, 0.0) for s, r in zip(tree.scores, rest)]


class GuessTreeDrafter(Drafter):
    """Proposes the best-first tree over the guesses a subclass made when it observed the last step.

    nodes: a fixed tree size, else ``budget`` (an :class:`AdaptiveNodeBudget`,
    hardware-aware) picks it per step; the best-first tree lists nodes in
    priority order, as that budget's statistics assume. A subclass sets
    ``self._guesses`` in ``observe`` (after calling :meth:`record`).
    """

    def __init__(self, *, nodes: int | None, budget: AdaptiveNodeBudget | None) -> None:
        self.nodes = nodes
        self.budget = budget if nodes is None else None
        self._guesses: Guesses | None = None
        self._size = 0

    def reset(self) -> None:
        self._guesses = None
        self._size = 0

    def propose(self, context: DraftContext) -> Draft:
        if not self._ready() or context.budget <= 0:
            self._size = 0
            return EMPTY_DRAFT
        size = self.nodes if self.budget is None else self.budget.next_budget(len(context.tokens))
        self._size = size if context.nodes is None else min(size, context.nodes)
        tokens, parents = self._tree(self._size, context.budget)
        return Draft(tokens=tokens, parents=parents)

    def _ready(self) -> bool:
        """Whether it has guesses for this step."""
        return self._guesses is not None

    def _tree(self, size: int, max_depth: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(tokens, parents) of the best tree of at most ``size`` nodes, ``max_depth`` deep, in priority order."""
        tree = best_first_tree(self._guesses, size, max_depth=max_depth)
        return tree.tokens, tree.parents

    def record(self, outcome: StepOutcome) -> None:
        """Tell the node budget what the proposed tree got accepted."""
        if self.budget is not None and self._size:
            self.budget.record(self._size, outcome.path)
