"""Adaptive draft length: when is one more draft token worth its cost?

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

from dataclasses import dataclass, field


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
