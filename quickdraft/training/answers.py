"""A retrieval datastore from the model's own answers (``quickdraft index build --answers``): the model
answers a prompt set (cached with the training data), and the answers are indexed as a
:class:`~quickdraft.datastore.Datastore`. Lives above the engine: it generates."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..adapters import model_sha256
from ..datastore import SEP, check_out, read_documents, save_datastore, tokenize_documents
from ..engine import load
from ..errors import QuickdraftError
from ..paths import cache_dir
from .data import build_dataset, read_prompts


def index_answers(data: str, out: str | os.PathLike, *, model: str, corpus: Sequence[str] = (),
                  max_new_tokens: int = 160, dtype: str = "auto", threads: int | None = None, engine=None,
                  data_cache: Path | None = None) -> dict:
    """What ``quickdraft index build --answers DATA`` does; returns the metadata.

    The model's greedy answers (EOS included, prompts left out) to the prompts
    of ``data`` (``builtin``, ``selfinstruct`` or a file, as for ``quickdraft
    train --data``; generated once and cached with the training data, so a
    datastore and an adapter trained on the same data share them), plus the
    ``corpus`` files, if any, as documents.
    """
    check_out(Path(out))
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise QuickdraftError(f"the answers' length must be a positive number of tokens, got {max_new_tokens!r}")
    texts = [text for path in corpus for text in read_documents(path)]  # checks every file before the long part
    prompts = read_prompts(data)
    engine = engine or load(model, dtype=dtype, threads=threads)
    target = engine.target
    dataset = build_dataset(engine, prompts, model_sha256=model_sha256(target), max_new_tokens=max_new_tokens,
                            cache=data_cache or cache_dir() / "train")
    parts = []
    for seq in dataset.train + dataset.held_out:
        parts += [np.asarray(seq.ids[seq.prompt_len:], dtype=np.int32), np.array([SEP], dtype=np.int32)]
    if texts:
        parts.append(tokenize_documents(texts, target.tokenizer))
    sources = [f"answers of {target.name} to {data} ({len(dataset.train) + len(dataset.held_out)} prompts, "
               f"at most {max_new_tokens} tokens each)", *(str(Path(p)) for p in corpus)]
    return save_datastore(np.concatenate(parts), target.tokenizer, out, model_name=target.name, sources=sources)


__all__ = ["index_answers"]
