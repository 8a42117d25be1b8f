"""Language models used as drafters, each with a KV cache of its own.

Two kinds, one interface (:class:`DraftLM`):

* :class:`WholeModelLM`: a separate (smaller) causal LM, run as transformers runs it;
* :class:`LayerSubsetLM`: the target model's own modules with only some decoder
  layers run (self-speculation: SWIFT's layer skipping, an early exit through
  the final norm and LM head). It calls the public submodules
  (``embed_tokens``, ``rotary_emb``, ``layers``, ``norm``, ``lm_head``) in the
  order the model's own ``forward`` does, with a cache of its own, so the
  target's cache is never touched; no model file is forked or patched.

:class:`DraftSession` keeps such a model's cache in step with the committed
tokens: it remembers which token ids its cache holds and, on every proposal,
keeps the longest common prefix with the committed tokens and feeds the rest
(the accepted tokens it had not drafted itself and the bonus token). Rollback
after a rejection is the same prefix rule.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch
from transformers import DynamicCache

from ..errors import QuickdraftError


class DraftLM(Protocol):
    """A causal LM the drafter can run: logits for new tokens appended to its cache."""

    vocab_size: int

    def new_cache(self) -> DynamicCache: ...

    def forward(self, ids: Sequence[int], start: int, cache: DynamicCache,
                positions: Sequence[int] | None = None, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [n, V] float32 for ``ids`` appended after ``start`` cached entries.

        positions: n absolute positions (None: ``start, start + 1, ...``).
        allowed: [n, start + n] bool, which cache entries and new tokens each new
            token attends to (None: causal over everything).
        """
        ...


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
    """[n, T] bool -> [1, 1, n, T] additive attention mask (0 where allowed, dtype min elsewhere)."""
    mask = torch.zeros(1, 1, *allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill_(~allowed.to(device), torch.finfo(dtype).min)


def causal_allowed(start: int, n: int) -> torch.Tensor:
    """[n, start + n] bool: token i sees the cache and new tokens up to itself.

    >>> causal_allowed(1, 2).int().tolist()
    [[1, 1, 0], [1, 1, 1]]
    """
    return torch.ones(n, start + n, dtype=torch.bool).tril(diagonal=start)


class WholeModelLM:
    """A separate causal LM (the ``draft`` method's draft model)."""

    def __init__(self, model) -> None:
        self.model = model
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.config)

    @torch.inference_mode()
    def forward(self, ids, start, cache, positions=None, allowed=None) -> torch.Tensor:
        device = self.model.device
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=device)  # [1, n]
        kwargs = {}
        if allowed is not None:
            n = len(ids)
            pos = list(positions) if positions is not None else list(range(start, start + n))
            kwargs = {"position_ids": torch.tensor([pos], device=device),
                      "attention_mask": additive_mask(allowed, self.model.dtype, device)}
        out = self.model(input_ids=input_ids, cache=cache, use_cache=True, **kwargs)
        return out.logits[0].float()  # [n, V]


SUPPORTED_SELF_SPEC = ("llama", "qwen2", "mistral", "qwen3")


