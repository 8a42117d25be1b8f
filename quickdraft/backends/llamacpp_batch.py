"""Requests decoded together on llama.cpp: one context whose KV cache has a stream (a buffer of its own)
per request, and passes whose rows belong to several requests.

Why streams. Without flash attention, llama.cpp adds a row's attention values in SIMD lanes by KV *cell*
index, so a row equals plain decoding's only when its request's cells lie where plain decoding puts them:
position p in cell p (docs/llamacpp.md). One unified buffer shared by several requests interleaves their
cells; a stream per request (``kv_unified`` off) keeps each request's cells at its own positions, and
cells of other streams never enter its sums. :func:`check_batch` verifies on the loaded model, on this
machine, that every row of a batched pass is bit-identical to the same request decoded alone.

Passes. llama.cpp splits a pass over several streams into micro-batches (ubatches) of *consecutive*
sequence ids with the *same number of rows each* (its ``split_equal``); :func:`ubatch_sizes` mirrors
that, so a pass's cost can be planned: every ubatch reads all the weights once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import QuickdraftError
from .llamacpp_context import LlamaContext, check_key

log = logging.getLogger(__name__)

CHECK_VERSION = 1


def ubatch_sizes(rows: Sequence[tuple[int, int]], n_ubatch: int) -> list[int]:
    """Rows of each ubatch llama.cpp runs for a pass of ``rows`` = (sequence id, rows) in increasing id
    order, on a cache with a stream per sequence: a run of consecutive ids from the lowest one with rows
    left, the same number of rows from each, as many as the run's fewest (and ``n_ubatch`` allow).

    >>> ubatch_sizes([(0, 1), (1, 1), (2, 4), (3, 4)], 512)    # plain and drafting requests: two ubatches
    [4, 6]
    >>> ubatch_sizes([(0, 1), (2, 1)], 512)                    # a gap between ids splits the pass
    [1, 1]
    """
    left = {seq: count for seq, count in rows if count > 0}
    sizes = []
    while left:
        ids = sorted(left)
        run = [ids[0]]
        for seq in ids[1:]:
            if seq != run[-1] + 1 or len(run) >= n_ubatch:
                break
            run.append(seq)
        take = max(1, min(min(left[seq] for seq in run), n_ubatch // len(run)))
        sizes.append(take * len(run))
        for seq in run:
            left[seq] -= take
            if left[seq] == 0:
                del left[seq]
    return sizes


class PassCost:
    """Seconds of a batched pass: ``fixed + per_row * rows`` per ubatch, from passes timed when the batch
    starts, then corrected by every pass it runs (a running factor, so a slower machine moves it)."""

    def __init__(self, fixed: float, per_row: float, n_ubatch: int, rate: float = 0.1) -> None:
        self.fixed, self.per_row, self.n_ubatch, self.rate = fixed, per_row, n_ubatch, rate
        self.factor = 1.0

    def model(self, rows: Sequence[tuple[int, int]]) -> float:
        return sum(self.fixed + self.per_row * size for size in ubatch_sizes(rows, self.n_ubatch))

    def __call__(self, rows: Sequence[tuple[int, int]]) -> float:
        return self.factor * self.model(rows)

    def record(self, rows: Sequence[tuple[int, int]], seconds: float) -> None:
        predicted = self.model(rows)
        if predicted > 0 and seconds > 0:
            ratio = min(max(seconds / predicted, 1 / 3), 3.0)
            self.factor += self.rate * (ratio - self.factor)


@dataclass(frozen=True)
class BatchCheck:
    """Rows of batched passes compared with each request decoded alone, bit for bit."""

    rows: int
    differ: int

    @property
    def exact(self) -> bool:
        return self.rows > 0 and self.differ == 0


class LlamaSlots:
    """Up to ``slots`` requests on one llama.cpp context, each in a KV stream (sequence id) of its own.

    A slot's cache holds every committed token of its request but the last (the root), as
    :class:`~quickdraft.backends.llamacpp.LlamaKV`: ``prefill`` fills it, ``forward`` runs one pass over
    several slots' roots and draft chains, ``keep`` keeps a slot's root and accepted tokens.
    """

    def __init__(self, target, slots: int, *, context: int | None = None) -> None:
        if slots < 1:
            raise QuickdraftError(f"a batch needs at least one slot, got {slots}")
        limit = (target.max_draft or 0) + 1
        if target.check is not None and slots > limit:
            raise QuickdraftError(f"at most {limit} requests can be batched exactly with {target.name} on this "
                                  f"CPU (passes of more rows differ from plain decoding's)")
        self.target = target
        self.per_slot = int(context or target.max_context)
        self.context = LlamaContext(target.path, n_ctx=self.per_slot * slots, threads=target.threads,
                                    max_leaves=slots, unified=False)
        self.row_limit = limit if target.check is not None else None
        self.slots = slots
        self._free = list(range(slots))
        self.cells: dict[int, int] = {}  # slot -> committed tokens in its stream
        self.cost = PassCost(*self._time_rows(), n_ubatch=self.context.n_batch)

    # ------------------------------------------------------------ slots

    def open(self) -> int:
        """A free slot, its stream empty (the lowest free id, so passes keep consecutive ids)."""
        if not self._free:
            raise QuickdraftError(f"all {self.slots} batch slots are taken")
        self._free.sort()
        slot = self._free.pop(0)
        self.context.seq_rm(slot, -1, -1)
        self.cells[slot] = 0
        return slot

    def close(self, slot: int) -> None:
        if slot in self.cells:
            del self.cells[slot]
            self.context.seq_rm(slot, -1, -1)
            self._free.append(slot)

    def free(self) -> int:
        return len(self._free)

    # ------------------------------------------------------------ passes

    def prefill(self, slot: int, tokens: Sequence[int]) -> None:
        """Append tokens to a slot's stream (no logits), in the chunks plain decoding uses (``n_batch``)."""
        if not tokens:
            return
        base = self.cells[slot]
        if base + len(tokens) > self.per_slot:
            raise QuickdraftError(f"the context holds {self.per_slot} tokens per request")
        self.context.decode(list(tokens), range(base, base + len(tokens)), [(slot,)] * len(tokens),
                            [False] * len(tokens))
        self.cells[slot] = base + len(tokens)

    def forward(self, rows: Sequence[tuple[int, Sequence[int]]]) -> list[np.ndarray]:
        """One pass: for each (slot, [root, *draft]) in increasing slot order, logits [1 + draft, V]."""
        ids, positions, seqs = [], [], []
        for slot, tokens in rows:
            base = self.cells[slot]
            if base + len(tokens) > self.per_slot:
                raise QuickdraftError(f"the context holds {self.per_slot} tokens per request")
            ids += tokens
            positions += range(base, base + len(tokens))
            seqs += [(slot,)] * len(tokens)
        if self.row_limit is not None and len(ids) > self.row_limit:
            raise QuickdraftError(f"a pass of {len(ids)} rows; exact passes hold at most {self.row_limit} here")
        shape = [(slot, len(tokens)) for slot, tokens in rows]
        start = time.perf_counter()
        logits = self.context.decode(ids, positions, seqs, [True] * len(ids))
        self.cost.record(shape, time.perf_counter() - start)
        out, at = [], 0
        for slot, tokens in rows:
            out.append(logits[at: at + len(tokens)])
            at += len(tokens)
            self.cells[slot] += len(tokens)
        return out

    def keep(self, slot: int, length: int) -> None:
        """Keep the first ``length`` committed tokens of a slot (after a pass: the root and the accepted path)."""
        if not 0 <= length <= self.cells[slot]:
            raise ValueError(f"cannot keep {length} of a slot holding {self.cells[slot]}")
        self.context.seq_rm(slot, length, -1)
        self.cells[slot] = length

    def _time_rows(self) -> tuple[float, float]:
        """(fixed, per row) seconds of a pass, from passes of 1 and 8 rows after 64 tokens (medians)."""
        slot = self.open()
        try:
            self.prefill(slot, [1] * 64)
            times = {}
            for n in (1, 8, 1, 8, 1, 8):
                start = time.perf_counter()
                self.context.decode([1] * n, range(64, 64 + n), [(slot,)] * n, [True] * n)
                times.setdefault(n, []).append(time.perf_counter() - start)
                self.context.seq_rm(slot, 64, -1)
            one, eight = (float(np.median(times[n])) for n in (1, 8))
            per_row = max((eight - one) / 7, 1e-6)
            return max(one - per_row, 1e-6), per_row
        finally:
            self.close(slot)


