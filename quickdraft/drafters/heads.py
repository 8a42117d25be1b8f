"""Medusa-style heads (Cai et al. 2024, Medusa-1): small trained heads on the target's last hidden state.

Head k (0-based) maps the final hidden state h_t (the vector the model feeds its
``lm_head``) through a residual low-rank block, ``h + up_k(silu(down_k h + b_k))``,
and the model's own frozen ``lm_head`` turns the result into logits for the
token at t + k + 2 (the target's logits at t already give t + 1). After a
verification step, the hidden state at the last accepted node yields guesses
for the tokens after the bonus token; the next draft is the best-first sparse
tree over their top-k (:func:`~quickdraft.drafters.topk_tree.best_first_tree`).

Low rank keeps the adapter small (the up/down matrices of rank r instead of a
full H x H layer) and reusing the frozen ``lm_head`` avoids a V x H matrix per
head. The heads run on the target's hidden state, which the engine returns
because this drafter sets ``wants_hidden``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..adapters import Adapter, load_adapter_for
from ..errors import QuickdraftError
from ..sizing import AdaptiveNodeBudget, adaptive_node_budget
from .base import Drafter, StepOutcome
from .registry import BuildContext, register
from .topk_tree import Guesses, GuessTreeDrafter

KIND = "heads"


class ResidualHeads(nn.Module):
    """K residual low-rank blocks over the final hidden state: [N, H] -> [K, N, H].

    Head k computes ``h + up_k(silu(down_k h + b_k))``. With ``token_input``
    it also reads the input embedding e of the token that follows h (the
    target's own next token, known once a step is verified: the bonus token):
    ``h + up_k(silu(down_k h + tok_k e + b_k))``. Predicting the token after a
    known token is much easier than two ahead blind.

    ``up`` starts at zero, so an untrained head reproduces the hidden state
    (and predicts the next token, like the ``lm_head``) and training only has
    to learn the shift to later tokens.
    """

    def __init__(self, count: int, hidden: int, rank: int, *, token_input: bool = False) -> None:
        super().__init__()
        if count < 1 or rank < 1:
            raise ValueError(f"need at least one head of rank >= 1, got {count} heads of rank {rank}")
        self.down = nn.Parameter(torch.randn(count, rank, hidden) * hidden ** -0.5)  # [K, r, H]
        self.bias = nn.Parameter(torch.zeros(count, rank))  # [K, r]
        self.up = nn.Parameter(torch.zeros(count, hidden, rank))  # [K, H, r]
        self.token = nn.Parameter(torch.randn(count, rank, hidden) * hidden ** -0.5) if token_input else None  # [K, r, H]

    @property
    def count(self) -> int:
        return int(self.down.shape[0])

    @property
    def token_input(self) -> bool:
        return self.token is not None

    def forward(self, hidden: torch.Tensor, next_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """hidden: [N, H]; next_embeds: [N, H], the next tokens' input embeddings (token_input only) -> [K, N, H]."""
        inner = torch.einsum("krh,nh->knr", self.down, hidden) + self.bias[:, None, :]  # [K, N, r]
        if self.token is not None:
            assert next_embeds is not None and next_embeds.shape == hidden.shape, "token_input heads need next_embeds"
            inner = inner + torch.einsum("krh,nh->knr", self.token, next_embeds)
        return hidden[None] + torch.einsum("khr,knr->knh", self.up, nn.functional.silu(inner))

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"heads.down": self.down.data, "heads.bias": self.bias.data, "heads.up": self.up.data}
        if self.token is not None:
            out["heads.token"] = self.token.data
        return out

    @staticmethod
    def from_tensors(tensors: dict[str, torch.Tensor]) -> ResidualHeads:
        try:
            down, bias, up = tensors["heads.down"], tensors["heads.bias"], tensors["heads.up"]
        except KeyError as exc:
            raise QuickdraftError(f"heads adapter lacks tensor {exc}") from None
        token = tensors.get("heads.token")
        count, rank, hidden = down.shape
        if (bias.shape != (count, rank) or up.shape != (count, hidden, rank)
                or (token is not None and token.shape != down.shape)):
            raise QuickdraftError(f"heads adapter tensors do not fit together: {tuple(down.shape)}, "
                                  f"{tuple(bias.shape)}, {tuple(up.shape)}")
        heads = ResidualHeads(count, hidden, rank, token_input=token is not None)
        with torch.no_grad():
            heads.down.copy_(down)
            heads.bias.copy_(bias)
            heads.up.copy_(up)
            if token is not None:
                heads.token.copy_(token)
        return heads


