"""Speculation budgeted by goodput for a batch of requests (SmartSpec), as pure functions plus one small
estimator.

Each step of a batch, every request's drafter proposes a chain; the planner chooses how many of those draft
tokens to verify (0: a plain step for that request) so as to maximise the batch's *goodput*, the expected
committed tokens per second of the pass::

    goodput(k) = sum_i E_i(k_i) / cost(rows(k))        E_i(k) = 1 + a_i + a_i**2 + ... + a_i**k

where ``a_i`` is request i's per-token acceptance estimate (:class:`AcceptanceRate`) and ``cost`` the
measured seconds of a pass with those rows (the backend's cost curve). A request that is alone drafts
as it would alone (the caller skips the planner); under load each extra row costs what it takes from
everyone's step, so speculation shrinks, and the requests whose drafts are rarely accepted stop
drafting first.

    >>> cost = lambda rows: 0.010 + 0.007 * sum(rows)          # a fixed part per pass, then per row
    >>> plan_drafts([0.9, 0.0], [4, 4], cost)                  # the request that never hits drafts nothing
    (3, 0)
    >>> plan_drafts([0.6] * 8, [4] * 8, cost)                  # eight requests: rows cost too much to draft
    (0, 0, 0, 0, 0, 0, 0, 0)
"""

from __future__ import annotations

from typing import Callable, Sequence


def expected_committed(rate: float, k: int) -> float:
    """Tokens a step is expected to commit with ``k`` draft tokens, each accepted with probability ``rate``
    once the previous one was: the accepted prefix plus the bonus token.

    >>> expected_committed(0.5, 0), expected_committed(0.5, 2), expected_committed(1.0, 3)
    (1.0, 1.75, 4.0)
    """
    return float(sum(rate ** i for i in range(k + 1)))


def plan_drafts(rates: Sequence[float], offered: Sequence[int], cost: Callable[[tuple[int, ...]], float]) -> tuple[int, ...]:
    """Draft tokens to verify per request this step (each at most what its drafter ``offered``), chosen to
    maximise expected committed tokens per second of the pass. ``cost(rows)``: seconds of a pass with
    ``rows[i]`` rows for request i (1 + its draft tokens).

    The candidates: the ``m`` requests with the best acceptance estimates (m = 0 .. n) drafting up to the
    same length ``K``, the others none; ties go to fewer rows.
    """
    n = len(rates)
    if len(offered) != n:
        raise ValueError("rates and offered differ in length")
    order = sorted(range(n), key=lambda i: (-rates[i], i))
    best = tuple(0 for _ in range(n))
    best_value = n / cost(tuple(1 for _ in range(n))) if n else 0.0
    top = max(offered, default=0)
    for m in range(1, n + 1):
        chosen = order[:m]
        if offered[chosen[-1]] == 0:
            continue
        for length in range(1, top + 1):
            ks = [0] * n
            for i in chosen:
                ks[i] = min(length, offered[i])
            rows = tuple(1 + k for k in ks)
            value = sum(expected_committed(rates[i], ks[i]) for i in range(n)) / cost(rows)
            if value > best_value * (1 + 1e-9):
                best, best_value = tuple(ks), value
    return best


class AcceptanceRate:
    """A request's per-token draft acceptance: accepted tokens over accepted tokens plus rejections, with a
    prior of ``prior`` worth ``weight`` tokens and older steps weighing less (``decay`` per step).

    >>> rate = AcceptanceRate()
    >>> for _ in range(20): rate.record(drafted=4, accepted=0)
    >>> rate.value < 0.1
    True
    """

    def __init__(self, prior: float = 0.5, weight: float = 2.0, decay: float = 0.9) -> None:
        self.hits = prior * weight
        self.misses = (1 - prior) * weight
        self.decay = decay

    @property
    def value(self) -> float:
        return self.hits / (self.hits + self.misses)

    def record(self, drafted: int, accepted: int) -> None:
        """A verified step: ``accepted`` of ``drafted`` draft tokens (a rejection when fewer than all)."""
        if drafted <= 0:
            return
        self.hits = self.hits * self.decay + accepted
        self.misses = self.misses * self.decay + (1 if accepted < drafted else 0)


__all__ = ["AcceptanceRate", "expected_committed", "plan_drafts"]
