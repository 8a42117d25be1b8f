"""Draft sizing, in one place: how many draft tokens or tree nodes a step verifies.

* The **node budget** of tree drafters (:func:`choose_node_budget`, :func:`node_budget`,
  :class:`AdaptiveNodeBudget`): the size that maximises expected emitted tokens per second,
  ``(1 + accepted(n)) / latency(n)``, from the machine's latency profile (:mod:`quickdraft.profile`) and a
  prior or running acceptance statistics.
* The **draft length** of a draft model (:class:`AcceptanceModel`, :func:`keep_drafting`): when one more
  draft token is worth its cost (below).
* For a batch of requests: :mod:`quickdraft.goodput`; for ``auto``'s per-step choice among sources:
  :mod:`quickdraft.selection`.

>>> from quickdraft.profile import LatencyProfile
>>> profile = LatencyProfile(key=None, nodes=(0, 8, 64), seconds=(0.020, 0.022, 0.050))
>>> choose_node_budget(profile.latency, [0.0, 0.6, 0.9, 1.1, 1.3, 1.4, 1.5, 1.55, 1.6], candidates=(1, 2, 4, 8))
8

Adaptive draft length. Adaptive draft length: when is one more draft token worth its cost?

SpecDec++ (Huang et al. 2024) stops drafting once the predicted chance that the
chain so far is all accepted is too low; Kangaroo (Liu et al. 2024) stops once
the draft's own confidence drops below a threshold. Here, training-free:

* :class:`AcceptanceModel` learns, from the running acceptance, how likely a
  draft token is to be accepted given the draft's confidence (the top
  probability of its distribution at that position, known *before* the token
  is drawn, so stopping on it never biases speculative sampling).
* :func:`keep_drafting` turns that into a stop rule from a cost model: one
  more token gains its chance of being reached and accepted, and costs one
  draft pass (``cost`` target passes); draft it while that beats the tokens per
  pass the step already expects. The effective confidence threshold therefore
  moves with the measured acceptance and with the draft's relative cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence


from .profile import load_or_measure

# Node budgets to choose among: fine steps where trees usually land (with doublings only, the n-gram
# drafter's budget settled between 4 and 8 nodes, below the best fixed size, 10; see AdaptiveNodeBudget).
CANDIDATES = (1, 2, 4, 6, 8, 10, 12, 16, 24, 32, 48, 64)

def keep_drafting(*, reach: float, next_accept: float, expected: float, drafted: int, cost: float) -> bool:
    """Whether drafting one more token is expected to raise the tokens per unit of time.

    reach: estimated probability that every token drafted so far is accepted.
    next_accept: estimated acceptance of the next token, given it is reached.
    expected: tokens this step is expected to emit so far (1 + the sum of the reach
        values of the drafted tokens; the 1 is the recovered or bonus token).
    drafted: draft tokens (draft passes) so far; cost: one draft pass, in target passes.

    A step costs ``1 + drafted * cost`` target passes. One more token adds
    ``reach * next_accept`` expected tokens for ``cost``: worth it while its
    ratio beats the step's current ratio.

    >>> keep_drafting(reach=1.0, next_accept=0.8, expected=1.0, drafted=0, cost=0.3)
    True
    >>> keep_drafting(reach=0.2, next_accept=0.5, expected=2.5, drafted=4, cost=0.3)
    False
    """
    gain = reach * next_accept
    return gain * (1.0 + drafted * cost) > cost * expected


@dataclass
class AcceptanceModel:
    """Running P(accepted | draft confidence), in confidence bins, with a prior.

    Each bin's estimate is ``(accepted + w * prior) / (tried + w)``; the prior
    is the mean of the bin's centre (what a calibrated draft's confidence
    would say) and the overall running acceptance (0.5 before any evidence),
    so a bin never tried still inherits what the other bins learned: a draft
    that is always right gets to draft even where it is unsure. Counts decay
    by ``decay`` per update so the estimate follows a change of text.

    >>> m = AcceptanceModel(bins=4)
    >>> round(m.estimate(0.9), 3)               # prior: (bin centre 0.875 + 0.5) / 2
    0.688
    >>> for _ in range(50): m.update(0.9, False)
    >>> m.estimate(0.9) < 0.2
    True
    """

    bins: int = 10
    prior_weight: float = 4.0
    decay: float = 0.99
    accepted: list[float] = field(default_factory=list)
    tried: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.accepted = self.accepted or [0.0] * self.bins
        self.tried = self.tried or [0.0] * self.bins

    def _bin(self, confidence: float) -> int:
        return min(self.bins - 1, max(0, int(confidence * self.bins)))

    def estimate(self, confidence: float) -> float:
        b = self._bin(confidence)
        prior = ((b + 0.5) / self.bins + self.rate) / 2
        return (self.accepted[b] + self.prior_weight * prior) / (self.tried[b] + self.prior_weight)

    def update(self, confidence: float, accepted: bool) -> None:
        b = self._bin(confidence)
        self.accepted[b] = self.accepted[b] * self.decay + float(accepted)
        self.tried[b] = self.tried[b] * self.decay + 1.0

    @property
    def rate(self) -> float:
        """Overall acceptance of reached draft tokens so far (0.5 before any evidence)."""
        tried = sum(self.tried)
        return sum(self.accepted) / tried if tried else 0.5


# ------------------------------------------------------------------ choosing a size


def prior_expected_accepted(nodes: int) -> float:
    """Accepted draft tokens expected from a ``nodes``-node draft before any statistics.

    Half a token per doubling of the tree (0.5 at 1 node, 2 at 15, 3 at 63):
    a cautious, diminishing-returns guess that running statistics replace.
    """
    return 0.5 * math.log2(1 + nodes)


def choose_node_budget(latency: Callable[[int], float], expected_accepted: Sequence[float],
                       candidates: Sequence[int] = CANDIDATES) -> int:
    """The candidate draft size with the most expected emitted tokens per second.

    latency(n): seconds of a verify pass with n draft nodes.
    expected_accepted[n]: expected accepted draft tokens with n nodes (index 0..N);
        candidates beyond the list are skipped. Each pass also emits one
        recovered or bonus token, hence ``(1 + accepted) / latency``. Ties go
        to the smaller size.

    >>> flat = lambda n: 1.0                      # free verification: the biggest tree
    >>> choose_node_budget(flat, [0, 1, 1.5, 1.8, 2.0], candidates=(1, 2, 4))
    4
    >>> steep = lambda n: 1.0 + n                 # every node costs a full pass
    >>> choose_node_budget(steep, [0, 1, 1.5, 1.8, 2.0], candidates=(1, 2, 4))
    1
    """
    best, best_rate = None, -math.inf
    for n in sorted(candidates):
        if n >= len(expected_accepted):
            continue
        rate = (1.0 + expected_accepted[n]) / latency(n)
        if rate > best_rate * (1 + 1e-9):
            best, best_rate = n, rate
    if best is None:
        raise ValueError(f"no candidate in {list(candidates)} has an acceptance estimate")
    return best


def node_budget(target, *, default: int = 16, max_nodes: int = 64) -> int:
    """A node budget for tree drafts on this machine, from the latency profile and the prior.

    Measures the profile on first use (cached per model, dtype, threads and
    machine). ``default`` is returned for a target that cannot be profiled
    (None, or an object without ``forward``/``new_cache``, as in unit tests).
    """
    if target is None or not hasattr(target, "forward") or not hasattr(target, "new_cache"):
        return default
    profile = load_or_measure(target)
    prior = [prior_expected_accepted(n) for n in range(max_nodes + 1)]
    return choose_node_budget(profile.latency, prior, [c for c in CANDIDATES if c <= max_nodes])


def accepted_within(path: Sequence[int], nodes: int) -> int:
    """Accepted tokens had the draft been cut to its first ``nodes`` nodes.

    Valid for drafts built in priority order (their first m nodes are the
    draft they would make with budget m) and greedy acceptance, where the
    accepted path of the cut tree is the prefix of ``path`` inside it.

    >>> accepted_within((2, 5, 9), 6)
    2
    """
    count = 0
    for node in path:
        if node > nodes:
            break
        count += 1
    return count


class AdaptiveNodeBudget:
    """The node budget for the next draft, from a latency profile and running acceptance.

    The tokens expected from the first m nodes of a draft (:func:`accepted_within`)
    are estimated as a level times a product of growth factors: the level is
    the running mean of what the first node alone accepts, measured at every
    step; the factor of size m is the running ratio of what the first m nodes
    accepted to what the first m - 1 accepted, over the steps whose budget
    reached m (a product-limit estimate: each ratio compares two sizes on the
    same steps). All start from the prior. A large size is only measured in
    the steps that try it, which come in easy stretches (a translation) or on
    probes (every ``probe_every`` steps the next larger candidate is
    proposed); as ratios its measurements carry over to a hard stretch, where a
    plain running mean would have stayed high (too big trees), and back, where
    a mean measured in the hard stretch would have stayed low (the n-gram
    drafter's budget, so estimated, stuck at 2 nodes for a whole bench run
    after its first prompts: 1.86 tokens per pass against 2.13 at a fixed 10
    nodes). The estimate never falls as m grows (a draft's first m nodes hold
    its first m - 1), which the previous estimate, one ratio of m nodes to the
    first node per size, each over its own steps, did not ensure: it rated 16
    nodes below 12 and 24 above both in a bench run, and chose bigger trees
    than paid (builtin suite, interleaved: `ngram` 1.75x with it, 1.82x with
    this one, 1.83x at a fixed 8 nodes). Lives in a drafter, so it carries
    across the requests of an engine.

    >>> budget = AdaptiveNodeBudget(lambda n: 1.0 + n / 8, candidates=(1, 2, 4, 8))
    >>> for _ in range(50):
    ...     budget.record(budget.next_budget(), path=(1, 2, 3))   # the first 3 nodes always accepted
    >>> budget.choice()
    4

    latency(n) gives the seconds of an n-node pass; called as latency(n, context)
    when the drafter passes the context length (cached tokens) to
    :meth:`next_budget` (a profile's :meth:`LatencyProfile.latency` takes both).
    """

    def __init__(self, latency: Callable[..., float], *, candidates: Sequence[int] = CANDIDATES,
                 prior: Callable[[int], float] = prior_expected_accepted, prior_weight: float = 4.0,
                 min_rate: float = 0.02, probe_every: int = 8) -> None:
        self.latency = latency
        self.candidates = tuple(sorted(candidates))
        size = self.candidates[-1] + 1
        self._level = prior(1)  # running mean of what the first node accepts
        self._level_weight = prior_weight
        # growth of size m: running (accepted by m nodes, by m - 1 nodes) over the steps that reached m
        self._growth = [(1.0, 1.0)] * 2 + [(prior(m), prior(m - 1)) for m in range(2, size)]
        self._weight = [prior_weight] * size
        self.min_rate = min_rate
        self.probe_every = probe_every
        self.steps = 0

    @property
    def expected(self) -> list[float]:
        """Expected accepted tokens with the first m nodes, m = 0 .. max(candidates); never decreasing."""
        out = [0.0, self._level]
        for num, den in self._growth[2:]:
            out.append(out[-1] * max(1.0, num / den) if den > 1e-9 else out[-1])
        return out

    def choice(self, context: int | None = None) -> int:
        """The best candidate on current estimates (after ``context`` cached tokens, if given)."""
        latency = self.latency if context is None else (lambda n: self.latency(n, context))
        return choose_node_budget(latency, self.expected, self.candidates)

    def next_budget(self, context: int | None = None) -> int:
        """The budget for the next draft: the choice, or one size up on a probe step."""
        best = self.choice(context)
        if self.probe_every and self.steps % self.probe_every == self.probe_every - 1:
            larger = [c for c in self.candidates if c > best]
            return larger[0] if larger else best
        return best

    def record(self, budget: int, path: Sequence[int]) -> None:
        """One verified draft made under ``budget`` nodes, with accepted node path ``path``."""
        self.steps += 1
        if budget < 1:
            return
        accepted = accepted_within(path, 1)  # accepted_within(path, m), advanced as m grows
        self._level_weight += 1.0
        self._level += max(1.0 / self._level_weight, self.min_rate) * (accepted - self._level)
        for m in range(2, min(budget, len(self._growth) - 1) + 1):
            before = accepted
            while accepted < len(path) and path[accepted] <= m:
                accepted += 1
            self._weight[m] += 1.0
            rate = max(1.0 / self._weight[m], self.min_rate)
            num, den = self._growth[m]
            self._growth[m] = (num + rate * (accepted - num), den + rate * (before - den))


def adaptive_node_budget(target, *, max_nodes: int = 64, extra: int = 0) -> AdaptiveNodeBudget | None:
    """An :class:`AdaptiveNodeBudget` on ``target``'s latency profile (measured once per machine).

    extra: inputs fed with every draft besides its nodes (PPD's prompt tokens),
    charged as nodes. None for a target that cannot be profiled (see :func:`node_budget`).
    """
    if target is None or not hasattr(target, "forward") or not hasattr(target, "new_cache"):
        return None
    profile = load_or_measure(target)
    latency = profile.latency if not extra else (lambda n, context=None: profile.latency(n + extra, context))
    return AdaptiveNodeBudget(latency, candidates=[c for c in CANDIDATES if c <= max_nodes])


__all__ = [
    "AcceptanceModel", "AdaptiveNodeBudget", "CANDIDATES", "accepted_within", "adaptive_node_budget",
    "choose_node_budget", "keep_drafting", "node_budget", "prior_expected_accepted",
]
