"""The target's KV cache: a committed length, rollback, and keeping a tree path.

Invariant: after every step the cache holds exactly the keys and values that a
fresh prefill of the committed tokens (all but the pending root token) would
give. An operation that cannot keep it raises; it never silently does nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class SpreadLayer(DynamicLayer):
    """transformers' ``DynamicLayer``, whose next update can place a pass's entries at several places.

    ``spread``: None (entries are appended as they come) or an index [S] into
    the pass's n rows: the pass then appends S entries, entry s being row
    ``spread[s]`` (a row may be repeated). The returned keys and values, which
    the attention reads, are the cache's own tensors, as in ``DynamicLayer``.
    """

    spread: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.spread is not None:
            key_states = key_states.index_select(-2, self.spread)
            value_states = value_states.index_select(-2, self.spread)
        return super().update(key_states, value_states, *args, **kwargs)


class KVCache:
    """Owns a transformers ``DynamicCache`` for one sequence (batch size 1)."""

    def __init__(self, config) -> None:
        self.inner = DynamicCache(config=config)
        for layer in self.inner.layers:
            if getattr(layer, "is_sliding", False):
                # Sliding-window layers drop old entries, which a rollback
                # would need back. Refuse rather than corrupt the cache.
                raise NotImplementedError(
                    "sliding-window attention layers are not supported by quickdraft's KV rollback yet"
                )
        # Our layers are transformers' own plus spread() (other kinds, e.g. a KV-sharing model's, stay as built).
        self.inner.layers = [SpreadLayer() if type(layer) is DynamicLayer else layer for layer in self.inner.layers]

    @property
    def can_spread(self) -> bool:
        """Whether every layer can take :meth:`spread`."""
        return all(isinstance(layer, SpreadLayer) for layer in self.inner.layers)

    @contextmanager
    def spread(self, rows: torch.Tensor) -> Iterator[None]:
        """Within the block, one pass's rows enter the cache as entries ``rows`` ([S] long, on the model's
        device; entry s: the pass's row ``rows[s]``, a row may enter more than once): the cache grows by S.

        A tree pass uses it to give a node's keys and values a second place in the
        attention's key layout (see :func:`~quickdraft.tree.exact_layout`) without
        computing the node twice.
        """
        if not self.can_spread:
            raise NotImplementedError("this model's cache layers cannot spread a pass's entries")
        for layer in self.inner.layers:
            layer.spread = rows
        try:
            yield
        finally:
            for layer in self.inner.layers:
                layer.spread = None

    def __len__(self) -> int:
        return int(self.inner.get_seq_length())

    def truncate(self, length: int) -> None:
        """Drop every entry at position >= length."""
        current = len(self)
        if not 0 <= length <= current:
            raise ValueError(f"cannot truncate a cache of length {current} to {length}")
        if length < current:
            self.inner.crop(length - current)  # transformers takes a negative count to drop
        assert len(self) == length

    def keep(self, start: int, offsets: list[int]) -> None:
        """Keep ``start`` committed entries plus the entries at ``start + o`` for o in offsets.

        Used after a tree verification: the accepted path's nodes are gathered
        into place right after the committed prefix, so no second forward pass
        is needed. ``offsets`` must be increasing (ancestors come first).
        """
        assert all(a < b for a, b in zip(offsets, offsets[1:])), "offsets must increase"
        self.select(start, offsets)

    @torch.inference_mode()
    def select(self, start: int, rows: list[int]) -> None:
        """Keep ``start`` entries plus entry ``start + rows[i]`` at ``start + i`` for each i (distinct rows,
        in any order: a tree pass's entries back in node order, say); drop the rest."""
        end = start + len(rows)
        if rows == list(range(len(rows))):
            self.truncate(end)
            return
        layers = self.inner.layers
        index = torch.tensor([start + r for r in rows], dtype=torch.long, device=layers[0].keys.device)
        for layer in layers:  # in place: the committed prefix is not copied
            for name in ("keys", "values"):
                tensor = getattr(layer, name)  # [B, H, T, D]
                tensor[:, :, start:end] = tensor.index_select(2, index.to(tensor.device))
                setattr(layer, name, tensor[:, :, :end])
        assert len(self) == end
