"""The llama.cpp backend on the embedded GGUF: every method that runs there equals plain llama.cpp decoding
token for token (with drafts accepted), the cache keeps exactly what a fresh prefill would, and what
cannot run there fails with one clear line. Runs where llama-cpp-python is installed (`make setup`)."""

from __future__ import annotations

import pytest
import torch

from quickdraft import methods
from quickdraft.errors import QuickdraftError
from tests.integration.test_real_model import PROMPTS, assert_method_equals_plain

pytest.importorskip("llama_cpp", reason="the llama.cpp backend is not installed here")

pytestmark = pytest.mark.real
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def llama_engine():
    from quickdraft import load

    engine = load("smollm2-135m-instruct", backend="llamacpp")
    assert engine.target.backend == "llamacpp"
    return engine


@pytest.fixture(scope="module")
def llama_plain(llama_engine) -> dict:
    return {p: llama_engine.generate(p, method="ar", max_new_tokens=NEW_TOKENS) for p in PROMPTS}


@pytest.fixture(scope="module")
def llama_options(llama_engine, tmp_path_factory) -> dict:
    from tests.conftest import make_datastore

    folder = tmp_path_factory.mktemp("llama-options")
    return {"rest": {"datastore": str(make_datastore(llama_engine, PROMPTS, folder / "rest"))},
            # the model drafts for itself (in a context of its own): all accepted, priced cheaper so it drafts
            "draft": {"draft_model": "smollm2-135m-instruct", "cost": 0.3}}


def test_rows_are_checked_on_this_machine(llama_engine):
    check = llama_engine.target.check
    assert check is not None and check.rows > 0
    assert llama_engine.target.exact, f"llama.cpp rows differ from plain decoding here: {check}"


LLAMA_METHODS = [m.name for m in methods() if m.name not in ("ar", "draft-tree")
                 and m.runs_on({"logits"})]


@pytest.mark.parametrize("method", LLAMA_METHODS + ["pld+recycle"])
def test_method_equals_plain_llamacpp_decoding(llama_engine, llama_plain, llama_options, method):
    assert_method_equals_plain(llama_engine, llama_plain, method, llama_options.get(method))


def test_plain_decoding_equals_llama_cpp_pythons_own(llama_engine, llama_plain):
    """Our plain decoding on llama.cpp is llama-cpp-python's greedy generation, token for token."""
    from quickdraft.bench.llama_peers import LlamaPeer
    from quickdraft.bench.runner import BenchSettings

    peer = LlamaPeer(llama_engine, "llama-generate")
    for prompt in PROMPTS[:2]:
        got = peer.generate([{"role": "user", "content": prompt}], max_new_tokens=NEW_TOKENS,
                            settings=BenchSettings(max_new_tokens=NEW_TOKENS))
        assert got.token_ids == llama_plain[prompt].token_ids


@pytest.mark.parametrize("limit", [1, 5, 13])
def test_max_new_tokens_cut_and_eos_inside_a_draft(llama_engine, limit):
    prompt = "Say only the word yes."
    plain = llama_engine.generate(prompt, method="ar", max_new_tokens=limit)
    for method in ("pld", "ngram", "auto"):
        got = llama_engine.generate(prompt, method=method, max_new_tokens=limit)
        assert got.token_ids == plain.token_ids and got.finish_reason == plain.finish_reason
    long = llama_engine.generate(prompt, method="ar", max_new_tokens=64)
    assert long.finish_reason == "stop" and long.token_ids[-1] in llama_engine.target.eos_ids
    # a draft that runs past EOS: the copy of the answer is drafted after it (recycle learns it)
    again = llama_engine.generate(prompt, method="recycle", max_new_tokens=64)
    assert again.token_ids == long.token_ids


def _next_logits(target, cache, token: int) -> torch.Tensor:
    logits = target.forward([token], cache)[0]
    cache.keep(len(cache) - 1, [0])
    cache.truncate(len(cache) - 1)
    return logits


def _fresh(target, tokens: list[int], next_token: int) -> torch.Tensor:
    cache = target.new_cache()
    target.prefill(tokens, cache)
    return _next_logits(target, cache, next_token)


