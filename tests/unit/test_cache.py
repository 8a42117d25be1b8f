"""The cache invariant: after rollback or compaction it equals a fresh prefill of the kept tokens."""

import torch

from quickdraft.tree import ancestor_mask, children, depths, path_to


def fresh(target, tokens):
    cache = target.new_cache()
    target.forward(tokens, cache)
    return cache


def assert_same(a, b):
    assert len(a) == len(b)
    for la, lb in zip(a.inner.layers, b.inner.layers):
        torch.testing.assert_close(la.keys, lb.keys, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(la.values, lb.values, rtol=1e-4, atol=1e-5)


def test_rollback_equals_fresh_prefill(tiny_engine):
    target = tiny_engine.target
    tokens = list(range(10, 40))
    cache = fresh(target, tokens[:20])
    target.forward(tokens[20:], cache)
    cache.truncate(24)
    assert_same(cache, fresh(target, tokens[:24]))


def test_tree_compaction_equals_fresh_prefill(tiny_engine):
    target = tiny_engine.target
    prefix = list(range(50, 70))
    cache = fresh(target, prefix)
    # root 7; tree: nodes 1 (a), 2 (b) under root; 3 (c) under 2; 4 (d) under 1; 5 (e) under 3
    parents = (0, 0, 2, 1, 3)
    tree_tokens = [7, 11, 12, 13, 14, 15]
    target.forward(tree_tokens, cache, parents)
    path = path_to(parents, 5)  # [2, 3, 5]
    cache.keep(len(prefix), [0, *path])
    assert_same(cache, fresh(target, prefix + [7, 12, 13, 15]))


def test_tree_logits_equal_chain_logits_along_each_path(tiny_engine):
    target = tiny_engine.target
    prefix = list(range(80, 95))
    parents = (0, 0, 2, 1, 3)
    tree_tokens = [7, 11, 12, 13, 14, 15]
    cache = fresh(target, prefix)
    tree_logits = target.forward(tree_tokens, cache, parents)
    for leaf in (4, 5):
        nodes = [0, *path_to(parents, leaf)]
        chain_cache = fresh(target, prefix)
        chain_logits = target.forward([tree_tokens[i] for i in nodes], chain_cache)
        torch.testing.assert_close(tree_logits[nodes], chain_logits, rtol=1e-4, atol=1e-4)


def test_tree_helpers():
    parents = (0, 0, 1, 1, 3)
    assert depths(parents) == [0, 1, 1, 2, 2, 3]
    assert path_to(parents, 5) == [1, 3, 5]
    assert children(parents) == [[1, 2], [3, 4], [], [5], [], []]
    mask = ancestor_mask(parents)
    assert mask[5].nonzero().flatten().tolist() == [0, 1, 3, 5]
    assert mask[2].nonzero().flatten().tolist() == [0, 2]


def test_spread_places_a_pass_rows_as_told(tiny_engine):
    """cache.spread(rows): the pass's row rows[s] becomes entry s (rows may repeat); afterwards passes append
    as usual. (The first layer's keys and values depend on the tokens and positions only.)"""
    target = tiny_engine.target
    prefix = list(range(30, 42))
    cache = fresh(target, prefix)
    assert cache.can_spread
    start = len(prefix)
    mask = torch.zeros(1, 1, 3, start + 5, dtype=target.dtype)  # additive: the pass's rows see every key
    with cache.spread(torch.tensor([0, 1, 1, 0, 2])), torch.inference_mode():
        target.model(input_ids=torch.tensor([[7, 8, 9]]), cache=cache.inner, use_cache=True,
                     attention_mask=mask, position_ids=torch.tensor([[start, start + 1, start + 2]]),
                     cache_position=torch.arange(start, start + 3))
    assert len(cache) == len(prefix) + 5
    plain = fresh(target, prefix)
    target.forward([7, 8, 9], plain)
    first, first_plain = cache.inner.layers[0], plain.inner.layers[0]  # (later layers: another attention)
    for name in ("keys", "values"):
        got, want = getattr(first, name)[:, :, start:], getattr(first_plain, name)[:, :, start:]
        assert torch.equal(got, want[:, :, [0, 1, 1, 0, 2]])
    target.forward([10], cache)  # spread ends with the block
    assert len(cache) == len(prefix) + 6 and all(layer.spread is None for layer in cache.inner.layers)
