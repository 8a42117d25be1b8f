"""A draft language model on llama.cpp (the ``draft`` method's :class:`~quickdraft.drafters.lm.DraftLM`
when the target runs on llama.cpp): a GGUF model in a context of its own, drafting chains."""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import QuickdraftError
from .llamacpp_context import LlamaContext


class LlamaDraftCache:
    """The draft context's sequence 0 as :class:`~quickdraft.drafters.lm.DraftSession` uses a cache:
    a length, and ``crop`` by a negative count."""

    def __init__(self, context: LlamaContext) -> None:
        self.context = context
        self.length = 0

    def crop(self, count: int) -> None:
        assert count <= 0, "crop takes a negative count of entries to drop"
        if count:
            self.length += count
            self.context.seq_rm(0, self.length, -1)


class LlamaCppLM:
    """Logits of tokens appended to a llama.cpp context's cache (chains only)."""

    def __init__(self, context: LlamaContext) -> None:
        self.context = context
        self.vocab_size = context.n_vocab
        self._cache: LlamaDraftCache | None = None

    def new_cache(self) -> LlamaDraftCache:
        """An empty cache; the context has one KV buffer, so it replaces the previous one."""
        self.context.clear()
        self._cache = LlamaDraftCache(self.context)
        return self._cache

    def forward(self, ids: Sequence[int], start: int, cache: LlamaDraftCache,
                positions: Sequence[int] | None = None, allowed: torch.Tensor | None = None) -> torch.Tensor:
        if cache is not self._cache or start != cache.length:
            raise QuickdraftError("this llama.cpp draft cache was replaced, or is out of step")
        if positions is not None or allowed is not None:
            raise QuickdraftError("draft models on llama.cpp draft chains (the `draft` method), not trees")
        n = len(ids)
        logits = self.context.decode(list(ids), range(start, start + n), [(0,)] * n, [True] * n)
        cache.length += n
        return torch.from_numpy(logits)  # [n, V] float32
