"""Seeded sampling: speculative sampling gives exactly the text plain sampling (`ar`) gives with the same seed.

Every token position draws from a generator keyed by (seed, position)
(quickdraft.sampling.Draws), and a deterministic draft is verified by drawing
plain sampling's own token at each position (verify.verify_tree_positional).
So a drafter can only change how many tokens a pass yields, never which. Drafts
sampled from a draft model keep speculative (rejection) sampling: reproducible,
but not equal to `ar`.
"""

from __future__ import annotations

import pytest

from quickdraft import methods
from tests.lossless.test_tiny_lossless import COMBINED, PROMPTS, options_for

SAMPLED_DRAFTS = {"draft", "draft-tree", "swift", "early-exit"}  # they sample their drafts from a model
DETERMINISTIC = [m.name for m in methods() if m.name not in SAMPLED_DRAFTS | {"ar"}] + COMBINED
SAMPLING = dict(temperature=0.9, top_p=0.95, max_new_tokens=40, chat=False)


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_seeded_sampling_with_a_deterministic_drafter_equals_ar(tiny_engine, tiny_method_options, method):
    options = options_for(tiny_method_options, method)
    drafted = 0
    for seed, text in enumerate(PROMPTS):
        expected = tiny_engine.generate(text, method="ar", seed=seed, **SAMPLING)
        got = tiny_engine.generate(text, method=method, seed=seed, options=options, **SAMPLING)
        assert got.token_ids == expected.token_ids, f"{method} on prompt {seed}"
        drafted += got.stats.drafted_tokens
    assert drafted > 0, f"{method} never drafted"


@pytest.mark.parametrize("method", sorted(SAMPLED_DRAFTS))
def test_seeded_sampling_with_sampled_drafts_is_reproducible(tiny_engine, tiny_method_options, method):
    options = options_for(tiny_method_options, method)
    first = tiny_engine.generate(PROMPTS[0], method=method, seed=3, options=options, **SAMPLING)
    again = tiny_engine.generate(PROMPTS[0], method=method, seed=3, options=options, **SAMPLING)
    assert first.token_ids == again.token_ids


@pytest.mark.parametrize("method", ["ngram", "auto", "recycle"])
def test_a_seeded_request_is_the_same_before_and_after_other_traffic(tiny_engine, method):
    """Drafters learn from every request (n-gram tables, the recycling matrix, auto's choices); that changes
    what they draft, never the text of a seeded request."""
    request = dict(method=method, seed=11, **SAMPLING)
    before = tiny_engine.generate("the lazy dog jumps", **request)
    for text in PROMPTS * 2:  # unrelated traffic, greedy and sampled
        tiny_engine.generate(text, method=method, max_new_tokens=40, chat=False)
        tiny_engine.generate(text, method=method, seed=5, **{**SAMPLING, "temperature": 0.7})
    after = tiny_engine.generate("the lazy dog jumps", **request)
    assert after.token_ids == before.token_ids
    assert after.token_ids == tiny_engine.generate("the lazy dog jumps", **{**request, "method": "ar"}).token_ids


def test_unseeded_requests_differ(tiny_engine):
    texts = {tuple(tiny_engine.generate(PROMPTS[1], method="pld", temperature=1.0, max_new_tokens=24,
                                        chat=False).token_ids) for _ in range(4)}
    assert len(texts) > 1


@pytest.mark.real
@pytest.mark.parametrize("method", ["pld", "ngram", "auto"])
def test_seeded_sampling_equals_ar_on_the_real_model(real_engine, method):
    prompt = "Rewrite this sentence in the past tense: The cat sits on the mat and watches the birds."
    for seed in (1, 2):
        request = dict(seed=seed, temperature=0.8, top_p=0.9, max_new_tokens=32)
        expected = real_engine.generate(prompt, method="ar", **request)
        got = real_engine.generate(prompt, method=method, **request)
        assert got.token_ids == expected.token_ids
