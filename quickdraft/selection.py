"""Choosing what to draft each step: expected goodput from running acceptance statistics.

The ``auto`` drafter (:mod:`quickdraft.drafters.auto`) asks several drafters
(*sources*) for draft trees, merges them and verifies only the nodes worth
their cost. This module holds its math, as pure functions, and the two small
state classes it learns with:

* :class:`AcceptanceStats`: for each source, signal bucket and node *feature*
  (:func:`node_features`: the node's depth, and how far off the source's main
  line it is), a running estimate of P(node accepted | its parent accepted),
  with a prior. It learns from :func:`resolve`: once the target has emitted
  the tokens that follow a draft, every node whose parent was on the emitted
  path is decided. So a source is scored on every draft it made, verified or
  not (exact under greedy decoding and for deterministic drafts under
  sampling, where a node is accepted exactly when the emitted token equals it).
* :class:`LatencyModel`: seconds of a verify pass with n draft nodes, from the
  machine's profile (:mod:`quickdraft.profile`), corrected by the step times seen.

The rule, :func:`best_size`: with node scores ``s`` (the probability that a
node ends up on the accepted path, :func:`path_scores`), verifying the n best
nodes emits ``1 + sum(s[:n])`` tokens in expectation and costs
``draft_s + latency(n)`` seconds; the n with the most tokens per second wins,
and n = 0 (a plain step, ``1 / latency(0)``) unless drafting beats it by a margin.

>>> scores = path_scores((0, 1, 0), [0.9, 0.8, 0.3])  # node 1 - node 2, and node 3 beside node 1
>>> [round(s, 3) for s in scores]                     # siblings 1 and 3 scaled to sum to 1
[0.75, 0.6, 0.25]
>>> best_size(scores, [1.0, 1.1, 1.2, 1.3]).nodes      # 2.6 tokens in 1.3 s beats 1 token in 1.0 s
(1, 2, 3)
>>> best_size(scores, [1.0, 2.0, 3.0, 4.0]).nodes      # every node costs a whole pass: plain
()
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .tree import children

# Prompt-lookup match length -> signal bucket: 0 (no match), 1, 2, 3, 4-5, 6-9, 10-15, 16+.
MATCH_EDGES = (0, 1, 2, 3, 4, 6, 10, 16)
BUCKETS = len(MATCH_EDGES)


# ------------------------------------------------------------------ signals


def match_length(tokens: np.ndarray, *, max_n: int = 3, cap: int = 32) -> int:
    """How many tokens the context's suffix shares with prompt lookup's chosen earlier occurrence.

    The occurrence is the one ``pld`` copies from (the longest suffix n-gram,
    ``max_n`` down to 1, most recent occurrence first); the match is then
    extended backwards, up to ``cap`` tokens. 0 means no match. A long match
    means the text is being copied, so the copied continuation is likely right.

    tokens: [T] int token ids. One pass over the context finds the earlier
    occurrences of the last token; only those are compared further.

    >>> match_length(np.array([7, 1, 2, 3, 9, 1, 2, 3]))       # "1 2 3" seen before, preceded by 7 vs 9
    3
    >>> match_length(np.array([5, 1, 2, 3, 9, 5, 1, 2, 3]))    # ... and "5 1 2 3" too
    4
    >>> match_length(np.array([1, 2, 3]))
    0
    """
    total = len(tokens)
    if total < 2:
        return 0
    ends = np.flatnonzero(tokens[: total - 1] == tokens[total - 1])  # [C] earlier occurrences of the last token
    if not ends.size:
        return 0
    span = min(cap, total) - 1  # further tokens compared backwards
    offsets = np.arange(1, span + 1)  # [S]
    before = ends[:, None] - offsets[None, :]  # [C, S] positions before each occurrence
    same = (before >= 0) & (tokens[np.maximum(before, 0)] == tokens[total - 1 - offsets][None, :])  # [C, S]
    lengths = 1 + np.where(same.all(axis=1), span, same.argmin(axis=1))  # [C] matched tokens, the last one included
    wanted = min(max_n, int(lengths.max()))  # pld's n: the longest suffix n-gram (up to max_n) seen before
    chosen = int(np.flatnonzero(lengths >= wanted)[-1])  # its most recent occurrence
    return int(lengths[chosen])


def match_bucket(length: int) -> int:
    """The signal bucket of a match length (see MATCH_EDGES).

    >>> [match_bucket(n) for n in (0, 1, 3, 5, 9, 12, 40)]
    [0, 1, 3, 4, 5, 6, 7]
    """
    return bisect.bisect_right(MATCH_EDGES, length) - 1


# ------------------------------------------------------------------ trees


def node_features(parents: Sequence[int]) -> tuple[list[int], list[int]]:
    """(depths, ranks) of nodes 1..n: a node's rank is the sum of sibling positions along its path.

    Rank 0 is the source's main line (every node its parent's first child);
    a node off it by one second-best choice has rank 1, and so on.

    >>> node_features((0, 1, 0, 3, 1))   # 1-2, 3-4 beside 1, 5 beside 2
    ([1, 2, 1, 2, 2], [0, 0, 1, 1, 1])
    """
    depth, rank, kids = [0], [0], [0] * (len(parents) + 1)
    for p in parents:
        depth.append(depth[p] + 1)
        rank.append(rank[p] + kids[p])
        kids[p] += 1
    return depth[1:], rank[1:]


def path_scores(parents: Sequence[int], conditional: Sequence[float]) -> list[float]:
    """The probability that each node is on the accepted path, from P(accepted | parent accepted).

    At most one child of a node can be accepted, so when siblings' conditional
    probabilities sum to more than 1 (estimates from different sources, or
    noisy ones) they are scaled down to sum to 1. A score never exceeds its
    parent's, so the n best nodes always form a tree (ties: the earlier node).

    >>> [round(s, 3) for s in path_scores((0, 1, 1), [0.5, 0.9, 0.6])]
    [0.5, 0.3, 0.2]
    """
    n = len(parents)
    assert len(conditional) == n, "one conditional probability per node"
    total = [0.0] * (n + 1)
    for p, c in zip(parents, conditional):
        total[p] += min(max(float(c), 0.0), 1.0)
    scores = [1.0] * (n + 1)
    for i, (p, c) in enumerate(zip(parents, conditional), start=1):
        c = min(max(float(c), 0.0), 1.0)
        if total[p] > 1.0:
            c /= total[p]
        scores[i] = scores[p] * c
    return scores[1:]


def best_path_scores(parents: Sequence[int], scores: Sequence[float]) -> list[float]:
    """``scores`` kept on one path only, the one that follows each node's best-scored child from the root
    (0 elsewhere): the choice for a target that verifies chains (a tree's other branches cannot be
    verified in the same pass there).

    >>> best_path_scores((0, 0, 1, 2), [0.3, 0.6, 0.2, 0.5])
    [0.0, 0.6, 0.0, 0.5]
    """
    kids: list[list[int]] = [[] for _ in range(len(parents) + 1)]
    for i, p in enumerate(parents, start=1):
        kids[p].append(i)
    out = [0.0] * len(parents)
    node = 0
    while kids[node]:
        node = max(kids[node], key=lambda k: (scores[k - 1], -k))
        out[node - 1] = float(scores[node - 1])
    return out


@dataclass(frozen=True)
class Choice:
    """What to verify: ``nodes`` (1-based, in node order, a tree) and the expected rates.

    expected: expected accepted draft tokens; rate / plain_rate: expected
    emitted tokens per second with this draft / with a plain step.
    """

    nodes: tuple[int, ...]
    expected: float
    rate: float
    plain_rate: float

    @property
    def gain(self) -> float:
        """Expected speed relative to a plain step."""
        return self.rate / self.plain_rate

    @property
    def seconds(self) -> float:
        """Expected seconds of the step (drafting and verifying): the expected tokens over their rate."""
        return (1.0 + self.expected) / self.rate


def best_size(scores: Sequence[float], latency: Sequence[float], *, draft_s: float = 0.0,
              margin: float = 0.0, max_nodes: int | None = None) -> Choice:
    """The best nodes to verify: the n highest scores for the n with the most expected tokens per second.

    scores: per node, the probability it is on the accepted path (monotone
        along paths, as :func:`path_scores` makes them).
    latency[n]: seconds of a verify pass with n draft nodes (n = 0: a plain
        step); sizes beyond the list are not considered.
    draft_s: seconds already spent drafting this step (charged to every option).
    margin: drafting must beat a plain step by this fraction (unmodelled overheads).

    >>> best_size([0.9, 0.5, 0.1], [1.0, 1.05, 1.1, 1.5]).nodes
    (1, 2)
    >>> best_size([0.04], [1.0, 1.05]).nodes                   # 1.04 tokens for 1.05 s: not worth it
    ()
    """
    limit = min(len(scores), len(latency) - 1, len(scores) if max_nodes is None else max_nodes)
    plain = 1.0 / (draft_s + latency[0])
    if limit <= 0:
        return Choice((), 0.0, plain, plain)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:limit]
    expected = np.cumsum([scores[i] for i in order])  # [limit]
    cost = draft_s + np.asarray(latency[1: limit + 1], dtype=np.float64)  # [limit]
    rates = (1.0 + expected) / cost
    best = int(np.argmax(rates))
    if rates[best] <= plain * (1.0 + margin):
        return Choice((), 0.0, plain, plain)
    return Choice(tuple(sorted(i + 1 for i in order[: best + 1])), float(expected[best]), float(rates[best]), plain)


def resolve(tokens: Sequence[int], parents: Sequence[int], future: Sequence[int], *,
            kids: list[list[int]] | None = None) -> tuple[list[tuple[int, bool]], bool]:
    """Which draft nodes the target accepted (or would have), from the tokens it emitted after the root.

    Follows ``future`` down the tree from the root. Every child of a node on
    that walk is decided: accepted when it is the walk's next node. Returns
    ``([(node, accepted), ...], done)``; ``done`` means the walk ended (no
    child matched, or a leaf) within ``future``; otherwise the children of the
    walk's last node are not decided yet and are left out. ``kids``: the
    tree's :func:`~quickdraft.tree.children`, if already known.

    >>> resolve((5, 6, 7), (0, 1, 0), [5, 6, 9])   # 5-6 accepted; 7 (beside 5) not
    ([(1, True), (3, False), (2, True)], True)
    >>> resolve((5, 6, 7), (0, 1, 0), [5])         # node 2 waits for the next token
    ([(1, True), (3, False)], False)
    """
    kids = children(parents) if kids is None else kids
    decided: list[tuple[int, bool]] = []
    node = 0
    for token in future:
        if not kids[node]:
            return decided, True
        nxt = 0
        for child in kids[node]:
            hit = nxt == 0 and tokens[child - 1] == token
            decided.append((child, hit))
            if hit:
                nxt = child
        if nxt == 0:
            return decided, True
        node = nxt
    return decided, not kids[node]


# ------------------------------------------------------------------ state


class AcceptanceStats:
    """Running P(node accepted | parent accepted) per (source, bucket, depth, rank) cell.

    Each cell keeps exponentially decayed counts (an update first multiplies
    the cell's counts by ``decay``), so recent drafts weigh most, about
    ``1 / (1 - decay)`` of them. A cell's estimate is shrunk toward its
    neighbour's: ``(accepted + w * prior) / (tried + w)`` where the prior of a
    main-line node (rank 0) is the estimate one level up (``base`` at depth 1)
    and that of a node off the main line is ``rank_decay`` times the estimate
    of the rank before. So a source seen right at depths 1..8 is trusted at
    depth 9 before any draft reached that deep (copied text goes on). Memory
    is fixed: sources x buckets x ``max_depth`` x ``max_rank`` cells (deeper
    or further-off nodes share the last cell).

    >>> stats = AcceptanceStats(sources=1, buckets=1)
    >>> round(float(stats.estimate(0, 0, [1], [0])[0]), 2)      # the prior
    0.3
    >>> for _ in range(40): stats.update(0, 0, 1, 0, True)
    >>> [round(float(p), 2) for p in stats.estimate(0, 0, [1, 2, 20], [0, 0, 0])]   # deeper: borrowed
    [0.95, 0.95, 0.95]
    """

    def __init__(self, sources: int, buckets: int, *, max_depth: int = 32, max_rank: int = 8, base: float = 0.3,
                 rank_decay: float = 0.5, prior_weight: float = 2.0, decay: float = 0.97) -> None:
        if not 0.0 < decay <= 1.0 or prior_weight <= 0 or not 0 <= base <= 1 or not 0 <= rank_decay <= 1:
            raise ValueError("need 0 < decay <= 1, prior_weight > 0, base and rank_decay in [0, 1]")
        self.max_depth, self.max_rank, self.decay, self.prior_weight = max_depth, max_rank, decay, prior_weight
        self.base, self.rank_decay = base, rank_decay
        shape = (sources, buckets, max_depth, max_rank)
        self.accepted = np.zeros(shape)
        self.tried = np.zeros(shape)
        self._tables: dict[tuple[int, int], np.ndarray] = {}  # (source, bucket) -> [D, R] estimates, until updated

    def table(self, source: int, bucket: int) -> np.ndarray:
        """[max_depth, max_rank] estimates of one source and bucket (row d: depth d + 1)."""
        key = (source, bucket)
        table = self._tables.get(key)
        if table is None:
            accepted, tried, w = self.accepted[source, bucket], self.tried[source, bucket], self.prior_weight
            table = np.empty((self.max_depth, self.max_rank))
            prior = self.base
            for d in range(self.max_depth):  # the main line, each depth shrunk toward the one above
                prior = table[d, 0] = (accepted[d, 0] + w * prior) / (tried[d, 0] + w)
            for r in range(1, self.max_rank):  # off the main line, shrunk toward the rank before
                table[:, r] = (accepted[:, r] + w * self.rank_decay * table[:, r - 1]) / (tried[:, r] + w)
            self._tables[key] = table
        return table

    def estimate(self, source: int, bucket: int, depth: Sequence[int], rank: Sequence[int]) -> np.ndarray:
        """P(accepted | parent accepted) for nodes of the given depths and ranks: [n]."""
        top_d, top_r = self.max_depth - 1, self.max_rank - 1
        d = [min(x - 1, top_d) for x in depth]  # depths start at 1
        r = [min(x, top_r) for x in rank]
        return self.table(source, bucket)[d, r]

    def update(self, source: int, bucket: int, depth: int, rank: int, accepted: bool) -> None:
        cell = (source, bucket, min(max(depth, 1), self.max_depth) - 1, min(max(rank, 0), self.max_rank - 1))
        self.accepted[cell] = self.accepted[cell] * self.decay + (1.0 if accepted else 0.0)
        self.tried[cell] = self.tried[cell] * self.decay + 1.0
        self._tables.pop((source, bucket), None)


ANCHORS = (0, 1, 2, 4, 8, 16, 32, 64)  # draft sizes whose latency corrections are learned


class LatencyModel:
    """Seconds of a verify pass with n draft nodes: a prior (the machine profile) times a learned correction.

    Every recorded step updates, in log space, a global correction (the
    machine is faster or slower now than when profiled) and the correction of
    the nearest anchor size (the profile's shape was off there); an anchor's
    correction is shrunk toward the global one by its evidence. The first
    ``warmup`` records of each are averaged; later ones move an estimate by
    ``rate`` times their difference, clipped to a factor ``clip``, so a stall
    from another process moves it a little, not a lot. Latency never
    decreases with n.

    contextual: the prior takes the context length too, ``prior(n, context)``
    (a :class:`~quickdraft.profile.LatencyProfile`'s latency): :meth:`table`
    and :meth:`record` then take the context (cached tokens), the prior is
    re-read whenever it moved by ``context_step`` tokens, and the learned
    corrections stay relative to it.

    >>> model = LatencyModel(lambda n: 0.02 * (1 + n / 32), max_nodes=8)
    >>> round(float(model.table()[8] / model.table()[0]), 3)
    1.25
    >>> for _ in range(100): model.record(0, 0.04)     # plain steps take twice the profile now
    >>> round(float(model.table()[0]), 3), bool(model.table()[8] > 0.04)
    (0.04, True)
    """

    def __init__(self, prior: Callable[..., float], *, max_nodes: int, rate: float = 0.1, warmup: int = 8,
                 anchor_weight: float = 4.0, clip: float = 3.0, contextual: bool = False,
                 context_step: int = 64) -> None:
        self.max_nodes = max_nodes
        sizes = np.arange(max_nodes + 1)
        self._prior_fn, self.contextual, self.context_step = prior, contextual, context_step
        self._context: int | None = None  # the context the prior was read at (contextual only)
        self._prior = self._read_prior(None)  # [N + 1]
        self._x = np.log2(sizes + 1.0)  # [N + 1]
        self._anchors = np.log2(np.array(ANCHORS, dtype=np.float64) + 1.0)  # [A]
        self.rate, self.warmup, self.anchor_weight, self.clip = rate, warmup, anchor_weight, math.log(clip)
        self._corr = np.zeros(len(ANCHORS) + 1)  # per anchor, then the global one
        self._count = np.zeros(len(ANCHORS) + 1)
        self._nearest = [int(np.argmin(np.abs(self._anchors - x))) for x in self._x]  # size -> its anchor
        self._table: np.ndarray | None = None
        self._stale = 0

    def _read_prior(self, context: int | None) -> np.ndarray:
        sizes = range(self.max_nodes + 1)
        if self.contextual and context is not None:
            prior = np.array([self._prior_fn(n, context) for n in sizes], dtype=np.float64)
        else:
            prior = np.array([self._prior_fn(n) for n in sizes], dtype=np.float64)
        assert (prior > 0).all(), "latencies must be positive"
        return prior

    def _at(self, context: int | None) -> None:
        """Re-read the prior when the context moved by a step (contextual models only)."""
        if not self.contextual or context is None:
            return
        snapped = int(context) // self.context_step * self.context_step + self.context_step // 2
        if snapped != self._context:
            self._context = snapped
            self._prior = self._read_prior(snapped)
            self._table = None

    def record(self, nodes: int, seconds: float, context: int | None = None) -> None:
        """One verify pass of ``nodes`` draft nodes took ``seconds`` (after ``context`` cached tokens)."""
        if seconds <= 0 or not 0 <= nodes <= self.max_nodes:
            return
        self._at(context)
        residual = math.log(seconds / self._prior[nodes])
        for k in (self._nearest[nodes], len(ANCHORS)):
            self._count[k] += 1
            diff = residual - self._corr[k]
            if self._count[k] <= self.warmup:
                self._corr[k] += diff / self._count[k]
            else:
                self._corr[k] += self.rate * min(max(diff, -self.clip), self.clip)
        self._stale += 1
        if self._stale >= 8 or self._count[-1] <= self.warmup:  # the table moves slowly: refresh it now and then
            self._table = None

    def table(self, context: int | None = None) -> np.ndarray:
        """[max_nodes + 1] seconds for 0..max_nodes draft nodes (recomputed every few records)."""
        self._at(context)
        if self._table is None:
            count, corr = self._count[:-1], self._corr[:-1]
            w = count / (count + self.anchor_weight)
            blended = w * corr + (1 - w) * self._corr[-1]  # [A]
            table = self._prior * np.exp(np.interp(self._x, self._anchors, blended))
            self._table = np.maximum.accumulate(table)
            self._stale = 0
        return self._table


def plausible(latency: Callable[[int], float], sizes: Sequence[int] = ANCHORS) -> bool:
    """Whether a measured latency curve looks like a machine's, not like noise from a busy one.

    Verify time should grow with the draft size: no size may take less than
    0.75 of a smaller size's time, and one draft node should cost less than
    two plain steps.

    >>> plausible(lambda n: 0.02 + 0.001 * n)
    True
    >>> plausible(dict(zip(ANCHORS, (1.5, 1.1, 1.8, 98.6, 2.6, 2.1, 2.0, 23.2))).get)
    False
    """
    values = [latency(n) for n in sizes]
    slowest = values[0]
    for value in values[1:]:
        if value < 0.75 * slowest:
            return False
        slowest = max(slowest, value)
    return latency(1) < 2 * latency(0)


__all__ = [
    "AcceptanceStats", "BUCKETS", "Choice", "LatencyModel", "MATCH_EDGES", "best_size",
    "match_bucket", "match_length", "node_features", "path_scores", "plausible", "resolve",
]
