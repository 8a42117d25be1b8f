"""The llama.cpp backend: a GGUF file run as shipped (no dequantization), through llama-cpp-python's
low-level API.

One verification pass is one ``llama_decode`` batch: a row per tree node, at position ``root + depth``,
in the KV-cache sequences of every leaf below it (:func:`quickdraft.tree.plan_sequences`), so a node
attends exactly to the committed tokens and its ancestors; logits come back for every node. The cache
is one unified KV buffer (``kv_unified``): sequence 0 holds the committed tokens, and a pass's other
sequences are dropped once the accepted path is known.

Exactness. A row of a pass is computed as plain decoding computes it only when (1) the build's kernels
give a row the same result whatever else is in its batch (llama-cpp-python built without the llamafile
sgemm and without CPU weight repacking: ``make setup`` does; the default build is not so, measured in
docs/llamacpp.md), and (2) attention adds the cached keys in the same order: the KV cells of the
committed tokens must lie in position order, as plain decoding lays them. A chain keeps that by
itself; of a tree's accepted path only the part that continues the pass's first cells (the first-child
chain, rows 1, 2, ... in the batch's depth-first order) keeps its cells; the rest of the path is
*pending*: committed, and computed again as the first rows of the next pass (no extra pass; those rows
ask for no logits). :func:`check_rows` checks all of it on the loaded model, on this machine, and
picks one-row plain passes (invariant build) or plain passes of two rows (other builds: exact, but a
plain step costs what a two-row pass costs), or reports that neither is exact.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import random
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np
import torch

from ..errors import QuickdraftError
from ..tree import SequencePlan, plan_sequences
from .llamacpp_context import DEFAULT_CONTEXT, MAX_LEAVES, LlamaContext, available, check_key

__all__ = ["DEFAULT_CONTEXT", "MAX_LEAVES", "LlamaContext", "LlamaCppTarget", "LlamaKV", "RowCheck", "available",
           "check_rows", "load", "row_limit", "select_rows"]

log = logging.getLogger(__name__)

CHECK_VERSION = 3  # 2: the row limit; 3: three trees per prefix


class LlamaKV:
    """The target's cache on llama.cpp: sequence 0 of the context's KV cells, and pending tokens.

    ``len(cache)`` counts the committed tokens: ``cells`` of them in KV cells (at cells 0 .. cells - 1,
    in position order) and ``pending`` ones that the next pass computes first. Invariant, as for
    :class:`~quickdraft.cache.KVCache`: the cells hold exactly what a fresh prefill would give.
    """

    def __init__(self, context: LlamaContext, epoch: int) -> None:
        self.context = context
        self.epoch = epoch
        self.cells = 0
        self.pending: list[int] = []
        self.last: tuple[SequencePlan, list[int], int] | None = None  # the last pass: plan, tokens, root position

    def __len__(self) -> int:
        if self.last is not None:
            plan, tokens, root = self.last
            return root + len(tokens)
        return self.cells + len(self.pending)

    def _drop_pass(self, keep: int) -> None:
        """Keep the root and the first ``keep - 1`` rows of the last pass (its first-child chain); drop the rest."""
        assert self.last is not None
        plan, _, root = self.last
        for seq in range(1, plan.leaves):
            self.context.seq_rm(seq, -1, -1)
        self.context.seq_rm(0, root + keep, -1)
        self.cells = root + keep
        self.last = None

    def keep(self, start: int, offsets: list[int]) -> None:
        """After a pass: keep ``start`` committed tokens plus the pass's nodes ``offsets`` (the root, then
        the accepted path, increasing). The part of the path in the pass's first rows keeps its cells;
        the rest becomes pending."""
        assert self.last is not None, "keep() follows a forward pass"
        plan, tokens, root = self.last
        assert start == root and offsets and offsets[0] == 0, "keep the root and a path below it"
        assert all(a < b for a, b in zip(offsets, offsets[1:])), "offsets must increase"
        path = offsets[1:]
        kept = plan.contiguous(path)
        self._drop_pass(1 + kept)
        self.pending = [tokens[node] for node in path[kept:]]

    def truncate(self, length: int) -> None:
        """Drop every entry at position >= length (into a pass: only a chain pass, or all of it)."""
        current = len(self)
        if not 0 <= length <= current:
            raise ValueError(f"cannot truncate a cache of length {current} to {length}")
        if self.last is not None:
            plan, _, root = self.last
            if length <= root:
                self._drop_pass(0)
            elif plan.order == tuple(range(len(plan.order))):  # a chain: its first entries
                self._drop_pass(length - root)
                return
            else:
                raise QuickdraftError("a tree pass's entries are kept with keep(), not truncate()")
        if length >= self.cells:
            del self.pending[length - self.cells:]
            return
        self.context.seq_rm(0, length, -1)
        self.cells = length
        self.pending = []


@dataclass(frozen=True)
class RowCheck:
    """Rows of verification passes compared with plain decoding, bit for bit (``pad_single``: plain passes
    of two rows). rows/differ: chains, and chains after a kept tree path (what exactness needs);
    tree_rows/tree_differ: the nodes of whole trees (whether trees can be verified at once)."""

    pad_single: bool
    rows: int
    differ: int
    tree_rows: int = 0
    tree_differ: int = 0
    max_rows: int = 0  # the most rows a pass may have and stay exact (row_limit); 0: not found

    @property
    def exact(self) -> bool:
        return self.rows > 0 and self.differ == 0 and self.max_rows >= 2

    @property
    def trees(self) -> bool:
        return self.exact and self.tree_rows > 0 and self.tree_differ == 0


class LlamaCppTarget:
    """A GGUF model on llama.cpp, with the interface the engine drives (as :class:`~quickdraft.models.TargetModel`).

    capabilities: logits only; methods that need the model's hidden states, layers or input embeddings
    run on the transformers backend (the registry says so before building them).
    """

    backend = "llamacpp"
    capabilities = frozenset({"logits"})
    layout = None  # no tree layout: rows are made invariant by the build (see the module's docstring)

    def __init__(self, context: LlamaContext, tokenizer, *, name: str, path: Path) -> None:
        self.context = context
        self.tokenizer = tokenizer
        self.tokenizer_lock = threading.Lock()
        self.name = name
        self.path = path
        lib = context.lib
        self.vocab_size = context.n_vocab
        self.max_context = context.n_ctx
        eog = {i for i in range(context.n_vocab) if lib.llama_vocab_is_eog(context.vocab, i)}
        if getattr(tokenizer, "eos_token_id", None) is not None:
            eog.add(int(tokenizer.eos_token_id))
        self.eos_ids = frozenset(eog)
        desc = ctypes.create_string_buffer(256)
        lib.llama_model_desc(context.model, desc, len(desc))
        self.description = desc.value.decode("utf-8", "replace")
        self.dtype = "gguf-" + (self.description.split()[-1] if self.description else "unknown")
        self.device = torch.device("cpu")
        self.threads = context.threads
        self.kernels = lib.llama_print_system_info().decode("utf-8", "replace").strip()
        self.config = SimpleNamespace(
            model_type=context.meta("general.architecture"), hidden_size=int(lib.llama_model_n_embd(context.model)),
            num_hidden_layers=int(lib.llama_model_n_layer(context.model)),
            num_attention_heads=int(lib.llama_model_n_head(context.model)),
            num_key_value_heads=int(lib.llama_model_n_head_kv(context.model)), vocab_size=context.n_vocab,
        )
        self.n_params = int(lib.llama_model_n_params(context.model))
        self.pad_single = False  # plain passes of two rows: set by check_rows where one-row passes differ
        # Whole trees verified in one pass only where their rows are exact here (select_rows); else the engine
        # verifies a draft's best chain: attention adds the cached values in SIMD lanes by KV cell, and a
        # branch's nodes sit in cells plain decoding gives other positions (docs/llamacpp.md).
        self.verifies_trees = False
        self.max_draft: int | None = None  # draft tokens a pass may verify exactly (the row limit less the root)
        self.check: RowCheck | None = None
        self._epoch = 0

    @property
    def exact(self) -> bool:
        """Whether greedy output is promised equal to plain greedy decoding on this backend (checked here)."""
        return self.check is not None and self.check.exact

    @property
    def not_exact_message(self) -> str | None:
        return None if self.exact else NOT_EXACT

    # ---------------------------------------------------------------- the cache

    def new_cache(self) -> LlamaKV:
        """An empty cache. The context has one KV buffer: a new cache replaces the previous one."""
        self.context.clear()
        self._epoch += 1
        return LlamaKV(self.context, self._epoch)

    def _check_cache(self, cache: LlamaKV) -> None:
        if not isinstance(cache, LlamaKV) or cache.context is not self.context or cache.epoch != self._epoch:
            raise QuickdraftError("this llama.cpp cache was replaced by a newer one (one generation at a time)")

    # ---------------------------------------------------------------- passes

    def prefill(self, tokens: list[int], cache: LlamaKV, *, hidden: bool = False) -> None:
        """Append ``tokens`` to the cache (no logits)."""
        if hidden:
            raise QuickdraftError("the llama.cpp backend does not expose hidden states (use --backend transformers)")
        if not tokens:
            return None
        self._check_cache(cache)
        if cache.last is not None:
            cache.truncate(len(cache))
        self._run(list(tokens), cache, plan_sequences(None, len(tokens) - 1), outputs=False)
        cache.keep(cache.last[2], list(range(len(tokens))))
        return None

    def forward(self, tokens: list[int], cache: LlamaKV, parents: tuple[int, ...] | None = None) -> torch.Tensor:
        """Logits [n, V] float32 of ``tokens`` (a chain, or a tree by ``parents``) appended to the cache."""
        return self.forward_full(tokens, cache, parents).logits

    def forward_full(self, tokens: list[int], cache: LlamaKV, parents: tuple[int, ...] | None = None, *,
                     extra_embeds=None, extra_parents=None, hidden: bool = False):
        """As :meth:`quickdraft.models.TargetModel.forward_full`, without extra embeddings or hidden states."""
        from ..models import ForwardOutput

        if extra_embeds is not None or hidden:
            raise QuickdraftError("the llama.cpp backend runs on tokens and returns logits only: no input "
                                  "embeddings, no hidden states (use --backend transformers)")
        self._check_cache(cache)
        if cache.last is not None:  # a pass nobody kept: as the transformers cache, its entries stay a chain
            raise QuickdraftError("keep() or truncate() the previous pass first")
        plan = plan_sequences(parents, len(tokens) - 1)
        logits = self._run(list(tokens), cache, plan, outputs=True)
        if plan.order != tuple(range(len(tokens))):
            row = np.empty(len(tokens), dtype=np.int64)
            row[list(plan.order)] = np.arange(len(tokens))
            logits = logits[row]  # batch order -> node order
        return ForwardOutput(logits=torch.from_numpy(logits))

    def _run(self, tokens: list[int], cache: LlamaKV, plan: SequencePlan, *, outputs: bool) -> np.ndarray:
        if plan.leaves > self.context.max_leaves:
            raise QuickdraftError(f"a tree with {plan.leaves} leaves; llama.cpp passes hold {self.context.max_leaves}")
        if cache.pending and self.max_draft is not None and len(cache.pending) + len(tokens) > self.max_draft + 1:
            pending = list(cache.pending)  # too many rows for one exact pass: the pending tokens first, alone
            cache.pending = []
            self.context.decode(pending, range(cache.cells, cache.cells + len(pending)), [(0,)] * len(pending),
                                [False] * len(pending))
            cache.cells += len(pending)
        pending = cache.pending
        root = cache.cells + len(pending)
        if root + len(tokens) > self.max_context:
            raise QuickdraftError(f"the context holds {self.max_context} tokens")
        every = tuple(range(plan.leaves))
        ids = list(pending) + [tokens[node] for node in plan.order]
        positions = list(range(cache.cells, root)) + [root + plan.depth[node] for node in plan.order]
        seqs: list[Sequence[int]] = [every] * len(pending) + [plan.seqs[node] for node in plan.order]
        wanted = [False] * len(pending) + [outputs] * len(tokens)
        padded = self.pad_single and len(ids) == 1
        if padded:  # a second row, in a sequence of its own that sees the same cells; dropped after
            ids, positions, seqs, wanted = ids * 2, positions * 2, [(0,), (1,)], wanted + [False]
            self.context.seq_cp(0, 1)
        for seq in range(1, plan.leaves):
            self.context.seq_cp(0, seq)  # the committed cells, seen by every branch
        decoded = False
        try:
            logits = self.context.decode(ids, positions, seqs, wanted)
            decoded = True
        finally:
            if not decoded:  # the error goes on to the caller; the pass's cells and this cache are dropped
                for seq in range(1, max(plan.leaves, 2)):
                    self.context.seq_rm(seq, -1, -1)
                self.context.seq_rm(0, cache.cells, -1)
                cache.pending = []  # the cache no longer holds what it committed: the generation cannot go on
                cache.epoch = -1
        if padded:
            self.context.seq_rm(1, -1, -1)
        cache.cells = root
        cache.pending = []
        cache.last = (plan, tokens, root)
        return logits

    # ---------------------------------------------------------------- drafting with this model

    def draft_lm(self):
        """A :class:`~quickdraft.drafters.lm.DraftLM` over this model's file, in a context of its own."""
        from .llamacpp_lm import LlamaCppLM

        return LlamaCppLM(LlamaContext(self.path, n_ctx=self.max_context, threads=self.threads, max_leaves=1))

    def batch_slots(self, slots: int):
        """A context decoding up to ``slots`` requests together (:class:`~.llamacpp_batch.LlamaSlots`), and
        the check of its rows against each request decoded alone, on this machine (cached)."""
        from .llamacpp_batch import LlamaSlots, checked_batch

        batch = LlamaSlots(self, slots)
        return batch, checked_batch(batch)

    @property
    def pass_weights(self) -> int:
        """Weights one pass reads (the cost proxy of a draft model against its target)."""
        return self.n_params


