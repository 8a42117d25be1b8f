"""The drafter contract.

A drafter proposes tokens; the engine verifies them with the target model and
tells the drafter what happened. Two methods, as in transformers' candidate
generators::

    draft = drafter.propose(context)   # Draft: what to verify this step
    drafter.observe(outcome)           # StepOutcome: what the target decided

A drafter never touches the target's KV cache and never decides acceptance, so
no drafter can make decoding lossy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from ..sampling import SamplingParams, argmax_rows


@dataclass(frozen=True)
class DraftContext:
    """What a drafter may look at when proposing.

    tokens: [T] every committed token id (prompt, then generated), int64.
    prompt_len: how many of ``tokens`` are the prompt.
    budget: the most draft tokens the engine will verify this step (already
        capped so that accepted tokens plus the bonus never exceed
        ``max_new_tokens``).
    params: the request's sampling parameters (None: greedy), for drafters
        that sample their drafts from a shaped distribution of their own.
    nodes: the most draft nodes wanted this step (a combining drafter passes
        what is left of its tree's budget); None: the drafter chooses.
    """

    tokens: np.ndarray
    prompt_len: int
    budget: int
    params: SamplingParams | None = None
    nodes: int | None = None


@dataclass(frozen=True)
class Draft:
    """Tokens to verify in one target forward pass.

    tokens: the drafted token ids, n of them.
    parents: for a tree, the parent node of each token (node 0 is the root,
        the last committed token; node i is ``tokens[i - 1]``), so
        ``parents[i] < i + 1``. None means a chain: ``parents = [0, 1, ..., n-1]``.
    draft_probs: [n, V] the distribution each token was sampled from, or None
        for a deterministic drafter (one-hot for speculative sampling).
    extra_embeds: [m, H] optional input embeddings fed after the n tokens in the
        same pass (e.g. PPD's prompt tokens). They are nodes n + 1 .. n + m,
        never accepted and never kept in the KV cache; their logits come back
        in ``StepOutcome.extra_logits``.
    extra_parents: m parent nodes for them (a tree node 0..n or an earlier
        extra node), so each sees its parent's ancestors and its position is
        its depth.
    """

    tokens: tuple[int, ...] = ()
    parents: tuple[int, ...] | None = None
    draft_probs: torch.Tensor | None = None
    extra_embeds: torch.Tensor | None = None
    extra_parents: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if self.parents is not None:
            assert len(self.parents) == n, "one parent per draft token"
            assert all(0 <= p <= i for i, p in enumerate(self.parents)), "parents must precede children"
        if self.draft_probs is not None:
            assert self.draft_probs.dim() == 2 and self.draft_probs.shape[0] == n, "draft_probs must be [n, V]"
        if self.extra_embeds is not None:
            assert self.extra_embeds.dim() == 2, "extra_embeds must be [m, H]"
            assert self.extra_parents is not None and len(self.extra_parents) == self.extra_embeds.shape[0], (
                "one extra parent per extra embedding")
            assert all(0 <= p <= n + i for i, p in enumerate(self.extra_parents)), "extra parents must precede them"
        else:
            assert self.extra_parents is None, "extra_parents without extra_embeds"

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def is_chain(self) -> bool:
        return self.parents is None or all(p == i for i, p in enumerate(self.parents))


EMPTY_DRAFT = Draft()


@dataclass(frozen=True)
class StepOutcome:
    """What one verification step decided, for ``Drafter.observe``.

    draft: the draft that was verified.
    path: node indices (>= 1) of the accepted draft tokens.
    tokens: emitted tokens (accepted draft tokens then the recovered/bonus one).
    target_logits: [n + 1, V] the target's logits at the root and every node.
    target_hidden: [n + 1, H] the target's final hidden state (its lm_head's
        input) at the root and every node; only for a drafter with ``wants_hidden``.
    extra_logits: [m, V] the logits at the draft's extra embeddings, if any.
    target_argmax: the argmax of ``target_logits`` per row, when the verifier
        computed it already (read it through :attr:`argmax`).
    """

    draft: Draft
    path: tuple[int, ...]
    tokens: tuple[int, ...]
    target_logits: torch.Tensor = field(repr=False)
    target_hidden: torch.Tensor | None = field(default=None, repr=False)
    extra_logits: torch.Tensor | None = field(default=None, repr=False)
    target_argmax: tuple[int, ...] | None = field(default=None, repr=False)

    @cached_property
    def argmax(self) -> tuple[int, ...]:
        """The target's argmax at the root and every node: [n + 1] token ids (computed at most once)."""
        if self.target_argmax is not None:
            return self.target_argmax
        return tuple(argmax_rows(self.target_logits))


class Drafter:
    """Base class: proposes nothing and learns nothing (that is plain decoding).

    wants_hidden: set True to receive ``StepOutcome.target_hidden`` (costs a little memory per step).
    wants_prompt_hidden: set True to receive the prompt's hidden states in ``observe_prompt`` (the
        prefill then keeps every layer's output for a moment: memory in proportion to the prompt).
    """

    wants_hidden: bool = False
    wants_prompt_hidden: bool = False

    def propose(self, context: DraftContext) -> Draft:
        return EMPTY_DRAFT

    def observe(self, outcome: StepOutcome) -> None:
        return None

    def observe_prompt(self, tokens: np.ndarray, hidden: torch.Tensor | None) -> None:
        """The prompt was prefilled: ``tokens`` [P] the whole prompt; ``hidden`` [P - 1, H] the target's final
        hidden states at all but its last token (the first step's root), or None unless ``wants_prompt_hidden``."""
        return None

    def reset(self) -> None:
        """Forget per-request state before a new generation (learned statistics may stay)."""
        return None

    def explain(self) -> dict[str, dict[str, int]]:
        """Where this request's drafts came from, for a drafter that chooses among sources.

        ``{source: {"chosen": steps, "nodes": verified nodes, "accepted": tokens}}``
        (``"plain"``: steps without a draft); empty for a single-source drafter.
        """
        return {}
