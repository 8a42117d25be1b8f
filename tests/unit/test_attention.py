"""The engine's grouped attention: the same result as transformers' eager attention, rows independent of the pass."""

from types import SimpleNamespace

import pytest
import torch
from transformers.models.llama.modeling_llama import eager_attention_forward

from quickdraft import attention


def tensors(n: int, length: int, *, heads: int = 6, kv: int = 2, dim: int = 8, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, n, dim, generator=g).to(dtype)
    k = torch.randn(1, kv, length, dim, generator=g).to(dtype)
    v = torch.randn(1, kv, length, dim, generator=g).to(dtype)
    mask = torch.zeros(1, 1, n, length, dtype=dtype)
    for row in range(n):  # causal over the last n keys, plus one hole per row to look like a tree
        mask[0, 0, row, length - n + row + 1:] = torch.finfo(dtype).min
        if row >= 2:
            mask[0, 0, row, length - n + row - 1] = torch.finfo(dtype).min
    return q, k, v, mask


def test_grouped_attention_equals_eager_attention():
    q, k, v, mask = tensors(5, 12)
    module = SimpleNamespace(num_key_value_groups=3, training=False)
    want, _ = eager_attention_forward(module, q, k, v, mask, scaling=0.35)
    got, _ = attention.grouped_attention(module, q, k, v, mask, scaling=0.35)
    assert got.shape == want.shape == (1, 5, 6, 8)
    assert torch.allclose(got, want, atol=1e-5)
    no_mask, _ = attention.grouped_attention(module, q, k, v, None, scaling=0.35)
    assert torch.allclose(no_mask, eager_attention_forward(module, q, k, v, None, scaling=0.35)[0], atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_long_passes_are_taken_in_chunks_with_the_same_rows(monkeypatch, dtype):
    q, k, v, mask = tensors(9, 20, dtype=dtype)
    module = SimpleNamespace(num_key_value_groups=3, training=False)
    whole, _ = attention.grouped_attention(module, q, k, v, mask, scaling=0.35)
    monkeypatch.setattr(attention, "QUERY_CHUNK", 4)  # 9 rows: chunks of 4 and 5 (never a lone row)
    chunked, _ = attention.grouped_attention(module, q, k, v, mask, scaling=0.35)
    assert torch.equal(chunked, whole)


def test_soft_capping_is_refused():
    q, k, v, mask = tensors(2, 4)
    with pytest.raises(NotImplementedError, match="soft-capping"):
        attention.grouped_attention(SimpleNamespace(num_key_value_groups=3), q, k, v, mask, scaling=1.0, softcap=30.0)


def tree_rows_and_plain_rows(parents, start: int, *, seed: int):
    """bfloat16 attention rows of a tree pass (nodes in exact_layout's slots) and of each node decoded
    alone (its path in consecutive positions, in a two-row pass as pad_single does)."""
    from quickdraft.tree import ancestor_mask, exact_layout, path_to

    n = len(parents) + 1
    nodes, slot_parents = exact_layout(parents, start)
    g = torch.Generator().manual_seed(seed)
    heads, kv, dim = 9, 3, 64
    cache_k = torch.randn(1, kv, start, dim, generator=g).bfloat16()
    cache_v = torch.randn(1, kv, start, dim, generator=g).bfloat16()
    node_q = torch.randn(1, heads, n, dim, generator=g).bfloat16()
    node_k = torch.randn(1, kv, n, dim, generator=g).bfloat16()
    node_v = torch.randn(1, kv, n, dim, generator=g).bfloat16()
    at = [max(node, 0) for node in nodes]  # padding slots: any inputs (nobody sees them)
    total = len(nodes)
    allowed = torch.ones(total, start + total, dtype=torch.bool)
    allowed[:, start:] = ancestor_mask(slot_parents)
    mask = torch.zeros(1, 1, total, start + total, dtype=torch.bfloat16).masked_fill_(~allowed, -3e38)
    module = SimpleNamespace(num_key_value_groups=heads // kv, training=False)

    def attend(q, k, v, m):  # [1, heads, rows, dim]
        return attention.grouped_attention(module, q, k, v, m, scaling=0.125)[0].transpose(1, 2)

    rows = attend(node_q[:, :, at], torch.cat([cache_k, node_k[:, :, at]], 2), torch.cat([cache_v, node_v[:, :, at]], 2),
                  mask)
    tree, plain = [], []
    for node in range(n):
        path = [0] + path_to(parents, node)
        keys = torch.cat([cache_k, node_k[:, :, path], node_k[:, :, :1]], 2)  # + the ignored second row's key
        values = torch.cat([cache_v, node_v[:, :, path], node_v[:, :, :1]], 2)
        pair = torch.zeros(1, 1, 2, keys.shape[2], dtype=torch.bfloat16)
        pair[0, 0, 0, -1] = -3e38
        plain.append(attend(node_q[:, :, [node, node]], keys, values, pair)[:, :, 0])
        tree.append(rows[:, :, nodes.index(node)])
    return tree, plain


@pytest.mark.parametrize("start", [300, 301])
def test_tree_rows_laid_out_by_exact_layout_equal_plain_decoding_in_bfloat16(start):
    """Every node's row, bit for bit (random data seldom shows a drift without the layout; the real
    model does: tests/integration/test_real_bf16.py has that control)."""
    import random

    rng = random.Random(start)
    for seed in range(12):
        parents = tuple(rng.randint(0, i) for i in range(rng.randint(8, 30) - 1))
        tree, plain = tree_rows_and_plain_rows(parents, start, seed=seed)
        assert all(torch.equal(a, b) for a, b in zip(tree, plain))
