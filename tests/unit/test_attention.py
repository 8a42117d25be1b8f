"""The engine's grouped attention: the same result as transformers' eager attention, rows independent of the pass."""

from types import SimpleNamespace

import pytest
import torch
from transformers.models.llama.modeling_llama import eager_attention_forward

from quickdraft import attention
from quickdraft.exactness import attention_rows


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


@pytest.mark.parametrize("start", [300, 301, 302, 303])
def test_tree_rows_laid_out_for_this_machine_equal_plain_decoding_in_bfloat16(tiny_bf16_engine, start):
    """Every node's row, bit for bit, under the layout this machine's self-check chose (quickdraft.exactness
    on the tiny model); random data seldom shows a drift without it; the real model does
    (tests/integration/test_real_bf16.py has that control)."""
    import random

    layout = tiny_bf16_engine.target.layout
    assert layout is not None, "no layout passed this machine's self-check"
    rng = random.Random(start)
    for seed in range(12):
        parents = tuple(rng.randint(0, i) for i in range(rng.randint(8, 30) - 1))
        tree, plain = attention_rows(parents, start, layout, heads=9, kv=3, dim=64, seed=seed)
        assert all(torch.equal(a, b) for a, b in zip(tree, plain))


def test_the_attention_check_tells_layouts_apart(tiny_bf16_engine):
    """Controls: the sensitive data of the check shows a wrong layout at once: rows in node order, and the
    known layouts this machine's self-check did not choose (each is made for another CPU kernel)."""
    from quickdraft import models
    from quickdraft.exactness import check_attention

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(models.LAYOUTS, "node-order", lambda parents, start: (list(range(len(parents) + 1)),
                                                                            tuple(parents)))
        check = check_attention("node-order")
    assert check.rows > 100 and check.differ > 0
    for other in set(models.LAYOUTS) - {tiny_bf16_engine.target.layout}:
        assert check_attention(other).differ > 0, f"{other} is exact on this machine's kernel too"
