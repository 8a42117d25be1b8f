"""The embedded SmolLM2-135M in bfloat16 (the default dtype on this CPU): verification computes what plain decoding does.

bfloat16 rounds coarsely, so a token verified inside a draft agrees with plain
decoding only if its row of the pass is computed exactly as a one-token pass
computes it (quickdraft.attention). These tests check that bit for bit, with
a control that shows the difference torch's SDPA attention makes.
"""

import pytest
import torch

from tests.integration.test_real_model import NEW_TOKENS, PROMPTS

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


def test_a_trees_first_path_is_computed_as_plain_decoding(bf16_engine):
    from quickdraft.tree import first_child_order

    target = bf16_engine.target
    cache = target.new_cache()
    target.forward(PREFIX, cache)
    base = len(cache)
    # two interleaved branches: root 500 -> 700 -> 701 -> 702 and root -> 900 -> 901 -> 902
    tokens = [500, 700, 900, 701, 901, 702, 902]
    parents = (0, 0, 1, 2, 3, 4)
    first = [0, 1, 3, 5]  # the first-child path: laid out in consecutive positions for the pass
    assert first_child_order(parents)[:4] == first
    tree = target.forward(tokens, cache, parents)
    cache.truncate(base)
    steps = torch.stack([target.forward([tokens[node]], cache)[0] for node in first])
    assert torch.equal(tree[first], steps)


def test_prompt_lookup_equals_plain_greedy_in_bfloat16(bf16_engine):
    """A chain method: every verified row is computed as plain decoding computes it, so the answers are equal.

    (Tree methods are exact along each tree's first path; a node off it sees its ancestors at other
    places in the pass and can round differently at a near-tie, so they are not asserted here.)
    """
    drafted = 0
    for prompt in PROMPTS:
        expected = bf16_engine.generate(prompt, method="ar", max_new_tokens=NEW_TOKENS)
        got = bf16_engine.generate(prompt, method="pld", max_new_tokens=NEW_TOKENS)
        assert got.token_ids == expected.token_ids, f"pld diverged on {prompt[:40]!r}"
        drafted += got.stats.drafted_tokens
    assert drafted > 0
