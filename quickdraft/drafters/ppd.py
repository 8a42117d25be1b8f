"""Parallel prompt decoding (Chen et al. 2024, "Hardware-Aware Parallel Prompt Decoding").

A few trained *prompt tokens* (embeddings only; the model is frozen) are
appended to the verification input. Attached after a token at position t,
prompt token j (0-based) sits at position t + 1 + j, sees the tokens up to t
and the earlier prompt tokens of its group, and was trained to predict the
token at t + j + 2. So one target pass both verifies this step's draft and
guesses the next step's: the target's own logits at the accepted node give the
bonus token (t + 1), and the prompt tokens attached to that node guess the
tokens after it, which become the next draft tree (best-first over the per-depth
top-k guesses, :func:`~quickdraft.drafters.topk_tree.best_first_tree`).

As in the paper, prompt tokens are attached to tree nodes, so the guesses are
ready whichever path is accepted. Simplification: rather than every node, the
``attach`` nodes where acceptance is most likely to *stop* get prompt tokens
(:func:`~quickdraft.drafters.topk_tree.end_probabilities`); when acceptance
stops elsewhere, the deepest accepted ancestor with prompt tokens lends its
later guesses (shifted by the distance), else the next step drafts nothing and
only collects fresh guesses. The paper's ensemble prompt tokens (several
averaged embeddings per position) are not used: one embedding per position.

Prompt tokens are never accepted and never kept in the KV cache (the engine
keeps only the root and the accepted path), so, like every drafter, this one
cannot change what the model generates.
"""

from __future__ import annotations

from typing import Any

import torch

from ..adapters import Adapter, load_adapter_for
from ..errors import QuickdraftError
from .base import EMPTY_DRAFT, Draft, DraftContext, Drafter, StepOutcome
from .registry import BuildContext, register
from .topk_tree import Guesses, best_first_tree, end_probabilities

KIND = "ppd"


def prompt_tensor_name() -> str:
    return "prompt_embeds"


class ParallelPromptDrafter(Drafter):
    """Drafts trees from the guesses of trained prompt tokens.

    embeds: [m, H] the prompt-token embeddings (in the target's dtype).
    nodes: draft tree nodes per step; topk: guesses kept per depth;
    attach: how many tree nodes (the root included) get the m prompt tokens.
    """

    def __init__(self, embeds: torch.Tensor, *, nodes: int = 10, topk: int = 4, attach: int = 3) -> None:
        if embeds.dim() != 2 or embeds.shape[0] < 1:
            raise ValueError(f"prompt embeddings must be [m, H] with m >= 1, got {tuple(embeds.shape)}")
        if nodes < 0 or topk < 1 or attach < 1:
            raise ValueError(f"need nodes >= 0, topk >= 1, attach >= 1; got {nodes}, {topk}, {attach}")
        self.embeds = embeds
        self.nodes, self.topk, self.attach = nodes, topk, attach
        self.reset()

    @property
    def prompt_tokens(self) -> int:
        return int(self.embeds.shape[0])

    def reset(self) -> None:
        self._guesses: Guesses | None = None
        self._draft: Draft | None = None
        self._attached: dict[int, int] = {}  # tree node -> index of its first prompt token among the extras

    def propose(self, context: DraftContext) -> Draft:
        if context.budget <= 0:
            self._draft = None
            return EMPTY_DRAFT
        tree = best_first_tree(self._guesses, self.nodes, max_depth=context.budget) if self._guesses else None
        tokens, parents = (tree.tokens, tree.parents) if tree else ((), ())
        ends = end_probabilities(tree) if tree else [1.0]
        chosen = sorted(sorted(range(len(ends)), key=lambda node: -ends[node])[: self.attach])
        m, n = self.prompt_tokens, len(tokens)
        extra_parents: list[int] = []
        self._attached = {}
        for node in chosen:
            self._attached[node] = len(extra_parents)
            for j in range(m):  # a chain: node <- prompt 0 <- prompt 1 ...
                extra_parents.append(node if j == 0 else n + len(extra_parents))
        draft = Draft(tokens=tokens, parents=parents, extra_embeds=self.embeds.repeat(len(chosen), 1),
                      extra_parents=tuple(extra_parents))
        self._draft = draft
        return draft

    def observe(self, outcome: StepOutcome) -> None:
        self._guesses = None
        if outcome.draft is not self._draft or outcome.extra_logits is None:
            return  # not our draft (trimmed or merged elsewhere): draft nothing next step, guess afresh
        parents = outcome.draft.parents or ()
        node, shift = (outcome.path[-1] if outcome.path else 0), 0
        while node not in self._attached:  # the root is always attached when acceptance can stop there
            if node == 0:
                return
            node, shift = parents[node - 1], shift + 1
        if shift >= self.prompt_tokens:
            return
        first = self._attached[node]
        logits = outcome.extra_logits[first + shift: first + self.prompt_tokens]  # [m - shift, V]
        self._guesses = Guesses.from_logits(logits, self.topk)


def embeds_from_adapter(adapter: Adapter, target) -> torch.Tensor:
    embeds = adapter.tensors.get(prompt_tensor_name())
    hidden = int(target.model.get_input_embeddings().weight.shape[1])
    if embeds is None or embeds.dim() != 2 or embeds.shape[1] != hidden:
        raise QuickdraftError(f"ppd adapter has no [m, {hidden}] tensor {prompt_tensor_name()!r}")
    return embeds.to(device=target.device, dtype=target.dtype)


def build_ppd(target, options: dict[str, Any]) -> ParallelPromptDrafter:
    adapter = load_adapter_for(target, KIND, options.get("adapter"))
    picked = {k: int(options[k]) for k in ("nodes", "topk", "attach") if options.get(k) is not None}
    return ParallelPromptDrafter(embeds_from_adapter(adapter, target), **picked)


@register("ppd", lossless=True,
          description="parallel prompt decoding: trained prompt tokens guess the next tokens inside the verify pass")
def build(ctx: BuildContext) -> Drafter:
    return build_ppd(ctx.target, ctx.options)
