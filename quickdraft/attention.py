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
  products do.

So the model is loaded with this attention (registered with transformers'
``AttentionInterface`` under :data:`NAME`, the library's extension point: no
model code is changed). It is transformers' eager attention computed per
key/value head group: the queries sharing a key/value head are stacked into
one product, so the keys and values are never copied per query head (the
copies cost eager attention about 10% of a decoding step here). A draft chain
is then verified exactly as plain decoding computes it; so is a tree's first
path (see :func:`~quickdraft.tree.first_child_order`). Tree nodes off that
path see their ancestors at other places in the pass, which can round
differently.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

NAME = "quickdraft_grouped"


def grouped_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                      **kwargs) -> tuple[torch.Tensor, None]:
    """Scaled dot-product attention, one product per key/value head group.

    query: [B, H, n, D]; key, value: [B, KV, L, D] with H a multiple of KV
    (head h reads key/value head h // (H / KV), as transformers' ``repeat_kv``);
    attention_mask: additive [B, 1, n, >= L] (from ``eager_mask`` or the
    caller's tree mask) or None. Returns ([B, n, H, D], None).
    """
    if kwargs.get("softcap") is not None:
        raise NotImplementedError("attention logit soft-capping is not supported by quickdraft's attention")
    b, h, n, d = query.shape
    kv = key.shape[1]
    groups = h // kv
    q = query.reshape(b, kv, groups * n, d)  # heads of a group are adjacent: [B, KV, G * n, D]
    scores = torch.matmul(q, key.transpose(2, 3)) * scaling  # [B, KV, G * n, L]
    if attention_mask is not None:
        length = key.shape[2]
        scores = (scores.view(b, kv, groups, n, length) + attention_mask[:, :, None, :, :length]).view(
            b, kv, groups * n, length)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(weights, value)  # [B, KV, G * n, D]
    return out.view(b, h, n, d).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, grouped_attention)
AttentionMaskInterface.register(NAME, eager_mask)
