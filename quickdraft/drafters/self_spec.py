"""Self-speculation: the target model drafts for itself with fewer layers.

The draft is a :class:`~quickdraft.drafters.lm.LayerSubsetLM` (a subset of the
target's decoder layers, then its final norm and LM head) with a KV cache of
its own, so the target's cache is never touched. Which layers to run is chosen
by measurement, not training:

1. *Measure* (once per model, on the first request's prompt): run the full
   model and every candidate layer set over the last ``window`` prompt tokens
   (teacher forcing, fresh caches) and record how often each candidate's
   argmax equals the full model's: the candidate's *match* rate, SWIFT's
   proxy for acceptance.
2. *Choose* the candidate with the highest predicted speed-up
   (:func:`predicted_speedup`) from its acceptance and its cost (the share of
   the weights it reads). When no candidate is predicted to pay, adaptive
   chains stand down for the request: no draft pass at all (not even to keep
   the draft cache in step), so the method costs what plain decoding costs;
   every ``remeasure``-th request measures the candidates again on its prompt.
3. *Learn*: after each request the chosen candidate's estimate moves towards
   the acceptance it actually yielded, so a candidate that disappoints gives
   way to the next best at the next request. The drafter is kept per engine
   (one model), so what it learned is remembered for that model.

A request keeps one layer set (changing it would invalidate the draft cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import QuickdraftError
from .base import EMPTY_DRAFT, Draft, DraftContext, StepOutcome
from .lm import LayerSubsetLM, check_self_spec_support
from .model_drafter import ModelDrafter


def predicted_speedup(alpha: float, cost: float, max_k: int = 8) -> float:
    """Tokens per target-pass-equivalent for per-token acceptance ``alpha`` at the best fixed length.

    A chain of k draft tokens emits (1 - alpha^(k+1)) / (1 - alpha) tokens on
    average and costs 1 + k * cost target passes (Leviathan et al. 2023).

    >>> predicted_speedup(0.0, 0.5)
    1.0
    >>> round(predicted_speedup(0.8, 0.25), 2)
    1.69
    """
    best = 1.0
    for k in range(1, max_k + 1):
        emitted = float(k + 1) if alpha >= 1.0 else (1 - alpha ** (k + 1)) / (1 - alpha)
        best = max(best, emitted / (1 + k * cost))
    return best


def layer_cost(model, layers: Sequence[int]) -> float:
    """The share of a full forward's weights that running ``layers`` reads (decoder layers + LM head)."""
    per_layer = [sum(p.numel() for p in layer.parameters()) for layer in model.model.layers]
    head = model.get_output_embeddings().weight.numel()
    return (sum(per_layer[i] for i in layers) + head) / (sum(per_layer) + head)


@torch.inference_mode()
def match_rates(model, candidates: Sequence[tuple[int, ...]], tokens: Sequence[int]) -> list[float]:
    """How often each candidate layer set's argmax equals the full model's over ``tokens`` (teacher forcing)."""
    total = len(model.model.layers)
    full = LayerSubsetLM(model, range(total))
    reference = full.forward(tokens, 0, full.new_cache()).argmax(-1)  # [T]
    rates = []
    for layers in candidates:
        lm = LayerSubsetLM(model, layers)
        guess = lm.forward(tokens, 0, lm.new_cache()).argmax(-1)  # [T]
        rates.append(float((guess == reference).float().mean()))
    return rates


@dataclass
class Candidate:
    """A layer set, its cost, and its estimated per-token acceptance."""

    layers: tuple[int, ...]
    cost: float
    alpha: float | None = None  # None: not measured yet
    observed: int = 0  # requests it drafted for

    @property
    def speedup(self) -> float:
        return predicted_speedup(self.alpha or 0.0, self.cost)


