"""Self-distillation data: the model's own greedy answers to a prompt set.

A drafter trained on what the frozen model itself says needs no labelled data,
and it learns exactly the distribution it will be asked to predict. The
answers are generated once, in batches (much faster than one sequence at a
time on a CPU), and cached as JSON next to the model conversions, keyed by the
model's file hash and the prompts; ``ppd`` and ``heads`` training share them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import QuickdraftError
from .prompts import builtin_prompts
from .selfinstruct import PromptSet, selfinstruct_prompts

DERIVED_FORMAT = 1  # bump when answer_set or Derived.prompt change how derived requests are made

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sequence:
    """One training sequence: the chat-formatted prompt then the model's answer (EOS included)."""

    ids: tuple[int, ...]
    prompt_len: int


@dataclass(frozen=True)
class Dataset:
    train: list[Sequence]
    held_out: list[Sequence]

    @property
    def tokens(self) -> int:
        return sum(len(s.ids) for s in self.train)


def read_prompts(data: str) -> list[str] | PromptSet:
    """Prompts from ``builtin``, ``selfinstruct`` (two rounds) or a file: JSONL with a ``prompt`` field per line,
    or plain text, one per line."""
    if data == "builtin":
        return builtin_prompts()
    if data == "selfinstruct":
        return selfinstruct_prompts()
    path = Path(data)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise QuickdraftError(f"cannot read training data {data}: {exc}") from exc
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if path.suffix in (".jsonl", ".json"):
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise QuickdraftError(f"{data}:{number}: not JSON ({exc.msg})") from exc
            if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
                raise QuickdraftError(f"{data}:{number}: expected an object with a string 'prompt'")
            prompts.append(item["prompt"])
        else:
            prompts.append(line)
    if len(prompts) < 2:
        raise QuickdraftError(f"training data {data} has {len(prompts)} prompts; need at least 2 (one is held out)")
    return prompts


def build_dataset(engine, prompts: list[str] | PromptSet, *, model_sha256: str, max_new_tokens: int,
                  cache: Path | None, batch_size: int = 16, chat: bool = True) -> Dataset:
    """Generate (or load from ``cache``) the model's greedy answers; hold out every tenth (first) prompt.

    A :class:`PromptSet`'s derived requests are answered in a second round, over
    the first round's answers, and are held out with the prompt they derive from.
    """
    prompts = prompts if isinstance(prompts, PromptSet) else PromptSet(list(prompts), [])
    train_set, held_set = prompts.split(every=10 if len(prompts.first) >= 10 else len(prompts.first))
    fingerprint = [model_sha256, prompts.first, max_new_tokens, chat]
    if prompts.derived:  # (and how the second round is built from the answers)
        fingerprint += [[[d.source, d.template, d.follow_up] for d in prompts.derived], DERIVED_FORMAT,
                        str(engine.target.dtype)]
    key = hashlib.sha256(json.dumps(fingerprint).encode()).hexdigest()[:16]
    path = None if cache is None else cache / f"selfdistill-{key}.json"
    if path is not None and path.is_file():
        data = json.loads(path.read_text())
        log.info("training data: %s (cached)", path)
        return Dataset([Sequence(tuple(s["ids"]), s["prompt_len"]) for s in data["train"]],
                       [Sequence(tuple(s["ids"]), s["prompt_len"]) for s in data["held_out"]])
    started = time.perf_counter()
    kw = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat)
    train, held = answer_set(engine, train_set, **kw), answer_set(engine, held_set, **kw)
    log.info("generated %d answers in %.0f s", len(train) + len(held), time.perf_counter() - started)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "train": [{"ids": list(s.ids), "prompt_len": s.prompt_len} for s in train],
            "held_out": [{"ids": list(s.ids), "prompt_len": s.prompt_len} for s in held],
        }))
        tmp.replace(path)
    return Dataset(train, held)


def answer_set(engine, prompts: PromptSet, **kw) -> list[Sequence]:
    """The answers to the first requests, then to the requests derived from those answers."""
    first = generate_answers(engine, prompts.first, **kw)
    if not prompts.derived:
        return first
    tok = engine.target.tokenizer
    texts = [tok.decode(s.ids[s.prompt_len:], skip_special_tokens=True).strip() for s in first]
    derived = [d.prompt(prompts.first[d.source], texts[d.source]) for d in prompts.derived]
    return first + generate_answers(engine, derived, **kw)


@torch.inference_mode()
def generate_answers(engine, prompts: list[str | list[dict[str, str]]], *, max_new_tokens: int, batch_size: int = 16,
                     chat: bool = True) -> list[Sequence]:
    """Greedy answers, generated in left-padded batches with transformers' ``generate``.

    Batched and single-sequence passes can round differently, so an answer may
    differ from ``quickdraft generate`` at a near-tie; for training data that
    does not matter (the loss's targets are recomputed on the exact sequence).
    """
    target = engine.target
    eos = sorted(target.eos_ids)
    pad = target.tokenizer.pad_token_id
    pad = eos[0] if pad is None else pad
    encoded = [engine.encode(p, chat=chat) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
    out: dict[int, Sequence] = {}
    for start in range(0, len(order), batch_size):
        batch = order[start: start + batch_size]
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)  # [B, W], left-padded
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]):] = 1
        gen = target.model.generate(
            input_ids=ids.to(target.device), attention_mask=mask.to(target.device), do_sample=False,
            max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad,
        )[:, width:].tolist()
        for row, i in enumerate(batch):
            answer = gen[row]
            for j, token in enumerate(answer):
                if token in target.eos_ids:
                    answer = answer[: j + 1]
                    break
            out[i] = Sequence(tuple(encoded[i]) + tuple(answer), len(encoded[i]))
        log.info("generated answers %d/%d", min(start + batch_size, len(order)), len(order))
    return [out[i] for i in range(len(prompts))]


def corpus_sequences(paths: list[str], tokenizer, *, length: int = 256, minimum: int = 16) -> list[Sequence]:
    """Plain text (or JSONL, as ``quickdraft index build`` reads it) cut into sequences of ``length`` tokens.

    Extra training text for teacher-forced objectives: the drafter learns the
    frozen model's distributions on it (prompt_len 0: every position counts).
    EAGLE trains on fixed text this way; it widens what a drafter has seen far
    beyond the model's answers to a few hundred prompts, at the cost of one
    forward pass per sequence.
    """
    from ..datastore import read_documents

    out: list[Sequence] = []
    for path in paths:
        for text in read_documents(path):
            ids = tokenizer.encode(text, add_special_tokens=False)
            out += [Sequence(tuple(ids[i: i + length]), 0) for i in range(0, len(ids), length)
                    if len(ids[i: i + length]) >= minimum]
    if paths and not out:
        raise QuickdraftError(f"the training corpus {', '.join(paths)} holds no text")
    return out
