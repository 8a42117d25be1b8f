"""Attention whose rows do not depend on the rest of the pass: exact verification in bfloat16 on CPU.

Speculative decoding is exact when the target computes a token's logits the
same way whether the token is verified inside a draft (a pass of many rows) or
decoded on its own (a pass of one row). In float32 the small differences
between kernels almost never flip a token; in bfloat16 they do (our builtin
suite: 60-85% of answers drifted from plain decoding at some near-tie). On
this CPU, measured:

* matrix products with two rows or more give every row bit-identical results
  whatever the row count; a one-row product takes another kernel
  (:attr:`~quickdraft.models.TargetModel.pad_single` therefore feeds a second,
  ignored row to one-token passes);
* torch's SDPA kernels on CPU do not keep rows independent; plain matrix
  products do;
* softmax sums a row in vector lanes by place, and the bfloat16 product of
  weights and values adds keys in aligned pairs (key 2i+1, then 2i), so a row
  also depends on where the keys it sees sit among the pass's keys.

So the model is loaded with this attention (registered with transformers'
``AttentionInterface`` under :data:`NAME`, the library's extension point: no
model code is changed). It is transformers' eager attention computed per
key/value head group: the queries sharing a key/value head are stacked into
one product, so the keys and values are never copied per query head (the
copies cost eager attention about 10% of a decoding step here). Each row's
visible keys among the pass's own are moved together for the softmax
(:func:`own_keys_first`), and the caller lays a tree out so that each row's
keys fall into plain decoding's pairs (:func:`~quickdraft.tree.exact_layout`).
A draft chain or tree is then verified exactly as plain decoding computes each
of its tokens, bit for bit.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

NAME = "quickdraft_grouped"
ORDER_KWARG = "quickdraft_own_keys_first"  # a model call's keyword: the pass's own_keys_first(), for every layer


def grouped_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                      **kwargs) -> tuple[torch.Tensor, None]:
    """Scaled dot-product attention, one product per key/value head group.

    query: [B, H, n, D]; key, value: [B, KV, L, D] with H a multiple of KV
    (head h reads key/value head h // (H / KV), as transformers' ``repeat_kv``);
    attention_mask: additive [B, 1, n, >= L] (from ``eager_mask`` or the
    caller's tree mask; with ``eager_mask`` registered for it, transformers
    always builds one) or None, when every row sees every key, as in
    transformers' eager attention. Returns ([B, n, H, Dv], None).
    """
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise NotImplementedError("attention soft-capping and attention sinks are not supported by quickdraft's "
                                  "attention")
    if dropout or getattr(module, "training", False):
        raise NotImplementedError("quickdraft's attention is for inference (no dropout, no training mode)")
    n = query.shape[2]
    if ORDER_KWARG in kwargs:  # computed once per pass by the caller
        order = kwargs[ORDER_KWARG]
    else:
        order = None if attention_mask is None else _own_keys_first(attention_mask, n, key.shape[2])
    if n <= QUERY_CHUNK:
        return _attend(query, key, value, attention_mask, scaling, order).transpose(1, 2).contiguous(), None
    # A long prefill: bound the [rows, keys] score matrix by taking the queries in chunks (each row's
    # result is the same either way; no chunk has a single row, which would take another kernel).
    bounds = list(range(0, n, QUERY_CHUNK)) + [n]
    if bounds[-1] - bounds[-2] < 2:
        del bounds[-2]
    parts = [_attend(query[:, :, a:z], key, value, None if attention_mask is None else attention_mask[:, :, a:z],
                     scaling, None if order is None else (order[0][..., a:z, :], order[1][..., a:z, :])) for a, z in zip(bounds, bounds[1:])]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


QUERY_CHUNK = 512  # query rows per product in a long pass: 512 rows x 8k keys x 4 bytes = 16 MB per head


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
            scaling: float, order: torch.Tensor | None = None) -> torch.Tensor:
    """[B, H, n, D] attention output for the queries (see :func:`grouped_attention`); order: the rows'
    :func:`_own_keys_first` (each [B, 1, 1, n, N], N the pass's own keys, the last N) or None."""
    b, h, n, _ = query.shape
    kv, d = key.shape[1], value.shape[-1]
    groups = h // kv
    q = query.reshape(b, kv, groups * n, d)  # heads of a group are adjacent: [B, KV, G * n, D]
    scores = torch.matmul(q, key.transpose(2, 3)) * scaling  # [B, KV, G * n, L]
    if attention_mask is not None:
        length = key.shape[2]
        scores = (scores.view(b, kv, groups, n, length) + attention_mask[:, :, None, :, :length]).view(
            b, kv, groups * n, length)
    if order is not None:  # each row's own visible keys first, as plain decoding lays them out
        forward, back = order
        own = forward.shape[-1]
        tail = scores.view(b, kv, groups, n, -1)[..., -own:]  # [B, KV, G, n, N]: the pass's own keys
        tail.copy_(torch.gather(tail, -1, forward.expand_as(tail)))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if order is not None:  # and back to where the keys are
        tail = weights.view(b, kv, groups, n, -1)[..., -own:]
        tail.copy_(torch.gather(tail, -1, back.expand_as(tail)))
    return torch.matmul(weights, value).view(b, h, n, d)  # [B, H, n, D]


def own_keys_first(visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per row of a pass, its visible keys among the pass's own first, in their order, then the
    hidden ones: (order, its inverse), each [B, 1, 1, n, N]; None when every row has that order
    already (a causal pass: plain decoding, a chain, a prefill). visible: [B, n, N] or [n, N] bool,
    the keys each of the n rows sees among the pass's own N keys (N > n when the cache spreads a
    row's keys to several places, :meth:`~quickdraft.cache.KVCache.spread`).

    Softmax sums a row's scores in vector lanes by their place in the row, so a tree node, whose
    ancestors sit with gaps between them among the pass's keys, would add them in another grouping
    than plain decoding, where they are consecutive, and round differently. Moved together, the
    row sums as plain decoding does; the weights are moved back before the product with the
    values, which adds keys in aligned pairs (the pass's layout, :func:`~quickdraft.tree.exact_layout`,
    keeps each row's pairs those of plain decoding). Assumes the rows see all of the cache before
    the pass, as a verification pass does.
    """
    visible = visible.reshape(-1, *visible.shape[-2:])  # [B, n, n]
    n = visible.shape[-1]
    order = torch.argsort((~visible).to(torch.uint8), dim=-1, stable=True)
    if torch.equal(order, torch.arange(n, device=order.device).expand_as(order)):
        return None
    return order[:, None, None], torch.argsort(order, dim=-1)[:, None, None]


def _own_keys_first(attention_mask: torch.Tensor, n: int, length: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """:func:`own_keys_first` from an additive attention mask [B, 1, n, >= length] (keys: ``length``),
    for a caller that did not pass it: assumes the pass's own keys are its n rows (no spread keys;
    :meth:`~quickdraft.models.TargetModel.forward_full` spreads keys only with this attention, and
    passes the order itself)."""
    tail = attention_mask[:, 0, :, length - n:length]  # [B, n, n]
    return own_keys_first(tail > torch.finfo(tail.dtype).min / 2)


AttentionInterface.register(NAME, grouped_attention)
AttentionMaskInterface.register(NAME, eager_mask)
