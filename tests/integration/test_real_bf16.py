"""The embedded SmolLM2-135M in bfloat16 (the default dtype on this CPU): verification computes what plain decoding does.

bfloat16 rounds coarsely, so a token verified inside a draft agrees with plain
decoding only if its row of the pass is computed exactly as a one-token pass
computes it (quickdraft.attention). These tests check that bit for bit, with
a control that shows the difference torch's SDPA attention makes.
"""

import pytest
import torch

from quickdraft.tree import path_to

from quickdraft import methods
from tests.integration.test_real_model import (  # noqa: F401 (real_method_options: a fixture)
    COMBINED, NEW_TOKENS, PROMPTS, assert_method_equals_plain, real_method_options)

pytestmark = pytest.mark.real

PREFIX = [(7 + 13 * i) % 49152 for i in range(200)]
CHAIN = [500, 501, 502, 503, 504, 505, 506, 507, 508]


@pytest.fixture(scope="module")
def bf16_engine():
    from quickdraft import load

    return load("smollm2-135m-instruct", dtype="bfloat16")


def chain_and_steps(target):
    """Logits of CHAIN verified in one pass, and decoded one token at a time, after PREFIX."""
    cache = target.new_cache()
    target.forward(PREFIX, cache)
    base = len(cache)
    whole = target.forward(CHAIN, cache)
    cache.truncate(base)
    steps = torch.stack([target.forward([token], cache)[0] for token in CHAIN])
    return whole, steps


def test_a_verified_chain_is_computed_as_plain_decoding(bf16_engine):
    target = bf16_engine.target
    assert target.dtype == torch.bfloat16 and target.pad_single
    assert target.layout is not None and target.exact, "no layout passed this machine's self-check"
    whole, steps = chain_and_steps(target)
    assert torch.equal(whole, steps)
    # control: transformers' SDPA attention does not keep rows independent, so the same comparison fails
    ours = target.model.config._attn_implementation
    target.model.set_attn_implementation("sdpa")
    try:
        whole, steps = chain_and_steps(target)
    finally:
        target.model.set_attn_implementation(ours)
    assert not torch.equal(whole, steps)


def tree_against_steps(target, seed: int = 1, trees: int = 4) -> tuple[int, int]:
    """Random trees verified in one pass against each node decoded alone after its ancestors:
    (nodes whose logits differ, nodes). Prefixes of every length modulo 4 (the layouts depend on it)."""
    import random

    from quickdraft.exactness import plain_logits

    rng = random.Random(seed)
    differ = nodes = 0
    for trial in range(trees):
        n = rng.randint(12, 30)
        parents = tuple(rng.randint(max(0, i - 3), i) for i in range(n - 1))  # deep, branching trees
        tokens = [rng.randint(100, 40000) for _ in range(n)]
        prefix = PREFIX + [5] * (trial % 4)
        cache = target.new_cache()
        target.prefill(prefix, cache)
        base = len(cache)
        tree = target.forward(tokens, cache, parents)
        cache.truncate(base)
        plain = plain_logits(target, prefix, tokens, parents, cache)
        differ += sum(not torch.equal(plain[node], tree[node]) for node in range(n))
        nodes += n
    return differ, nodes


def test_every_node_of_a_tree_is_computed_as_plain_decoding(bf16_engine, monkeypatch):
    """Under the layout the machine's self-check chose, on other trees than the check's; control: the
    nodes in node order (no layout) drift at near-ties. (The attention-level check in
    tests/unit/test_attention.py shows each layout against the others on this machine's kernel.)"""
    target = bf16_engine.target
    differ, nodes = tree_against_steps(target)
    assert nodes > 50 and differ == 0
    chosen = target.layout
    try:
        target.layout = None
        assert tree_against_steps(target)[0] > 0
    finally:
        target.layout = chosen


def test_copies_in_the_layout_are_spread_in_the_cache_not_computed(bf16_engine, monkeypatch):
    """A node's later slots in the layout (copies) only repeat its keys and values in the cache: the pass
    computes each node once, and every node's logits equal plain decoding's. Under ``pairs`` a copy computed
    as a row of its own would compute the same (so the pass equals one that computes copies as rows); under
    ``interleaved4`` it need not (a copy's own key can land in another partial sum than plain decoding adds
    it into), which is why copies are spread rather than computed."""
    from quickdraft import cache as kv
    from quickdraft.models import LAYOUTS

    target = bf16_engine.target
    layout = LAYOUTS[target.layout]
    parents = (0, 0, 0, 1, 1, 2, 3, 3)  # wide at every depth: both layouts copy some nodes
    tokens = [600 + 7 * i for i in range(len(parents) + 1)]
    slots = layout(parents, len(PREFIX))[0]
    assert len(slots) >= len(tokens) + 2
    from quickdraft.exactness import plain_logits

    plain = plain_logits(target, PREFIX, tokens, parents)
    fed: list[int] = []
    hook = target.model.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    runs = []
    try:
        for spread in (True, False):
            monkeypatch.setattr(kv.KVCache, "can_spread", property(lambda self, s=spread: s))
            cache = target.new_cache()
            target.prefill(PREFIX, cache)  # one causal pass, as the engine fills the cache
            fed.clear()
            out = target.forward_full(tokens, cache, parents, hidden=True)
            runs.append((fed[-1], out, cache))
    finally:
        hook.remove()
    (rows, spread, spread_cache), (computed_rows, copied, copied_cache) = runs
    assert rows == len(set(slots)) and computed_rows == len(slots)
    assert len(spread_cache) == len(copied_cache) == len(PREFIX) + len(tokens)
    assert all(torch.equal(spread.logits[i], plain[i]) for i in range(len(tokens)))
    same = torch.equal(spread.logits, copied.logits) and all(
        torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        for a, b in zip(spread_cache.inner.layers, copied_cache.inner.layers))
    if target.layout == "pairs":  # a copy computes what its original computes
        assert same


@pytest.fixture(scope="module")
def bf16_plain(bf16_engine) -> dict:
    return {prompt: bf16_engine.generate(prompt, method="ar", max_new_tokens=NEW_TOKENS) for prompt in PROMPTS}


def _bf16_methods() -> list[str]:
    """Every method where bfloat16 is native (and the default dtype). Elsewhere (an AVX2 CPU: every bf16 pass
    emulated, several times slower, and float32 the default, swept above in test_real_model) one method per
    way of drafting: a chain, a trie, features, a draft model's tree, self-speculation, extra inputs merged."""
    from quickdraft.models import _cpu_has_bf16

    every = [m.name for m in methods() if m.name != "ar"] + COMBINED
    return every if _cpu_has_bf16() else ["pld", "ngram", "eagle", "draft-tree", "swift", "ppd+ngram"]


@pytest.mark.parametrize("method", _bf16_methods())
def test_method_equals_plain_greedy_in_bfloat16(bf16_engine, bf16_plain, real_method_options, method):
    """Every row of every pass is computed as plain decoding computes it, so every method's answers are equal."""
    assert_method_equals_plain(bf16_engine, bf16_plain, method, real_method_options.get(method))