class MedusaHeads(GuessTreeDrafter):
    """Drafts trees from K heads' guesses at the last accepted node's hidden state.

    heads: the trained heads (already on the target's device and dtype);
    lm_head: the target's output layer [V, H]; embed: its input embedding
    (for heads with ``token_input``); topk: guesses kept per head;
    nodes, budget: see :class:`~quickdraft.drafters.topk_tree.GuessTreeDrafter`.
    """

    wants_hidden = True

    def __init__(self, heads: ResidualHeads, lm_head: nn.Module, *, embed: nn.Module | None = None,
                 nodes: int | None = 10, topk: int = 4, budget: AdaptiveNodeBudget | None = None) -> None:
        if (nodes is None and budget is None) or (nodes is not None and nodes < 0) or topk < 1:
            raise ValueError(f"need nodes >= 0 (or a budget) and topk >= 1; got {nodes}, {topk}")
        if heads.token_input and embed is None:
            raise ValueError("heads that read the next token need the model's input embedding (embed)")
        super().__init__(nodes=nodes, budget=budget)
        self.heads, self.lm_head, self.embed = heads, lm_head, embed
        self.topk = topk

    @torch.inference_mode()
    def observe(self, outcome: StepOutcome) -> None:
        self.record(outcome)
        if outcome.target_hidden is None:
            self._guesses = None
            return
        last = outcome.path[-1] if outcome.path else 0
        hidden = outcome.target_hidden[last: last + 1]  # [1, H]
        next_embeds = None
        if self.heads.token_input:  # the token after ``last`` is the step's bonus (or recovered) token
            next_embeds = self.embed(torch.tensor([outcome.tokens[-1]], device=hidden.device)).to(hidden.dtype)
        logits = self.lm_head(self.heads(hidden, next_embeds)[:, 0])  # [K, V]
        self._guesses = Guesses.from_logits(logits, self.topk)


def heads_from_adapter(adapter: Adapter, target) -> ResidualHeads:
    heads = ResidualHeads.from_tensors(adapter.tensors)
    hidden = int(target.model.get_output_embeddings().weight.shape[1])
    if heads.down.shape[2] != hidden:
        raise QuickdraftError(f"heads adapter is for hidden size {heads.down.shape[2]}, the model has {hidden}")
    return heads.to(device=target.device, dtype=target.dtype).eval().requires_grad_(False)


def build_heads(target, options: dict[str, Any]) -> MedusaHeads:
    adapter = load_adapter_for(target, KIND, options.get("adapter"))
    picked = {k: int(options[k]) for k in ("nodes", "topk") if options.get(k) is not None}
    budget = None if "nodes" in picked else adaptive_node_budget(target)
    picked.setdefault("nodes", None if budget else 10)
    return MedusaHeads(heads_from_adapter(adapter, target), target.model.get_output_embeddings(),
                       embed=target.model.get_input_embeddings(), budget=budget, **picked)


@register("heads", order=11,
          # with an adapter given (measured, the shipped one next to eagle's cost auto 6% here)
          source={"sees_all": True, "primes": True, "needs": "adapter", "shipped": False},
          needs=("hidden", "layers"), description="Medusa-style heads: trained low-rank heads on the last hidden state guess the next tokens")
def build(ctx: BuildContext) -> Drafter:
    return build_heads(ctx.target, ctx.options)