def check_batch(slots: LlamaSlots, *, seed: int = 0, steps: int = 12) -> BatchCheck:
    """Requests decoded together, drafts and rejections included, against each decoded alone (one-row
    passes on the target's own context), every row's logits bit for bit."""
    target = slots.target
    rng = random.Random(seed)
    vocab = int(target.vocab_size)
    n = min(slots.slots, 3)
    prompts = [[rng.randrange(vocab) for _ in range(length)] for length in (37, 300, 70)[:n]]
    alone = [_plain_run(target, prompt, 4 * steps + 1) for prompt in prompts]
    opened = [slots.open() for _ in prompts]
    rows = differ = 0
    try:
        for slot, prompt in zip(opened, prompts):
            slots.prefill(slot, prompt[:-1])
        done = [0] * n
        budget = max((slots.row_limit or 16) // n, 1)
        for _ in range(steps):
            passes = []
            for i, slot in enumerate(opened):
                size = rng.randint(1, min(budget, 4))
                right = rng.randrange(size)  # draft tokens that equal plain decoding's
                tokens, _ = alone[i]
                chain = tokens[done[i]: done[i] + 1 + right] + [rng.randrange(vocab) for _ in range(size - 1 - right)]
                passes.append((slot, chain, right))
            out = slots.forward([(slot, chain) for slot, chain, _ in passes])
            for i, ((slot, chain, right), logits) in enumerate(zip(passes, out)):
                expected = alone[i][1]
                for k in range(right + 1):
                    rows += 1
                    differ += not np.array_equal(logits[k], expected[done[i] + k])
                base = slots.cells[slot] - len(chain)
                slots.keep(slot, base + right + 1)
                done[i] += right + 1
    finally:
        for slot in opened:
            slots.close(slot)
    return BatchCheck(rows=rows, differ=differ)


def _plain_run(target, prompt: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy decoding alone, one row a pass: the tokens fed (the prompt's last first) and each pass's logits."""
    cache = target.new_cache()
    target.prefill(prompt[:-1], cache)
    tokens, logits = [prompt[-1]], []
    for _ in range(steps):
        row = target.forward([tokens[-1]], cache)[0].numpy()
        cache.keep(len(cache) - 1, [0])
        logits.append(row)
        tokens.append(int(row.argmax()))
    return tokens, logits


def _check_path(slots: LlamaSlots) -> tuple[Path, dict]:
    from ..paths import profiles_dir

    key = {**check_key(slots.target), "version": CHECK_VERSION, "requests": min(slots.slots, 3)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return profiles_dir() / f"llamacpp-batch-{slots.target.path.stem[:60]}-{digest}.json", key


def checked_batch(slots: LlamaSlots, *, refresh: bool = False) -> BatchCheck:
    """:func:`check_batch`'s verdict for this model, build, CPU and slot count (cached next to the row check)."""
    path, key = _check_path(slots)
    if path.is_file() and not refresh:
        try:
            data = json.loads(path.read_text())
            if data.get("key") == key:
                return BatchCheck(**data["check"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable llama.cpp batch check %s: %s", path, exc)
    verdict = check_batch(slots)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as out:
        json.dump({"key": key, "check": asdict(verdict)}, out, indent=1)
    os.replace(out.name, path)
    return verdict


__all__ = ["BatchCheck", "LlamaSlots", "PassCost", "check_batch", "checked_batch", "ubatch_sizes"]