ROW_SIZES = (2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32)  # pass sizes tried for the row limit


def row_limit(target: LlamaCppTarget, *, seed: int = 0) -> int:
    """The most rows a verification pass may have with every row equal to plain decoding's (0: not even two).

    Some quantization types take other kernels from some row count on (measured: Q4_K_M/Q6_K files
    differ from 8 rows up on an AVX-512 EPYC; Q4_1 is exact to 32 rows and beyond)."""
    from ..exactness import plain_logits

    rng = random.Random(seed)
    vocab = int(target.vocab_size)
    prefix = [rng.randrange(vocab) for _ in range(100)]
    tokens = [rng.randrange(vocab) for _ in range(ROW_SIZES[-1])]
    cache = target.new_cache()
    target.prefill(prefix, cache)
    base = len(cache)
    plain = plain_logits(target, prefix, tokens, tuple(range(len(tokens) - 1)), cache)
    limit = 0
    for rows in ROW_SIZES:
        verified = target.forward(tokens[:rows], cache)
        cache.keep(base, [0])
        cache.truncate(base)
        if any(not torch.equal(verified[i], plain[i]) for i in range(rows)):
            break
        limit = rows
    return limit


def check_rows(target: LlamaCppTarget, *, seed: int = 0, max_rows: int = ROW_SIZES[-1]) -> RowCheck:
    """Verify chains and trees on ``target`` (as it is set: ``pad_single``) and compare every node's logits
    with plain decoding's (one-token passes after its ancestors), bit for bit; also a tree path kept off
    the pass's first branch (pending tokens, computed again) and the chain verified after it."""
    from ..exactness import plain_logits

    rng = random.Random(seed)
    vocab = int(target.vocab_size)
    counts = {"rows": 0, "differ": 0, "tree_rows": 0, "tree_differ": 0}

    def compare(verified, plain, kind: str) -> None:
        counts[f"{kind}rows"] += len(plain)
        counts[f"{kind}differ"] += sum(not torch.equal(v, p) for v, p in zip(verified, plain))

    for length in (37, 70, 300):
        prefix = [rng.randrange(vocab) for _ in range(length)]
        cache = target.new_cache()
        target.prefill(prefix, cache)
        base = len(cache)
        drafts = [tuple(range(min(rng.randint(5, 9), max_rows - 1))), (0,)]
        for _ in range(3):  # trees: enough nodes off the first branch to see a difference where there is one
            n = min(rng.randint(12, 18), max_rows)
            drafts.append(tuple(rng.randint(max(0, i - 3), i) for i in range(n - 1)))
        for parents in drafts:
            tokens = [rng.randrange(vocab) for _ in range(len(parents) + 1)]
            chain = parents == tuple(range(len(parents)))
            verified = target.forward(tokens, cache, None if chain else parents)
            cache.keep(base, [0])
            cache.truncate(base)
            compare(verified, plain_logits(target, prefix, tokens, parents, cache), "" if chain else "tree_")
        tokens = [rng.randrange(vocab) for _ in range(4)]
        target.forward(tokens, cache, (0, 0, 2))  # root -> 1, 2; 2 -> 3: the path 2, 3 is not the first branch
        cache.keep(base, [0, 2, 3])
        after = [rng.randrange(vocab) for _ in range(5)]
        verified = target.forward(after, cache)
        cache.keep(len(cache) - len(after), [0])
        cache.truncate(base)
        plain = plain_logits(target, prefix, [tokens[0], tokens[2], tokens[3], *after], tuple(range(7)), cache)
        compare(verified, plain[3:], "")
    return RowCheck(pad_single=target.pad_single, max_rows=max_rows, **counts)


