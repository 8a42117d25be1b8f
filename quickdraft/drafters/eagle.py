"""``eagle``: a trained feature-level drafter in the style of EAGLE (Li et al. 2024), small enough for a CPU.

Medusa-style heads guess each future token from one hidden state, blind to the
tokens between. EAGLE instead drafts *autoregressively at the feature level*:
one trained decoder layer reads, at position i, the target's final hidden
state f_i (what its output layer reads) together with the embedding of the
token x_{i+1} that followed, and predicts f_{i+1}; the target's own frozen
output layer turns that into a guess for x_{i+2}. The prediction is fed back
(with the embedding of the guessed token) for the next depth, and the layer
attends to the features of everything generated so far, so each guess knows
the guesses before it.

Cheap on a CPU: the decoder layer is built by transformers from the target's
own config with a single layer (the target's layer class, no model code
copied), its MLP narrower; and the output layer is restricted to a vocabulary
subset (the tokens the model uses most in its own answers), a few thousand
rows instead of the full vocabulary, so a draft step costs a small fraction
of a target pass.

Decoding: after each verification the features of the root and the accepted
nodes (the engine returns the target's hidden states: ``wants_hidden``) are
kept (the prompt's, from the prefill, at the start: ``observe_prompt``); when
it is next asked for a draft, one pass of the layer appends all of them to the
drafter's own KV cache, then ``depth`` guesses are rolled out
from the last one (top-k kept per depth; the rolled-out entries are dropped
again) and the next draft is the best-first sparse tree over them
(:func:`~quickdraft.drafters.topk_tree.best_first_tree`, node budget from the
hardware profile as for ``heads``). Reading the prompt's features lets it
follow text the answer copies from the prompt. Lossless like every method:
the target verifies.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, DynamicCache

from ..adapters import Adapter, load_adapter_for
from ..errors import QuickdraftError
from ..profile import AdaptiveNodeBudget, adaptive_node_budget
from .base import EMPTY_DRAFT, Draft, DraftContext, Drafter, StepOutcome
from .registry import BuildContext, register
from .topk_tree import Guesses, GuessTreeDrafter

KIND = "eagle"


def layer_config(config, intermediate: int):
    """The target's (text) config reduced to one decoder layer with an ``intermediate``-wide MLP.

    Its token embedding is never used (inputs are given as embeddings), so its vocabulary is one token.
    """
    config = copy.deepcopy(config.get_text_config() if hasattr(config, "get_text_config") else config)
    config.num_hidden_layers = 1
    config.intermediate_size = intermediate
    config.vocab_size = 1
    config.pad_token_id = None
    for name in ("layer_types", "sliding_window_pattern"):  # per-layer lists of a many-layer model
        if isinstance(getattr(config, name, None), list):
            setattr(config, name, getattr(config, name)[:1])
    config.use_cache = True
    return config


class FeatureDrafter(nn.Module):
    """fc([f_i ; e(x_{i+1})]) -> one decoder layer (+ final norm) -> the predicted f_{i+1}.

    vocab: [V'] token ids the guesses are drawn from (a buffer; the output
    layer's rows for them are taken from the target at build time).
    """

    def __init__(self, config, *, intermediate: int, vocab: torch.Tensor, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        hidden = int(config.get_text_config().hidden_size if hasattr(config, "get_text_config") else config.hidden_size)
        self.fc = nn.Linear(2 * hidden, hidden, bias=False)
        self.layer = AutoModel.from_config(layer_config(config, intermediate), attn_implementation=attn_implementation,
                                           dtype=torch.float32)  # trained in float32; moved to the target's dtype to draft
        self.layer.get_input_embeddings().requires_grad_(False)
        self.register_buffer("vocab", vocab.to(torch.long), persistent=False)
        self.intermediate = intermediate

    def forward(self, features: torch.Tensor, next_embeds: torch.Tensor, positions: torch.Tensor, *,
                cache: DynamicCache | None = None) -> torch.Tensor:
        """features, next_embeds: [1, n, H]; positions: [1, n] -> predicted next features [1, n, H]."""
        inputs = self.fc(torch.cat([features, next_embeds.to(features.dtype)], dim=-1))
        start = 0 if cache is None else cache.get_seq_length()
        out = self.layer(inputs_embeds=inputs, position_ids=positions, past_key_values=cache,
                         use_cache=cache is not None,
                         cache_position=torch.arange(start, start + inputs.shape[1], device=inputs.device))
        return out.last_hidden_state

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        """The trained parameters by name (the unused token embedding left out), plus ``vocab``."""
        out = {name: p.data for name, p in self.named_parameters() if "embed_tokens" not in name}
        out["vocab"] = self.vocab
        return out

    @staticmethod
    def from_tensors(config, tensors: dict[str, torch.Tensor], hparams: dict) -> FeatureDrafter:
        if "vocab" not in tensors or "fc.weight" not in tensors:
            raise QuickdraftError("eagle adapter lacks its 'vocab' or 'fc.weight' tensor")
        drafter = FeatureDrafter(config, intermediate=int(hparams.get("intermediate", 0) or 1), vocab=tensors["vocab"])
        own = {name: p for name, p in drafter.named_parameters() if "embed_tokens" not in name}
        missing = sorted(set(own) - set(tensors))
        if missing:
            raise QuickdraftError(f"eagle adapter lacks tensor {missing[0]!r} (trained for another model family?)")
        with torch.no_grad():
            for name, param in own.items():
                if tensors[name].shape != param.shape:
                    raise QuickdraftError(f"eagle adapter tensor {name} has shape {tuple(tensors[name].shape)}, "
                                          f"the model needs {tuple(param.shape)}")
                param.copy_(tensors[name])
        return drafter


class EagleDrafter(GuessTreeDrafter):
    """Drafts trees from feature-level rollouts; see the module docstring.

    drafter: the trained :class:`FeatureDrafter` (on the target's device and
    dtype); embed: the target's input embedding; head: [V', H] the target's
    output-layer rows for ``drafter.vocab``; depth: guesses rolled out per
    step; topk: guesses kept per depth; nodes or budget: as for ``heads``.
    """

    wants_hidden = True
    wants_prompt_hidden = True

    def __init__(self, drafter: FeatureDrafter, embed: nn.Module, head: torch.Tensor, *, depth: int = 3,
                 topk: int = 4, nodes: int | None = 10, budget: AdaptiveNodeBudget | None = None) -> None:
        if depth < 1 or topk < 1 or (nodes is None and budget is None) or (nodes is not None and nodes < 0):
            raise ValueError(f"need depth >= 1, topk >= 1 and nodes >= 0 (or a budget); got {depth}, {topk}, {nodes}")
        super().__init__(nodes=nodes, budget=budget)
        self.drafter, self.embed, self.head = drafter, embed, head
        self.depth, self.topk = depth, topk
        self.reset()

    def reset(self) -> None:
        super().reset()
        self._cache = DynamicCache()  # entry i: the target's feature at position i and the token after it
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (features [k, H], tokens [k]) not yet cached
        self._next_root = -1  # the position of the next step's root, where the guesses apply
        self._root = -1  # the position of this step's root (set by propose)

    def propose(self, context: DraftContext) -> Draft:
        self._root = len(context.tokens) - 1
        if self._root != self._next_root:  # not the tokens it followed: start over from here
            self._cache, self._pending, self._guesses = DynamicCache(), [], None
        if context.nodes == 0 or context.budget <= 0:  # not asked (auto keeping it up to date): no work
            self._size = 0
            return EMPTY_DRAFT
        if self._pending:
            self._catch_up()
        return super().propose(context)

    @torch.inference_mode()
    def observe_prompt(self, tokens, hidden: torch.Tensor | None) -> None:
        """The prompt's features (all but its last token's) wait for the cache; the first step drafts from them."""
        self.reset()
        if hidden is None or len(tokens) < 2:
            return
        self._pending.append((hidden, torch.as_tensor(tokens[1:], device=hidden.device)))  # the token after each
        self._next_root = len(tokens) - 1

    @torch.inference_mode()
    def observe(self, outcome: StepOutcome) -> None:
        """Keep the features of the root and the accepted nodes; the layer runs over them when next asked."""
        self.record(outcome)
        self._guesses = None
        if outcome.target_hidden is None or self._root < 0:
            return
        nodes = [0, *outcome.path]  # the root and the accepted nodes, at positions root, root + 1, ...
        following = torch.tensor(list(outcome.tokens), device=outcome.target_hidden.device)  # the token after each
        self._pending.append((outcome.target_hidden[nodes], following))
        self._next_root = self._root + len(nodes)

    @torch.inference_mode()
    def _catch_up(self) -> None:
        """Run the layer once over every entry observed since it last drafted, then roll out the guesses."""
        features = torch.cat([f for f, _ in self._pending])
        following = torch.cat([t for _, t in self._pending])
        self._pending = []
        self._extend(features[None], following[None], start=self._next_root - features.shape[0])

    def _extend(self, features: torch.Tensor, following: torch.Tensor, *, start: int) -> None:
        """Append entries at positions start.. (features [1, k, H], the token ids after them [1, k]) and guess
        the tokens after the next root (position start + k)."""
        k = features.shape[1]
        positions = torch.arange(start, start + k, device=features.device)[None]
        out = self.drafter(features, self.embed(following), positions, cache=self._cache)[:, -1:]  # [1, 1, H]
        self._next_root = start + k
        logits = rollout(self.drafter, self.embed, self.head, out, self._cache, self._next_root, self.depth)  # [D, V']
        probs, index = torch.softmax(logits.float(), dim=-1).topk(min(self.topk, self.head.shape[0]), dim=-1)
        self._guesses = Guesses(tokens=self.drafter.vocab[index], probs=probs)


def rollout(drafter: FeatureDrafter, embed: nn.Module, head: torch.Tensor, out: torch.Tensor, cache: DynamicCache,
            position: int, depth: int) -> torch.Tensor:
    """Guess ``depth`` tokens from a predicted feature, each from the last: logits [depth, V'] over ``drafter.vocab``.

    out: [1, 1, H] the predicted feature at ``position`` (the token there is
    known: the root); the guess of depth d is the token at position + d + 1,
    and the entry at position + d (that predicted feature with the guessed
    token after it) predicts the feature for the next depth. embed: the target's input embedding; head:
    [V', H] its output-layer rows for the vocabulary. The cache holds the
    rolled-out entries only while this runs (it is cropped back).
    """
    committed = cache.get_seq_length()
    rows = []
    for d in range(depth):
        logits = out[0, 0] @ head.T  # [V']
        rows.append(logits)
        if d + 1 < depth:
            guess = drafter.vocab[logits.argmax()].view(1, 1)
            out = drafter(out, embed(guess), torch.tensor([[position + d]], device=out.device), cache=cache)
    extra = cache.get_seq_length() - committed
    if extra:
        cache.crop(-extra)  # transformers takes a negative count to drop
    return torch.stack(rows)


def drafter_from_adapter(adapter: Adapter, target) -> FeatureDrafter:
    drafter = FeatureDrafter.from_tensors(target.model.config, adapter.tensors, adapter.hparams)
    vocab = drafter.vocab
    if vocab.numel() == 0 or int(vocab.max()) >= target.vocab_size or int(vocab.min()) < 0:
        raise QuickdraftError(f"eagle adapter's vocabulary does not fit the model's {target.vocab_size} tokens")
    return drafter.to(device=target.device, dtype=target.dtype).eval().requires_grad_(False)


def build_eagle(target, options: dict[str, Any]) -> EagleDrafter:
    adapter = load_adapter_for(target, KIND, options.get("adapter"))
    drafter = drafter_from_adapter(adapter, target)
    head = target.model.get_output_embeddings().weight.detach()[drafter.vocab].contiguous()  # [V', H]
    picked = {k: int(options[k]) for k in ("nodes", "topk", "depth") if options.get(k) is not None}
    budget = None if "nodes" in picked else adaptive_node_budget(target)
    picked.setdefault("nodes", None if budget else 10)
    return EagleDrafter(drafter, target.model.get_input_embeddings(), head, budget=budget, **picked)


@register("eagle", lossless=True,
          description="EAGLE-style: one trained decoder layer drafts autoregressively on the target's hidden states")
def build(ctx: BuildContext) -> Drafter:
    return build_eagle(ctx.target, ctx.options)