def test_keep_and_rollback_leave_what_a_fresh_prefill_would(llama_engine):
    """The context holds one cache at a time: each reference is computed before the cache it is compared with."""
    target = llama_engine.target
    prefix = llama_engine.encode("Count: one two three four five six")
    after_two = _fresh(target, prefix[:-1], prefix[-1])
    after_all = _fresh(target, prefix, 7)
    after_root = _fresh(target, prefix[:-2], 7)
    # a chain verified, then only its root and first token kept
    cache = target.new_cache()
    target.prefill(prefix[:-3], cache)
    base = len(cache)
    target.forward(prefix[-3:] + [11, 12], cache)
    cache.keep(base, [0, 1])
    assert len(cache) == base + 2
    assert torch.equal(_next_logits(target, cache, prefix[-1]), after_two)
    # a tree whose accepted path is off its first branch: kept as pending tokens, computed again
    cache = target.new_cache()
    target.prefill(prefix[:-3], cache)
    tokens = [prefix[-3], 99, prefix[-2], prefix[-1]]  # root -> 99 (first branch), -2 -> -1
    target.forward(tokens, cache, (0, 0, 2))
    cache.keep(base, [0, 2, 3])
    assert len(cache) == base + 3 and cache.pending  # not in cells yet
    assert torch.equal(_next_logits(target, cache, 7), after_all)
    # rollback into pending tokens and cells alike
    cache.truncate(base + 1)
    assert torch.equal(_next_logits(target, cache, 7), after_root)
    with pytest.raises(QuickdraftError, match="replaced"):
        target.new_cache()
        target.forward([1], cache)


def test_the_row_check_can_fail(llama_engine):
    """Negative control: a pass whose rows are not plain decoding's is caught."""
    from quickdraft.backends.llamacpp import check_rows

    class Skewed:  # the target with one logit of every multi-row pass nudged
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def forward(self, tokens, cache, parents=None):
            logits = self.inner.forward(tokens, cache, parents).clone()
            if len(tokens) > 1:
                logits[-1, 0] += 1e-3
            return logits

    assert not check_rows(Skewed(llama_engine.target)).exact


def test_methods_needing_hidden_states_fail_with_one_line(llama_engine):
    for method in ("eagle", "heads", "swift", "ppd", "ppd+ngram"):
        with pytest.raises(QuickdraftError, match="--backend transformers") as err:
            llama_engine.generate("hi", method=method, max_new_tokens=2)
        assert "\n" not in str(err.value)
    with pytest.raises(QuickdraftError, match="draft-tree runs on the transformers backend"):
        llama_engine.generate("hi", method="draft-tree", max_new_tokens=2,
                              options={"draft_model": "smollm2-135m-instruct"})


def test_a_gguf_llama_cpp_cannot_load_is_one_line(tmp_path):
    from click.testing import CliRunner

    from quickdraft.cli import main

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 64)
    out = CliRunner().invoke(main, ["generate", "hi", "--model", str(bad), "--backend", "llamacpp"])
    assert out.exit_code != 0 and "Traceback" not in out.output
    assert out.output.strip().count("\n") == 0 and "could not" in out.output
    out = CliRunner().invoke(main, ["generate", "hi", "--model", str(tmp_path / "none.gguf"), "--backend", "llamacpp"])
    assert out.exit_code != 0 and "does not exist" in out.output


def test_server_on_llamacpp_answers_as_generate(llama_engine, llama_plain):
    """The OpenAI-compatible server, unchanged, on the llama.cpp backend: auto's answer is plain decoding's."""
    import openai

    from quickdraft.server import ServerConfig
    from tests.server.conftest import serving

    prompt = PROMPTS[0]
    with serving([llama_engine], ServerConfig(default_method="auto")) as url:
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
        reply = api.chat.completions.create(model="smollm2-135m-instruct", max_tokens=NEW_TOKENS, temperature=0,
                                            messages=[{"role": "user", "content": prompt}])
    assert reply.choices[0].message.content == llama_plain[prompt].text
    assert reply.usage.completion_tokens == len(llama_plain[prompt].token_ids)


def test_serve_refuses_concurrency_on_llamacpp():
    from click.testing import CliRunner

    from quickdraft.cli import main

    out = CliRunner().invoke(main, ["serve", "--backend", "llamacpp", "--max-concurrency", "2"])
    assert out.exit_code != 0 and "--max-concurrency above 1" in out.output


def test_seeded_sampling_equals_plain_sampling_on_llamacpp(llama_engine):
    """Sampling on llama.cpp: a seeded request gives plain sampling's text with any deterministic drafter
    (randomness keyed by position, as on transformers), and drafts are accepted."""
    prompt = PROMPTS[0]
    ref = llama_engine.generate(prompt, method="ar", temperature=0.5, seed=7, max_new_tokens=NEW_TOKENS)
    accepted = 0
    for method in ("pld", "ngram", "auto"):
        got = llama_engine.generate(prompt, method=method, temperature=0.5, seed=7, max_new_tokens=NEW_TOKENS)
        assert got.token_ids == ref.token_ids, method
        accepted += got.stats.new_tokens - got.stats.steps
    assert accepted > 0
    again = llama_engine.generate(prompt, method="ar", temperature=0.5, seed=7, max_new_tokens=NEW_TOKENS)
    assert again.token_ids == ref.token_ids
