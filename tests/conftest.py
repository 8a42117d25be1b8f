"""Shared fixtures: a tiny random model (fast, no files) and the real embedded model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tiny_tokenizer():
    """A byte-level tokenizer: 256 byte tokens plus <s>, </s>, <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for special in ("<s>", "</s>", "<pad>"):
        vocab[special] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def make_tiny_model(vocab_size: int = 259, *, seed: int = 0, max_positions: int = 512):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        bos_token_id=256, eos_token_id=257, pad_token_id=258, tie_word_embeddings=False,
        initializer_range=0.2,  # spread-out logits: no near-ties between batched and single-token passes
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A Hugging Face model directory with a tiny random Llama and a byte tokenizer."""
    path = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model(max_positions=256).save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_draft_dir(tmp_path_factory) -> Path:
    """A second tiny random Llama (other weights) with the same tokenizer: a draft model for the tiny target."""
    path = tmp_path_factory.mktemp("tiny-draft")
    make_tiny_model(max_positions=256, seed=1).save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_engine(tiny_dir):
    from quickdraft import load

    return load(str(tiny_dir), dtype="float32")


@pytest.fixture(scope="session")
def tiny_bf16_engine(tiny_dir):
    """The tiny model in bfloat16: the engine's row-exact attention and padded one-token passes."""
    from quickdraft import load

    return load(str(tiny_dir), dtype="bfloat16")


@pytest.fixture(scope="session")
def tiny_method_options(tiny_engine, tiny_draft_dir, tmp_path_factory) -> dict:
    """Options a method needs on the tiny model, by method name (the lossless suite passes them).

    ``ppd``, ``heads`` and ``eagle`` need an adapter made for the tiny model: an untrained
    one will do, since losslessness never depends on the drafter's guesses.
    """
    from quickdraft.adapters import save_adapter
    from quickdraft.training import untrained_adapter

    folder = tmp_path_factory.mktemp("tiny-adapters")
    options: dict = {}
    for kind in ("ppd", "heads", "eagle"):
        path = folder / f"{kind}.safetensors"
        save_adapter(path, untrained_adapter(tiny_engine.target, kind))
        options[kind] = {"adapter": str(path)}
    options["draft"] = {"draft_model": str(tiny_draft_dir)}  # a second tiny model, same tokenizer
    options["draft-tree"] = options["draft"]
    options["rest"] = {"datastore": str(make_datastore(tiny_engine, TINY_CORPUS, folder / "rest-datastore"))}
    return options


# A corpus for the rest datastore on the tiny model (the lossless suite's prompts and more).
TINY_CORPUS = [
    "the quick brown fox jumps over the lazy dog. the quick brown fox jumps again",
    "abcabcabcabcabc",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt",
]


def make_datastore(engine, texts, path: Path) -> Path:
    """A rest datastore over ``texts`` with the engine's tokenizer."""
    from quickdraft.datastore import build_datastore

    build_datastore(texts, engine.tokenizer, path, model_name=engine.model_name)
    return path


@pytest.fixture(scope="session")
def real_engine():
    """The embedded SmolLM2-135M in float32 (the exact reference dtype)."""
    from quickdraft import load

    return load("smollm2-135m-instruct", dtype="float32")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep tests' converted models in the user's cache (conversion is slow) but never write elsewhere."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from quickdraft.memory import keep_freed_memory

    keep_freed_memory()  # as the CLI does (load(tune_memory=True)): transformers passes without page faults
    yield
