"""Drafting with a language model: chains of adaptive or fixed length, or dynamic trees.

Shared by ``draft`` (a separate draft model), ``swift`` and ``early-exit``
(the target model with fewer layers). What differs between them is only the
:class:`~quickdraft.drafters.lm.DraftLM` and its relative cost.

Chains. Under greedy decoding the draft token is the draft model's argmax;
under sampling it is drawn from the draft's distribution shaped by the
request's temperature, top-k and top-p, and that distribution goes to the
verifier as ``draft_probs`` (exact speculative sampling). The length is
either fixed (option ``k``) or adaptive (:mod:`.adaptive`): the decision to
draft token i+1 uses only what is known before it is drawn, so it never
biases sampling.

Trees (option ``tree=True``; the ``draft-tree`` method), EAGLE-2 / DySpec
style: from the root, the ``width`` most probable tokens become children;
each further level expands the ``width`` nodes of highest *value* (one
batched draft pass per level, with a tree attention mask over the draft's own
cache), and at the end the ``nodes`` best nodes overall are kept, listed best
first, so the first m nodes are the tree a budget of m would have kept. A
node's value is its cumulative draft probability calibrated by the running
acceptance per sibling rank (before any evidence: the cumulative draft
probability itself, up to binning); it never exceeds its parent's, so the
kept set is a tree. The node budget is the option ``nodes`` or, by default,
chosen per step from the machine's verify-latency profile and the running
acceptance (:class:`~quickdraft.sizing.AdaptiveNodeBudget`). The tree is a
deterministic function of the context, so under sampling it is verified as a
deterministic multi-draft (one-hot draft distributions, ``draft_probs=None``),
which is exact whatever the shape.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import torch

from ..sizing import AdaptiveNodeBudget
from ..sampling import Draws, SamplingParams, argmax_rows, sample, target_probs
from ..sizing import AcceptanceModel, keep_drafting
from .base import EMPTY_DRAFT, Draft, DraftContext, Drafter, StepOutcome
from .lm import DraftLM, DraftSession, causal_allowed

GREEDY = SamplingParams()


class VocabMap:
    """Token ids between the target's vocabulary and the draft's.

    to_draft: [V_target] int64, the draft id of each target id (-1: the draft
    lacks it). None means identical vocabularies (the identity, no copying).

    >>> m = VocabMap(np.array([0, 2, -1]), draft_vocab=3)
    >>> m.draft_ids(np.array([0, 1, 2]), fallback=0).tolist()     # target 2 has no draft twin
    [0, 2, 0]
    >>> m.target_logits(torch.tensor([1.0, 2.0, 3.0])).tolist()  # target-space logits
    [1.0, 3.0, -inf]
    """

    def __init__(self, to_draft: np.ndarray | None, draft_vocab: int) -> None:
        self.to_draft = to_draft
        self.draft_vocab = draft_vocab
        if to_draft is not None:
            index = torch.as_tensor(to_draft, dtype=torch.long)
            self._index = index.clamp(min=0)  # [V_target]
            self._missing = index < 0  # [V_target]

    @property
    def identity(self) -> bool:
        return self.to_draft is None

    def draft_ids(self, tokens: np.ndarray, fallback: int) -> np.ndarray:
        """Target token ids [T] -> draft ids [T] (``fallback`` where the draft has none)."""
        if self.to_draft is None:
            return tokens
        ids = self.to_draft[tokens]
        return np.where(ids < 0, fallback, ids)

    def target_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Draft logits [V_draft] -> logits over the target vocabulary [V_target] (-inf where missing)."""
        if self.to_draft is None:
            return logits
        out = logits[self._index.to(logits.device)]
        return out.masked_fill(self._missing.to(logits.device), float("-inf"))


@dataclass(frozen=True)
class TreeShape:
    """Dynamic-tree limits: children per expanded node and nodes expanded per level, levels, nodes kept."""

    width: int = 4
    depth: int = 6
    nodes: int = 16

    def __post_init__(self) -> None:
        if self.width < 1 or self.depth < 1 or self.nodes < 1:
            raise ValueError(f"tree width, depth and nodes must be >= 1, got {self}")


