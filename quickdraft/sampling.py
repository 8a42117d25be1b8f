"""Turning target logits into the distribution we sample from.

Greedy decoding (temperature 0) is an explicit argmax path and never goes
through probabilities, so it is exact and independent of floating-point
softmax details. Sampling applies temperature, then top-k, then top-p
(nucleus), in that order, as transformers' ``generate`` does.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from .errors import QuickdraftError


def argmax_rows(logits: torch.Tensor) -> list[int]:
    """The index of each row's largest entry (the first one on a tie, as ``argmax``): [N, V] -> N ids.

    ``max(dim=-1)`` rather than ``argmax``: on this CPU torch's bfloat16
    ``argmax`` is 3-5x slower (about 1 ms for a tree's 10 rows of 49k logits,
    measured), and it runs on every verification step. Same result, ties and
    NaN included.

    >>> argmax_rows(torch.tensor([[0.0, 2.0, 2.0], [5.0, 1.0, 0.0]], dtype=torch.bfloat16))
    [1, 0]
    """
    return logits.max(dim=-1).indices.tolist()


MIN_TEMPERATURE = 1e-4
SEED_MIN, SEED_MAX = -(1 << 63), (1 << 64) - 1  # what a torch.Generator takes


@dataclass(frozen=True)
class SamplingParams:
    """How the target distribution is shaped.

    >>> SamplingParams().greedy
    True
    >>> SamplingParams(temperature=0.7, top_p=0.9).greedy
    False
    """

    temperature: float = 0.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1.0 = no nucleus filter
    seed: int | None = None

    def __post_init__(self) -> None:
        t = self.temperature
        if not isinstance(t, (int, float)) or math.isnan(t) or math.isinf(t) or t < 0:
            raise QuickdraftError(f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        if t > 100:
            raise QuickdraftError(f"temperature {t} is too large (at most 100)")
        if 0 < t < MIN_TEMPERATURE:  # logits / t would overflow to inf and the probabilities to NaN
            raise QuickdraftError(f"temperature {t!r} is too small: use 0 for greedy or at least {MIN_TEMPERATURE}")
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not SEED_MIN <= seed <= SEED_MAX):
            raise QuickdraftError(f"seed must be an integer in [{SEED_MIN}, {SEED_MAX}], got {seed!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise QuickdraftError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        p = self.top_p
        if not isinstance(p, (int, float)) or math.isnan(p) or not 0 < p <= 1:
            raise QuickdraftError(f"top_p must be in (0, 1], got {p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Probabilities after temperature, top-k and top-p.

    logits: [N, V] (any float dtype) -> probs: [N, V] float32, rows sum to 1.

    >>> p = target_probs(torch.tensor([[0.0, 1.0, 2.0]]), SamplingParams(temperature=1.0, top_k=2))
    >>> [round(x, 3) for x in p[0].tolist()]
    [0.0, 0.269, 0.731]
    """
    if params.greedy:
        raise ValueError("greedy decoding uses argmax, not probabilities")
    assert logits.dim() == 2, f"logits must be [N, V], got {tuple(logits.shape)}"
    scores = logits.float() / params.temperature
    vocab = scores.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(scores, params.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p; the top
        # token is always kept.
        drop_sorted = (cumulative - torch.softmax(sorted_scores, dim=-1)) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return torch.softmax(scores, dim=-1)


def make_generator(seed: int | None) -> torch.Generator:
    """A private RNG so seeded runs are reproducible whatever else uses torch's RNG."""
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


@dataclass(frozen=True)
class Draws:
    """A request's randomness, keyed by token position: ``at(p)`` is a fresh generator for the token at
    position p (prompt tokens included), the same for every draft and every earlier traffic.

    Plain sampling draws the token at p with ``at(p)``; so does the verification of a deterministic
    draft (:func:`~quickdraft.verify.verify_tree_positional`), which therefore emits exactly the
    tokens plain sampling emits with the same seed. ``stream`` salts the keys, so a drafter that
    samples draws apart from the verifier.

    >>> a, b = Draws(seed=7), Draws(seed=7)
    >>> torch.rand((), generator=a.at(12)).item() == torch.rand((), generator=b.at(12)).item()
    True
    >>> torch.rand((), generator=a.at(12)).item() == torch.rand((), generator=a.at(13)).item()
    False
    """

    seed: int
    stream: int = 0

    def at(self, position: int) -> torch.Generator:
        key = _splitmix64((self.seed & _MASK64) ^ _splitmix64(self.stream * 0x100000001B3 + position))
        return torch.Generator().manual_seed(key)

    def salted(self, stream: int) -> Draws:
        return Draws(self.seed, stream)

    @classmethod
    def for_request(cls, seed: int | None) -> Draws:
        """The request's seed, or a fresh random one."""
        return cls(int.from_bytes(os.urandom(8), "little") if seed is None else int(seed))


def sample(probs: torch.Tensor, generator: torch.Generator) -> int:
    """Draw one token id from probs: [V] (on any device: the draw is made on the generator's)."""
    return int(torch.multinomial(probs.to(generator.device), 1, generator=generator).item())