class SelfSpecDrafter(ModelDrafter):
    """A :class:`ModelDrafter` over the target's own layers, with the layer set chosen by measurement.

    candidates: the layer sets to choose among (or exactly one, fixed by the user).
    window: prompt tokens the first measurement runs over.
    learn: weight of a request's observed acceptance in a candidate's estimate.
    """

    def __init__(self, model, candidates: Sequence[Sequence[int]], *, window: int = 96, learn: float = 0.5,
                 remeasure: int = 16, **settings) -> None:
        check_self_spec_support(model)
        if not candidates:
            raise ValueError("no candidate layer sets")
        self.model = model
        self.candidates = [Candidate(tuple(c), layer_cost(model, c)) for c in candidates]
        self.window, self.learn = window, learn
        self.current: Candidate | None = None
        self._chosen = False  # whether this request's layer set has been chosen
        self._tried = self._accepted = 0  # this request's reached and accepted draft tokens
        self._fixed_cost = settings.get("cost")
        self.remeasure = remeasure
        self.standing_down = False  # this request: nothing is predicted to pay, so no drafting
        self._requests = 0
        settings.setdefault("cost", self.candidates[0].cost)
        super().__init__(LayerSubsetLM(model, self.candidates[0].layers), **settings)

    def reset(self) -> None:
        self._learn_from_request()
        super().reset()
        self._chosen = False  # choose again at the first proposal

    def propose(self, context: DraftContext) -> Draft:
        if not self._chosen:
            self._choose(context.tokens)
        if self.standing_down:
            return EMPTY_DRAFT
        return super().propose(context)

    def observe(self, outcome: StepOutcome) -> None:
        super().observe(outcome)
        if len(outcome.draft):  # per-request acceptance of the layer set in use
            self._tried += min(len(outcome.draft), len(outcome.path) + 1)
            self._accepted += len(outcome.path)

    def _choose(self, tokens: np.ndarray) -> None:
        self._requests += 1
        adaptive = self.k is None and self.tree is None
        unmeasured = any(c.alpha is None for c in self.candidates)
        again = adaptive and self.standing_down and self._requests % self.remeasure == 0
        if len(self.candidates) > 1 and (unmeasured or again):
            window = [int(t) for t in tokens[-self.window:]]
            if len(window) >= 8:
                for cand, rate in zip(self.candidates, match_rates(self.model, [c.layers for c in self.candidates],
                                                                   window)):
                    cand.alpha = rate if cand.alpha is None or again else cand.alpha
        best = max(self.candidates, key=lambda c: (c.speedup, c.alpha or 0.0, -c.cost))
        # Stand down only on evidence, and only where the user fixed neither the layers nor the length.
        self.standing_down = (adaptive and len(self.candidates) > 1 and best.alpha is not None
                              and best.speedup <= 1.0)
        if best is not self.current:
            self.current = best
            self.use(LayerSubsetLM(self.model, best.layers), self._fixed_cost or best.cost)
            self.acceptance = type(self.acceptance)()  # calibration belongs to one layer set
            self.sibling_acceptance = {}
        self._chosen = True
        self._tried = self._accepted = 0

    def _learn_from_request(self) -> None:
        cand = self.current
        if cand is None or not self._chosen:
            return
        if self._tried >= 4:  # enough drafted tokens to say something
            observed = self._accepted / self._tried
            cand.alpha = observed if cand.alpha is None else (1 - self.learn) * cand.alpha + self.learn * observed
            cand.observed += 1

    @property
    def layers(self) -> tuple[int, ...] | None:
        """The layer set in use (None before the first proposal ever)."""
        return None if self.current is None else self.current.layers


def parse_layers(value, total: int) -> tuple[int, ...]:
    """A layer list from an option: ``"0,1,5"`` or a list of ints; checked against the model's layer count."""
    items = value.split(",") if isinstance(value, str) else [value] if isinstance(value, int) else list(value)
    try:
        layers = tuple(sorted({int(str(i).strip()) for i in items if str(i).strip()}))
    except ValueError:
        raise QuickdraftError(f"layers must be comma-separated integers, got {value!r}") from None
    if not layers or layers[0] < 0 or layers[-1] >= total:
        raise QuickdraftError(f"layers must be in 0..{total - 1}, got {value!r}")
    return layers