def draft_distribution(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The draft's distribution at one position: logits [V] -> probs [V] float32.

    Shaped like the target's (temperature, top-k, top-p) under sampling; the
    plain softmax under greedy (then only its top value, the confidence, is used).
    """
    if params.greedy:
        return torch.softmax(logits.float(), dim=-1)
    return target_probs(logits[None], params)[0]


def select_tree(scores: list[float], parents: list[int], keep: int) -> list[int]:
    """The ``keep`` best nodes (1-based) by score, closed under ancestors, best first.

    scores[i - 1] and parents[i - 1] belong to node i; a child's score never
    exceeds its parent's (scores are products of factors <= 1 along the path),
    and ties keep the earlier (ancestor) node.

    Best first is also parents first: a parent scores at least as high as its
    child and wins ties by its smaller number.

    >>> select_tree([0.6, 0.3, 0.5, 0.1], [0, 0, 1, 1], keep=3)
    [1, 3, 2]
    """
    order = sorted(range(1, len(scores) + 1), key=lambda i: (-scores[i - 1], i))[:keep]
    chosen = set(order)
    for node in order:
        p = parents[node - 1]
        assert p == 0 or p in chosen, "a child never outscores its parent"
    return order


class Backoff:
    """When to skip a draft pass after the stop rule declined to draft: exponential backoff.

    After ``d`` declines in a row the next ``min(2^(d-1), cap)`` proposals skip
    the draft model altogether; then one probe runs it again (its cache catches
    up in one batched pass) and lets the stop rule decide with what it learned.
    A draft that is made resets the backoff.

    >>> b = Backoff(cap=4)
    >>> b.record(declined=True)
    >>> [b.skip() for _ in range(2)]
    [True, False]
    >>> b.record(declined=True)
    >>> [b.skip() for _ in range(3)]
    [True, True, False]
    >>> b.record(declined=False); b.skip()
    False
    """

    def __init__(self, cap: int = 32) -> None:
        self.cap = cap
        self.declines = 0  # in a row
        self.left = 0  # proposals still to skip

    def skip(self) -> bool:
        if self.left > 0:
            self.left -= 1
            return True
        return False

    def record(self, *, declined: bool) -> None:
        self.declines = self.declines + 1 if declined else 0
        self.left = min(2 ** (self.declines - 1), self.cap) if declined else 0


class ModelDrafter(Drafter):
    """Drafts with a :class:`DraftLM` whose cache follows the committed tokens.

    lm: the draft language model. vocab: the map from target to draft ids.
    cost: one draft pass in target passes (the adaptive stop rule's price).
    k: fixed draft length (None: adaptive, at most ``max_k``).
    tree: a :class:`TreeShape` for dynamic trees (None: chains).
    fallback_id: the draft id fed for a target token the draft's vocabulary lacks.
    node_budget: for trees, chooses the node count per step (then ``tree.nodes`` is ignored).
    """

    def __init__(self, lm: DraftLM, *, vocab: VocabMap | None = None, cost: float = 0.5, k: int | None = None,
                 max_k: int = 8, tree: TreeShape | None = None, fallback_id: int = 0,
                 node_budget: AdaptiveNodeBudget | None = None) -> None:
        if k is not None and k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if max_k < 1:
            raise ValueError(f"max_k must be >= 1, got {max_k}")
        if not cost > 0:
            raise ValueError(f"cost must be > 0, got {cost}")
        self.vocab = vocab or VocabMap(None, lm.vocab_size)
        self.k, self.max_k, self.tree, self.fallback_id = k, max_k, tree, fallback_id
        self.node_budget = node_budget if tree is not None else None
        self._nodes_used = 0
        self.acceptance = AcceptanceModel()  # chains, and the most probable child in trees
        self.sibling_acceptance: dict[int, AcceptanceModel] = {}  # trees: the child ranked r >= 1 by its parent
        self.use(lm, cost)
        self._draws: Draws | None = None  # sampling: the draft's own draws, keyed by token position
        self._last: tuple[Draft, list[float], list[int]] | None = None  # last draft, node confidences, ranks
        self._backoff = Backoff()

    def use(self, lm: DraftLM, cost: float) -> None:
        """Draft with ``lm`` from now on (a fresh cache)."""
        self.lm, self.cost = lm, cost
        self.session = DraftSession(lm)

    def reset(self) -> None:
        # The session's cache stays: it is keyed by token ids, so a new prompt
        # reuses what it shares with the last one and drops the rest.
        self._draws = None
        self._last = None
        self._backoff.left = 0  # a new request starts with a probe

    # ------------------------------------------------------------- propose

    def propose(self, context: DraftContext) -> Draft:
        params = context.params or GREEDY
        limit = min(context.budget, self.max_k if self.k is None else self.k)
        if limit <= 0:
            return EMPTY_DRAFT
        if self.k is None and self.tree is None and self._backoff.skip():
            # The chain rule declined lately: do not pay a draft pass just to
            # decline again; the next probe catches the draft cache up in one pass.
            self._last = None
            return EMPTY_DRAFT
        if not params.greedy and self._draws is None:
            # Draws of its own, from the request's seed, apart from the verifier's (another stream).
            self._draws = Draws.for_request(params.seed).salted(0x5EED)
        logits = self._target_space(self.session.sync(self._draft_ids(context.tokens)))  # [V_target]
        if self.tree is not None:
            draft, confs, ranks = self._tree(logits, params, limit, len(context.tokens))
        else:
            draft, confs = self._chain(logits, params, limit, len(context.tokens))
            ranks = [0] * len(confs)
            self._backoff.record(declined=not draft.tokens)
        self._last = (draft, confs, ranks)
        return draft

    def _model(self, rank: int) -> AcceptanceModel:
        if rank == 0:
            return self.acceptance
        return self.sibling_acceptance.setdefault(rank, AcceptanceModel())

    def _draft_ids(self, tokens: np.ndarray) -> np.ndarray:
        return self.vocab.draft_ids(np.asarray(tokens, dtype=np.int64), self.fallback_id)

    def _target_space(self, logits: torch.Tensor) -> torch.Tensor:
        return self.vocab.target_logits(logits)

    def _chain(self, logits: torch.Tensor, params: SamplingParams, limit: int,
               committed: int) -> tuple[Draft, list[float]]:
        adaptive = self.k is None
        probs = draft_distribution(logits, params)  # [V_target]
        conf = float(probs.max())
        if adaptive and not keep_drafting(reach=1.0, next_accept=self.acceptance.estimate(conf), expected=1.0,
                                          drafted=0, cost=self.cost):
            return EMPTY_DRAFT, []
        tokens: list[int] = []
        rows: list[torch.Tensor] = []
        confs: list[float] = []
        reach, expected = 1.0, 1.0
        while True:
            token = (argmax_rows(logits[None])[0] if params.greedy
                     else sample(probs, self._draws.at(committed + len(tokens))))
            tokens.append(token)
            rows.append(probs)
            confs.append(conf)
            accept = self.acceptance.estimate(conf)
            reach *= accept
            expected += reach
            if len(tokens) >= limit:
                break
            # Decide on token i+1 before drawing it: reach so far, and the current
            # confidence as the guess for the next (confidence persists).
            if adaptive and not keep_drafting(reach=reach, next_accept=accept, expected=expected,
                                              drafted=len(tokens), cost=self.cost):
                break
            step = self.session.extend(self._draft_ids(np.array([token])).tolist())[-1]
            logits = self._target_space(step)
            probs = draft_distribution(logits, params)
            conf = float(probs.max())
        draft_probs = None if params.greedy else torch.stack(rows)  # [n, V_target]
        return Draft(tokens=tuple(tokens), draft_probs=draft_probs), confs

    def _tree(self, root_logits: torch.Tensor, params: SamplingParams, limit: int,
              committed: int) -> tuple[Draft, list[float], list[int]]:
        """An EAGLE-2 style dynamic tree; see the module docstring."""
        shape = self.tree
        max_nodes = shape.nodes if self.node_budget is None else self.node_budget.next_budget(committed)
        self._nodes_used = max_nodes
        max_depth = min(shape.depth, limit)
        tokens: list[int] = []
        parents: list[int] = []
        confs: list[float] = []  # the node's own draft probability
        ranks: list[int] = []  # its rank among its siblings
        # values: the estimated chance that the node is reached and accepted: the
        # product along its path of P(accepted | draft probability, sibling rank),
        # learned from the running acceptance. Before any evidence it is the
        # cumulative draft probability (EAGLE-2's score), up to binning.
        values: list[float] = []
        slot: dict[int, int] = {}  # node -> its entry in the draft cache
        depth_of = [0]

        def add_children(parent: int, probs: torch.Tensor) -> list[int]:
            top = torch.topk(probs, shape.width)
            new = []
            for rank, (p, t) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
                if p <= 0.0:
                    break
                tokens.append(int(t))
                parents.append(parent)
                base_value = values[parent - 1] if parent else 1.0
                confs.append(p)
                ranks.append(rank)
                values.append(base_value * self._model(rank).estimate(p))
                depth_of.append(depth_of[parent] + 1)
                new.append(len(tokens))
            return new

        level = add_children(0, draft_distribution(root_logits, params))
        passes = 0
        for depth in range(1, max_depth):
            expand = heapq.nlargest(shape.width, level, key=lambda n: (values[n - 1], -n))
            if not expand:
                break
            best = values[expand[0] - 1]
            expected = 1.0 + sum(sorted(values, reverse=True)[:max_nodes])
            if not keep_drafting(reach=best, next_accept=self.acceptance.rate, expected=expected,
                                 drafted=passes + 1, cost=self.cost):
                break
            # One draft pass over the nodes to expand, each seeing the committed
            # tokens and its own ancestors (already fed in earlier passes).
            allowed = expansion_mask(expand, parents, slot, committed=committed, start=len(self.session))
            ids = self._draft_ids(np.array([tokens[n - 1] for n in expand])).tolist()
            positions = [committed - 1 + depth] * len(expand)
            logits = self.session.extend_tree(ids, positions, allowed)  # [m, V_draft]
            passes += 1
            level = []
            for row, node in enumerate(expand):
                level += add_children(node, draft_distribution(self._target_space(logits[row]), params))
        self.session.truncate(committed)
        if not tokens:
            return EMPTY_DRAFT, [], []
        keep = select_tree(values, parents, max_nodes)
        renumber = {0: 0, **{old: new for new, old in enumerate(keep, start=1)}}
        draft = Draft(tokens=tuple(tokens[n - 1] for n in keep), parents=tuple(renumber[parents[n - 1]] for n in keep))
        return draft, [confs[n - 1] for n in keep], [ranks[n - 1] for n in keep]

    # ------------------------------------------------------------- observe

    def observe(self, outcome: StepOutcome) -> None:
        """Learn acceptance given confidence, from every node whose parent was reached."""
        if self._last is None or outcome.draft is not self._last[0]:
            return  # the engine cut the draft: node numbers no longer match ours
        draft, confs, ranks = self._last
        if self.node_budget is not None and len(draft):
            self.node_budget.record(self._nodes_used, outcome.path)
        parents = draft.parents if draft.parents is not None else tuple(range(len(draft)))
        reached = {0, *outcome.path}
        accepted = set(outcome.path)
        for node, (parent, conf, rank) in enumerate(zip(parents, confs, ranks), start=1):
            if parent in reached:
                self._model(rank).update(conf, node in accepted)



def expansion_mask(expand: list[int], parents: list[int], slot: dict[int, int], *, committed: int,
                   start: int) -> torch.Tensor:
    """[rows, start + rows] which draft-cache entries each expanded node's row sees: the committed tokens, its
    ancestors (at their ``slot``), itself (at ``start + row``, recorded in ``slot``). Nodes are 1-based;
    ``parents[node - 1]`` is a node's parent (0: the root).

    >>> slot = {1: 5}
    >>> expansion_mask([2, 3], [0, 1, 0], slot, committed=4, start=6).int().tolist()
    [[1, 1, 1, 1, 0, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0, 1]]
    >>> slot
    {1: 5, 2: 6, 3: 7}
    """
    allowed = torch.zeros(len(expand), start + len(expand), dtype=torch.bool)
    allowed[:, :committed] = True
    for row, node in enumerate(expand):
        p = parents[node - 1]
        while p:
            allowed[row, slot[p]] = True
            p = parents[p - 1]
        allowed[row, start + row] = True
        slot[node] = start + row
    return allowed

__all__ = ["Backoff", "ModelDrafter", "TreeShape", "VocabMap", "causal_allowed", "draft_distribution",
           "select_tree"]