def _check_path(target: LlamaCppTarget) -> Path:
    from ..paths import profiles_dir

    key = _check_key(target)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return profiles_dir() / f"llamacpp-rows-{target.path.stem[:60]}-t{target.threads}-{digest}.json"


def _check_key(target: LlamaCppTarget) -> dict:
    return {"version": CHECK_VERSION, **check_key(target)}


def select_rows(target: LlamaCppTarget, *, refresh: bool = False) -> None:
    """Set ``target.pad_single`` and ``target.check`` from the checks on this machine (cached per file,
    build, threads and CPU): one-row plain passes when they are exact, else two-row ones, else not exact."""
    path = _check_path(target)
    key = _check_key(target)
    if path.is_file() and not refresh:
        try:
            data = json.loads(path.read_text())
            if data.get("key") == key:
                target.check = RowCheck(**data["chosen"])
                target.pad_single = target.check.pad_single
                target.verifies_trees = target.check.trees
                target.max_draft = max(target.check.max_rows - 1, 1)
                return
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable llama.cpp row check %s: %s", path, exc)
    checks = []
    for pad in (False, True):
        target.pad_single = pad
        log.info("checking that llama.cpp verifies rows as plain decoding computes them (once per machine)")
        limit = row_limit(target)
        checks.append(check_rows(target, max_rows=limit) if limit >= 2 else RowCheck(pad, 0, 0, max_rows=limit))
        if checks[-1].exact:
            break
    target.check = next((c for c in checks if c.exact), checks[0])
    target.pad_single = target.check.pad_single
    target.verifies_trees = target.check.trees
    target.max_draft = max(target.check.max_rows - 1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as out:
        json.dump({"key": key, "chosen": asdict(target.check), "checks": [asdict(c) for c in checks]}, out, indent=1)
    os.replace(out.name, path)


NOT_EXACT = ("exactness is not guaranteed with this llama.cpp build on this CPU: rows of a verification pass differ "
             "from plain decoding's, so output can differ from plain decoding at near-ties (build llama-cpp-python "
             "with CMAKE_ARGS=\"-DGGML_LLAMAFILE=OFF -DGGML_CPU_REPACK=OFF\": `make setup` does)")
PADDED = ("this llama.cpp build computes one-row passes differently from passes of several rows: plain steps run "
          "as two-row passes to stay exact (slower; `make setup` builds llama-cpp-python without the llamafile "
          "sgemm and CPU repacking, where one row suffices)")


def load(path: Path, *, name: str, threads: int | None = None, n_ctx: int | None = None) -> LlamaCppTarget:
    """A :class:`LlamaCppTarget` for a GGUF file, its rows checked on this machine."""
    from ..models import gguf_tokenizer

    context = LlamaContext(path, n_ctx=n_ctx, threads=threads)
    target = LlamaCppTarget(context, gguf_tokenizer(path), name=name, path=path)
    select_rows(target)
    if not target.exact:
        log.warning(NOT_EXACT)
    elif target.pad_single:
        log.warning(PADDED)
    return target
