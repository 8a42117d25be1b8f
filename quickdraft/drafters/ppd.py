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
from ..sizing import AdaptiveNodeBudget, adaptive_node_budget
from .base import EMPTY_DRAFT, Draft, DraftContext, Drafter, StepOutcome
from .registry import BuildContext, register
from .topk_tree import Guesses, best_first_tree, end_probabilities

KIND = "ppd"
TENSOR = "prompt_embeds"  # the adapter's one tensor: [m, H]


class ParallelPromptDrafter(Drafter):
    """Drafts trees from the guesses of trained prompt tokens.

    embeds: [m, H] the prompt-token embeddings (in the target's dtype).
    topk: guesses kept per depth; attach: how many tree nodes (the root
    included) get the m prompt tokens; nodes: a fixed tree size, else
    ``budget`` (an :class:`AdaptiveNodeBudget` over the latency of the whole
    pass, prompt tokens included: hardware-aware) picks it per step.
    """

    def __init__(self, embeds: torch.Tensor, *, nodes: int | None = 10, topk: int = 4, attach: int = 2,
                 budget: AdaptiveNodeBudget | None = None) -> None:
        if embeds.dim() != 2 or embeds.shape[0] < 1:
            raise ValueError(f"prompt embeddings must be [m, H] with m >= 1, got {tuple(embeds.shape)}")
        if (nodes is None and budget is None) or (nodes is not None and nodes < 0) or topk < 1 or attach < 1:
            raise ValueError(f"need nodes >= 0 (or a budget), topk >= 1, attach >= 1; got {nodes}, {topk}, {attach}")
        self.embeds = embeds
        self.nodes, self.topk, self.attach = nodes, topk, attach
        self.budget = budget if nodes is None else None
        self.reset()

    @property
    def prompt_tokens(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def extra_inputs(self) -> int:
        """Prompt tokens fed with every draft (``attach`` groups of them), for a combined method's budget."""
        return self.attach * self.prompt_tokens

    def reset(self) -> None:
        self._guesses: Guesses | None = None
        self._draft: Draft | None = None
        self._size = 0

    def propose(self, context: DraftContext) -> Draft:
        self._size = 0
        if context.budget <= 0:
            self._draft = None
            return EMPTY_DRAFT
        tree = None
        if self._guesses is not None:
            size = self.nodes if self.budget is None else self.budget.next_budget(len(context.tokens))
            self._size = size if context.nodes is None else min(size, context.nodes)
            tree = best_first_tree(self._guesses, self._size, max_depth=context.budget)
        tokens, parents = (tree.tokens, tree.parents) if tree else ((), ())
        ends = end_probabilities(tree) if tree else [1.0]
        chosen = sorted(sorted(range(len(ends)), key=lambda node: -ends[node])[: self.attach])
        m, n = self.prompt_tokens, len(tokens)
        extra_parents: list[int] = []
        for node in chosen:
            for j in range(m):  # a chain: node <- prompt 0 <- prompt 1 ...
                extra_parents.append(node if j == 0 else n + len(extra_parents))
        draft = Draft(tokens=tokens, parents=parents, extra_embeds=self.embeds.repeat(len(chosen), 1),
                      extra_parents=tuple(extra_parents))
        self._draft = draft
        return draft

    def observe(self, outcome: StepOutcome) -> None:
        self._guesses = None
        if self.budget is not None and self._size and outcome.draft is self._draft:
            self.budget.record(self._size, outcome.path)
        draft = outcome.draft
        if outcome.extra_logits is None or draft.extra_parents is None:
            return  # our prompt tokens were not verified (trimmed away): draft nothing next step, guess afresh
        # Read the attachments off the verified draft (ours, or our view of a merged one): the first
        # prompt token of each group hangs on a tree node, the rest of the group follows it.
        n, m = len(draft), self.prompt_tokens
        attached = {parent: i for i, parent in enumerate(draft.extra_parents) if parent <= n}
        parents = draft.parents or tuple(range(n))
        node, shift = (outcome.path[-1] if outcome.path else 0), 0
        while node not in attached:  # borrow the deepest attached ancestor's later guesses
            if node == 0:
                return
            node, shift = parents[node - 1], shift + 1
        if shift >= m:
            return
        first = attached[node]
        logits = outcome.extra_logits[first + shift: first + m]  # [m - shift, V]
        self._guesses = Guesses.from_logits(logits, self.topk)


def embeds_from_adapter(adapter: Adapter, target) -> torch.Tensor:
    embeds = adapter.tensors.get(TENSOR)
    hidden = int(target.model.get_input_embeddings().weight.shape[1])
    if embeds is None or embeds.dim() != 2 or embeds.shape[1] != hidden:
        raise QuickdraftError(f"ppd adapter has no [m, {hidden}] tensor {TENSOR!r}")
    return embeds.to(device=target.device, dtype=target.dtype)


def build_ppd(target, options: dict[str, Any]) -> ParallelPromptDrafter:
    adapter = load_adapter_for(target, KIND, options.get("adapter"))
    embeds = embeds_from_adapter(adapter, target)
    picked = {k: int(options[k]) for k in ("nodes", "topk", "attach") if options.get(k) is not None}
    budget = None
    if "nodes" not in picked:
        extras = picked.get("attach", 2) * int(embeds.shape[0])  # prompt tokens fed with every tree
        budget = adaptive_node_budget(target, extra=extras)
        picked["nodes"] = None if budget else 10
    return ParallelPromptDrafter(embeds, budget=budget, **picked)


@register("ppd", order=10,
          needs=("embeddings",), description="parallel prompt decoding: trained prompt tokens guess the next tokens inside the verify pass")
def build(ctx: BuildContext) -> Drafter:
    return build_ppd(ctx.target, ctx.options)
