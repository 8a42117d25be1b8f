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
it is next asked for a draft (or, while it is not asked, once 32 are waiting),
one pass of the layer appends all of them to the drafter's own KV cache, then
a tree is rolled out ``depth`` deep from the last one as in EAGLE-2
(:func:`tree_rollout`: the ``topk`` most probable paths are expanded at each
depth, all in one pass of the layer, so an alternative guess gets children of
its own; the rolled-out entries are dropped again) and the draft is its most
probable nodes (:func:`top_nodes`; node budget from the
hardware profile as for ``heads``). Reading the prompt's features lets it
follow text the answer copies from the prompt. Lossless like every method:
the target verifies.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, DynamicCache

from ..adapters import Adapter, load_adapter_for
from ..errors import QuickdraftError
from ..sizing import AdaptiveNodeBudget, adaptive_node_budget
from ..tree import ancestor_mask
from .base import EMPTY_DRAFT, Draft, DraftContext, Drafter, StepOutcome
from .registry import BuildContext, register
from .topk_tree import GuessTreeDrafter

KIND = "eagle"
CATCH_UP = 32  # entries kept waiting at most while it is not asked (so catching up when asked stays cheap)


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
                cache: DynamicCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """features, next_embeds: [1, n, H]; positions: [1, n] -> predicted next features [1, n, H].

        mask: an additive [1, 1, n, cached + n] attention mask (a tree of entries), else causal.
        """
        inputs = self.fc(torch.cat([features, next_embeds.to(features.dtype)], dim=-1))
        start = 0 if cache is None else cache.get_seq_length()
        out = self.layer(inputs_embeds=inputs, position_ids=positions, cache=cache,
                         use_cache=cache is not None, attention_mask=mask,
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
    step (2: measured here, a third depth costs more than it is accepted);
    topk: paths expanded per depth; pool: candidates kept per depth (default
    ``2 * topk``); nodes or budget: as for ``heads``.
    """

    wants_hidden = True
    wants_prompt_hidden = True

    def __init__(self, drafter: FeatureDrafter, embed: nn.Module, head: torch.Tensor, *, depth: int = 2,
                 topk: int = 4, pool: int | None = None, nodes: int | None = 10,
                 budget: AdaptiveNodeBudget | None = None) -> None:
        pool = 2 * topk if pool is None else pool
        if depth < 1 or topk < 1 or pool < topk or (nodes is None and budget is None) or (nodes or 0) < 0:
            raise ValueError(f"need depth >= 1, topk >= 1, pool >= topk and nodes >= 0 (or a budget); "
                             f"got {depth}, {topk}, {pool}, {nodes}")
        super().__init__(nodes=nodes, budget=budget)
        self.drafter, self.embed, self.head = drafter, embed, head
        self.depth, self.topk, self.pool = depth, topk, pool
        self.reset()

    def reset(self) -> None:
        super().reset()
        self._cache = DynamicCache()  # entry i: the target's feature at position i and the token after it
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (features [k, H], tokens [k]) not yet cached
        self._last: torch.Tensor | None = None  # [1, 1, H] the predicted feature at the next root (none pending)
        self._candidates: Candidates | None = None
        self._next_root = -1  # the position of the next step's root, where the guesses apply
        self._root = -1  # the position of this step's root (set by propose)

    @torch.inference_mode()
    def propose(self, context: DraftContext) -> Draft:
        self._root = len(context.tokens) - 1
        if self._root != self._next_root:  # not the tokens it followed: start over from here
            self._cache, self._pending, self._last, self._candidates = DynamicCache(), [], None, None
        asked = context.nodes != 0 and context.budget > 0
        if self._pending and (asked or sum(len(t) for _, t in self._pending) >= CATCH_UP):
            self._catch_up()  # when not asked (auto keeping it up to date), only now and then, in small pieces
        if not asked:
            self._size = 0
            return EMPTY_DRAFT
        if self._candidates is None and self._last is not None:
            self._candidates = tree_rollout(self.drafter, self.embed, self.head, self._last, self._cache,
                                            self._next_root, depth=min(self.depth, context.budget), topk=self.topk,
                                            pool=self.pool)
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
        self._candidates = self._last = None
        if outcome.target_hidden is None or self._root < 0:
            return
        nodes = [0, *outcome.path]  # the root and the accepted nodes, at positions root, root + 1, ...
        following = torch.tensor(list(outcome.tokens), device=outcome.target_hidden.device)  # the token after each
        self._pending.append((outcome.target_hidden[nodes], following))
        self._next_root = self._root + len(nodes)

    def _catch_up(self) -> None:
        """One pass of the layer over every entry observed since the last catch-up (features [k, H] at the
        positions before the next root, each with the token after it); its last output predicts the feature at
        the next root."""
        features = torch.cat([f for f, _ in self._pending])[None]  # [1, k, H]
        following = torch.cat([t for _, t in self._pending])[None]  # [1, k]
        self._pending = []
        start = self._next_root - features.shape[1]
        positions = torch.arange(start, self._next_root, device=features.device)[None]
        self._last = self.drafter(features, self.embed(following), positions, cache=self._cache)[:, -1:]

    def _ready(self) -> bool:
        return self._candidates is not None

    def _tree(self, size: int, max_depth: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return top_nodes(self._candidates, size, max_depth)


@dataclass(frozen=True)
class Candidates:
    """Guessed nodes below the root: token, parent (an earlier candidate, -1: the root), depth, and the log
    probability of the path from the root (the product of the drafter's probabilities along it)."""

    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    depths: tuple[int, ...]
    scores: tuple[float, ...]


def top_nodes(candidates: Candidates, size: int, max_depth: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(tokens, parents) of the ``size`` best candidates at most ``max_depth`` deep, best first.

    A path's score never exceeds its prefix's, so the best nodes keep their
    parents (ties: the shallower first; a node whose parent is cut is skipped).

    >>> c = Candidates(tokens=(5, 6, 7, 8), parents=(-1, -1, 0, 1), depths=(1, 1, 2, 2),
    ...                scores=(-0.1, -1.5, -0.5, -1.6))
    >>> top_nodes(c, 3, 2)          # 5, then 5-7, then 6 (its child 8 misses the size)
    ((5, 7, 6), (0, 1, 0))
    >>> top_nodes(c, 3, 1)
    ((5, 6), (0, 0))
    """
    order = sorted((i for i, d in enumerate(candidates.depths) if d <= max_depth),
                   key=lambda i: (-candidates.scores[i], candidates.depths[i], i))
    node_of = {-1: 0}
    tokens: list[int] = []
    parents: list[int] = []
    for i in order:
        if len(tokens) >= size:
            break
        parent = candidates.parents[i]
        if parent in node_of:
            tokens.append(candidates.tokens[i])
            parents.append(node_of[parent])
            node_of[i] = len(tokens)
    return tuple(tokens), tuple(parents)


@torch.inference_mode()
def tree_rollout(drafter: FeatureDrafter, embed: nn.Module, head: torch.Tensor, out: torch.Tensor,
                 cache: DynamicCache, position: int, *, depth: int, topk: int, pool: int) -> Candidates:
    """Guess a tree below the root, as EAGLE-2 does: at each depth the ``topk`` best paths are expanded.

    out: [1, 1, H] the predicted feature at ``position`` (the root's). The
    ``pool`` best children (by path probability) of the expanded nodes at each
    depth become candidates, and the ``topk`` best of them are expanded next:
    fed to the layer in one pass, each entry (the feature that predicted a
    node, with the node's token) attending to the cache and to its own
    ancestors' entries. Every depth costs one pass of the layer, as a chain
    does, but every expanded guess gets its children from its own context.
    The cache holds the rolled-out entries only while this runs.
    """
    committed = cache.get_seq_length()
    vocab = drafter.vocab
    tokens: list[int] = []
    parents: list[int] = []
    depths: list[int] = []
    scores: list[float] = []
    entry_parent: list[int] = []  # per rolled-out entry: its parent's entry (-1: none)
    entry_of: dict[int, int] = {}  # candidate -> its rolled-out entry
    logp = torch.log_softmax((out[0] @ head.T).float(), dim=-1)  # [1, V']
    frontier, feeding = [-1], out  # expanded nodes (-1: the root) and the features their entries predicted
    for d in range(1, depth + 1):
        so_far = torch.tensor([scores[i] if i >= 0 else 0.0 for i in frontier], device=logp.device)
        total = logp + so_far[:, None]  # [k, V']
        best, flat = total.flatten().topk(min(pool, total.numel()))
        rows = (flat // total.shape[1]).tolist()
        picked = vocab[flat % total.shape[1]].tolist()
        new = []
        for score, row, token in zip(best.tolist(), rows, picked):
            new.append(len(tokens))
            tokens.append(token)
            parents.append(frontier[row])
            depths.append(d)
            scores.append(score)
        if d == depth:
            break
        frontier, rows = new[:topk], rows[:topk]
        feeding = feeding[:, rows]  # [1, k, H] the feature that predicted each expanded node
        for i in frontier:
            entry_of[i] = len(entry_parent)
            entry_parent.append(entry_of.get(parents[i], -1))
        k, rolled = len(frontier), len(entry_parent)
        allowed = torch.ones(k, committed + rolled, dtype=torch.bool)
        # the rolled-out entries as a tree under a stand-in root (node e + 1 is entry e): each sees its ancestors
        allowed[:, committed:] = ancestor_mask([p + 1 for p in entry_parent])[rolled - k + 1:, 1:]
        mask = torch.zeros(1, 1, k, committed + rolled, dtype=feeding.dtype)
        mask.masked_fill_(~allowed, torch.finfo(feeding.dtype).min)
        ids = torch.tensor([[tokens[i] for i in frontier]], device=out.device)
        positions = torch.full((1, k), position + d - 1, device=out.device)
        feeding = drafter(feeding, embed(ids), positions, cache=cache, mask=mask.to(out.device))  # [1, k, H]
        logp = torch.log_softmax((feeding[0] @ head.T).float(), dim=-1)  # [k, V']
    extra = cache.get_seq_length() - committed
    if extra:
        cache.crop(-extra)  # transformers takes a negative count to drop
    return Candidates(tuple(tokens), tuple(parents), tuple(depths), tuple(scores))


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
    picked = {k: int(options[k]) for k in ("nodes", "topk", "pool", "depth") if options.get(k) is not None}
    budget = None if "nodes" in picked else adaptive_node_budget(target)
    picked.setdefault("nodes", None if budget else 10)
    return EagleDrafter(drafter, target.model.get_input_embeddings(), head, budget=budget, **picked)


@register("eagle", order=12,
          # keeps up lazily (it stores the verified features; its layer runs only when asked). Not a default
          # source on a GPU: there its layer's passes cost more than its guesses add (H100, embedded model,
          # float32, the builtin suite's 7 first prompts: auto 72 tok/s with it, 82 without, ngram alone 84)
          source={"learns": True, "sees_all": True, "needs": "adapter", "avoid": ("gpu",)},
          needs=("hidden", "embeddings"), description="EAGLE-style: one trained decoder layer drafts autoregressively on the target's hidden states")
def build(ctx: BuildContext) -> Drafter:
    return build_eagle(ctx.target, ctx.options)