class LayerSubsetLM:
    """The target model run through a subset of its decoder layers, then its final norm and LM head.

    layers: increasing indices into ``model.model.layers``. With every layer
    this computes exactly the model's own logits (tested); with fewer it is a
    cheaper, less accurate draft of them.
    """

    def __init__(self, model, layers: Sequence[int]) -> None:
        check_self_spec_support(model)
        inner = model.model
        total = len(inner.layers)
        layers = tuple(int(i) for i in layers)
        if not layers or list(layers) != sorted(set(layers)) or layers[0] < 0 or layers[-1] >= total:
            raise ValueError(f"layers must be increasing indices in [0, {total}), got {layers}")
        self.model = model
        self.layers = layers
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])

    @property
    def fraction(self) -> float:
        """The share of the decoder layers this draft runs (its cost relative to the model, roughly)."""
        return len(self.layers) / len(self.model.model.layers)

    def new_cache(self) -> DynamicCache:
        # Only the layers we run get entries; the others stay uninitialized.
        return DynamicCache(config=self.model.config)

    @torch.inference_mode()
    def forward(self, ids, start, cache, positions=None, allowed=None, *, hidden_out: list | None = None):
        """As :meth:`DraftLM.forward`. ``hidden_out``, if given, receives each run layer's output [1, n, H]."""
        inner = self.model.model
        device = self.model.device
        n = len(ids)
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=device)  # [1, n]
        pos = list(positions) if positions is not None else list(range(start, start + n))
        position_ids = torch.tensor([pos], device=device)  # [1, n]
        if allowed is None:
            allowed = causal_allowed(start, n)
        # Always an explicit mask: SDPA's own causal flag aligns queries top-left, wrong with a cache.
        mask = additive_mask(allowed, self.model.dtype, device)  # [1, 1, n, start + n]
        hidden = inner.embed_tokens(input_ids)  # [1, n, H]
        position_embeddings = inner.rotary_emb(hidden, position_ids)
        for index in self.layers:
            hidden = inner.layers[index](
                hidden, attention_mask=mask, position_ids=position_ids, cache=cache,
                use_cache=True, position_embeddings=position_embeddings,
            )
            if hidden_out is not None:
                hidden_out.append(hidden)
        hidden = inner.norm(hidden)
        return self.model.lm_head(hidden)[0].float()  # [n, V]


def check_self_spec_support(model) -> None:
    """Fail loudly unless the model has the layout self-speculation drives (Llama-style decoders)."""
    model_type = getattr(model.config, "model_type", "?")
    inner = getattr(model, "model", None)
    parts = ("embed_tokens", "rotary_emb", "layers", "norm")
    if (model_type not in SUPPORTED_SELF_SPEC or inner is None or not all(hasattr(inner, p) for p in parts)
            or not hasattr(model, "lm_head")):
        raise QuickdraftError(
            f"self-speculation supports {', '.join(SUPPORTED_SELF_SPEC)} models; this one is {model_type!r}"
        )
    layer_types = getattr(model.config, "layer_types", None) or ()
    if any(t != "full_attention" for t in layer_types):
        raise QuickdraftError(f"self-speculation needs full-attention layers; {model_type!r} has {set(layer_types)}")


class DraftSession:
    """A draft LM's KV cache, kept in step with the committed tokens.

    ``ids`` are the token ids whose keys and values the cache holds, in order.
    Tree drafting appends nodes that are not a chain; :meth:`truncate` back to
    the committed length afterwards.

    >>> common_prefix(np.array([1, 2, 3, 4]), np.array([1, 2, 5]))
    2
    """

    def __init__(self, lm: DraftLM) -> None:
        self.lm = lm
        self.cache = lm.new_cache()
        self.ids: list[int] = []

    def __len__(self) -> int:
        return len(self.ids)

    def truncate(self, length: int) -> None:
        if length < len(self.ids):
            self.cache.crop(length - len(self.ids))  # transformers takes a negative count to drop
            del self.ids[length:]

    def sync(self, tokens: np.ndarray) -> torch.Tensor:
        """Make the cache hold ``tokens`` (all of them); return the logits after the last: [V]."""
        keep = min(common_prefix(np.asarray(self.ids, dtype=np.int64), tokens), len(tokens) - 1)
        self.truncate(keep)
        return self.extend([int(t) for t in tokens[keep:]])[-1]

    def extend(self, ids: Sequence[int]) -> torch.Tensor:
        """Append a chain of tokens; their logits [n, V]."""
        logits = self.lm.forward(ids, len(self.ids), self.cache)
        self.ids.extend(int(t) for t in ids)
        return logits

    def extend_tree(self, ids: Sequence[int], positions: Sequence[int], allowed: torch.Tensor) -> torch.Tensor:
        """Append tree nodes with explicit positions and visibility ([n, len + n] bool); their logits [n, V]."""
        logits = self.lm.forward(ids, len(self.ids), self.cache, positions=positions, allowed=allowed)
        self.ids.extend(-1 for _ in ids)  # never matches a committed token: truncated before reuse
        return logits


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two 1-D int arrays."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n
