"""Is every row of a verification pass computed as plain decoding computes it, on this machine? Checked, not assumed.

In bfloat16 on CPU quickdraft promises output equal to plain greedy decoding bit
for bit: each token verified inside a draft chain or tree must get exactly the
logits a one-token pass gives it. That holds only when the pass's key layout
matches how the CPU's matrix-product kernel adds a row's keys, and kernels
differ between CPUs (measured, docs/exactness.md): oneDNN's bfloat16 product on
AVX-512 CPUs adds keys in aligned pairs; ATen's own product, which torch takes
on CPUs without AVX-512, adds them in four interleaved partial sums with the
pass's last keys all in the first one. :data:`quickdraft.tree.LAYOUTS` holds
one layout per known kernel.

:func:`select_layout` checks the layouts on the loaded model, on this machine:
the attention kernel on sensitive data after prefixes of every length modulo 4,
then chains and random trees of the model itself after two prefixes, each
node's logits against the same token decoded alone after its ancestors. The first
layout under which every node is bit-identical is used; none: no layout, and
:attr:`~quickdraft.models.TargetModel.exact` is False (the CLI, bench and
server say so). The verdict is cached next to the latency profile, keyed by
model shape, dtype, threads, CPU, its kernels and torch's version.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .paths import profiles_dir
from .profile import profile_key
from .tree import LAYOUTS, children, depths

log = logging.getLogger(__name__)

CHECK_VERSION = 4  # 2: the attention kernel is checked with sensitive data too; 3: prefixes by prefill; 4: two model prefixes
PREFIXES = (96, 97, 98, 99)  # cached tokens before the checked drafts: every residue modulo 4 (and parity)
MODEL_PREFIXES = (97, 98)  # the model's own check: two of them (each check has its cost on a slow CPU)


@dataclass(frozen=True)
class RowCheck:
    """One layout's check: rows (draft nodes) compared with plain decoding, and how many differed."""

    layout: str
    rows: int
    differ: int

    @property
    def exact(self) -> bool:
        return self.rows > 0 and self.differ == 0


def plain_logits(target, prefix: list[int], tokens: list[int], parents: tuple[int, ...],
                 cache=None) -> list[torch.Tensor]:
    """Each node's logits [V] decoded plainly (one-token passes) after the prefix and its ancestors.

    Depth-first, so each node is decoded once: the cache holds the prefix and the node's ancestors.
    cache: one holding exactly the prefilled prefix, to reuse (it is left so), or None."""
    kids = children(parents)
    node_depths = depths(parents)
    if cache is None:
        cache = target.new_cache()
        target.prefill(prefix, cache)  # as the engine fills the cache: one causal pass
    base = len(cache)
    out: list[torch.Tensor | None] = [None] * len(tokens)
    stack = [0]
    while stack:
        node = stack.pop()
        cache.truncate(base + node_depths[node])
        out[node] = target.forward([tokens[node]], cache)[0]
        stack.extend(reversed(kids[node]))
    cache.truncate(base)
    return out  # type: ignore[return-value]


def check_layout(target, layout: str, *, trees_per_prefix: int = 1, seed: int = 0) -> RowCheck:
    """Verify random chains and trees in one pass each under ``layout`` and compare every node with plain decoding."""
    rng = random.Random(seed)
    vocab = int(target.vocab_size)
    saved = target.layout
    target.layout = layout
    rows = differ = 0
    try:
        for length in MODEL_PREFIXES:
            prefix = [rng.randrange(vocab) for _ in range(length)]
            drafts = [tuple(range(rng.randint(5, 9)))]  # a chain
            for _ in range(trees_per_prefix):  # deep, branching trees, every depth's residue modulo 4
                n = rng.randint(12, 20)
                drafts.append(tuple(rng.randint(max(0, i - 3), i) for i in range(n - 1)))
            cache = target.new_cache()
            target.prefill(prefix, cache)  # as the engine fills the cache: one causal pass
            base = len(cache)
            for parents in drafts:
                tokens = [rng.randrange(vocab) for _ in range(len(parents) + 1)]
                verified = target.forward(tokens, cache, None if parents == tuple(range(len(parents))) else parents)
                cache.truncate(base)
                plain = plain_logits(target, prefix, tokens, parents, cache)
                rows += len(tokens)
                differ += sum(not torch.equal(verified[i], plain[i]) for i in range(len(tokens)))
    finally:
        target.layout = saved
    return RowCheck(layout=layout, rows=rows, differ=differ)


def attention_rows(parents: tuple[int, ...], start: int, layout: str, *, heads: int, kv: int, dim: int,
                   seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The bfloat16 attention output of each node ([1, heads, dim]) in a draft pass laid out by ``layout``,
    and in its plain decoding pass (its path at consecutive positions, then one ignored key, as
    :attr:`~quickdraft.models.TargetModel.pad_single` feeds it), with quickdraft's attention.

    The data make rounding show: the queries are zero, so a row's weights are all equal, and the values
    cancel along every path (the cache's sum, the root about minus that sum, each node about minus its
    parent), so every partial sum is large against the row's result, and adding a key into another
    partial sum, or in another order, changes the result's bfloat16 bits in most rows."""
    from types import SimpleNamespace

    from . import attention
    from .tree import ancestor_mask, path_to

    n = len(parents) + 1
    nodes, slot_parents = LAYOUTS[layout](parents, start)
    g = torch.Generator().manual_seed(seed)
    cache_k = torch.randn(1, kv, start, dim, generator=g).bfloat16()
    cache_v = (64 * torch.randn(1, kv, start, dim, generator=g)).bfloat16()
    node_q = torch.zeros(1, heads, n, dim, dtype=torch.bfloat16)
    node_k = torch.randn(1, kv, n, dim, generator=g).bfloat16()
    node_v = torch.empty(1, kv, n, dim, dtype=torch.bfloat16)
    node_v[:, :, 0] = -cache_v.double().sum(2)
    for node in range(1, n):
        jitter = 1 + 0.05 * torch.randn(1, kv, dim, generator=g, dtype=torch.float64)
        node_v[:, :, node] = -node_v[:, :, parents[node - 1]].double() * jitter
    at = [max(node, 0) for node in nodes]  # padding slots: any inputs (nobody sees them)
    total = len(nodes)
    allowed = torch.ones(total, start + total, dtype=torch.bool)
    allowed[:, start:] = ancestor_mask(slot_parents)
    mask = torch.zeros(1, 1, total, start + total, dtype=torch.bfloat16).masked_fill_(~allowed, -3e38)
    module = SimpleNamespace(num_key_value_groups=heads // kv, training=False)

    def attend(q, k, v, m):  # [1, heads, rows, dim]
        return attention.grouped_attention(module, q, k, v, m, scaling=dim ** -0.5)[0].transpose(1, 2)

    rows = attend(node_q[:, :, at], torch.cat([cache_k, node_k[:, :, at]], 2),
                  torch.cat([cache_v, node_v[:, :, at]], 2), mask)
    tree, plain = [], []
    for node in range(n):
        path = [0] + path_to(parents, node)
        keys = torch.cat([cache_k, node_k[:, :, path], node_k[:, :, :1]], 2)  # + the ignored second row's key
        values = torch.cat([cache_v, node_v[:, :, path], node_v[:, :, :1]], 2)
        pair = torch.zeros(1, 1, 2, keys.shape[2], dtype=torch.bfloat16)
        pair[0, 0, 0, -1] = -3e38
        plain.append(attend(node_q[:, :, [node, node]], keys, values, pair)[:, :, 0])
        tree.append(rows[:, :, nodes.index(node)])
    return tree, plain


def check_attention(layout: str, *, heads: int = 32, kv: int = 4, dim: int = 128, trees: int = 4,
                    seed: int = 0) -> RowCheck:
    """:func:`attention_rows` for a chain and random trees after prefixes of every length modulo 4."""
    rng = random.Random(seed)
    rows = differ = 0
    for start in (PREFIXES[0] * 3 + i for i in range(4)):
        drafts = [tuple(range(8))] + [tuple(rng.randint(max(0, i - 3), i) for i in range(rng.randint(8, 20)))
                                      for _ in range(trees)]
        for parents in drafts:
            tree, plain = attention_rows(parents, start, layout, heads=heads, kv=kv, dim=dim,
                                         seed=rng.randrange(1 << 30))
            rows += len(tree)
            differ += sum(not torch.equal(a, b) for a, b in zip(tree, plain))
    return RowCheck(layout=layout, rows=rows, differ=differ)


def check_machine(target, layout: str) -> RowCheck:
    """The checks of ``layout``: the attention kernel with sensitive data (in a large head shape and in the
    target's), then the target itself (chains and trees of real tokens). All their rows, and differences."""
    config = target.config
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    checks = [check_attention(layout), check_attention(layout, heads=heads, kv=kv, dim=dim, seed=1)]
    if all(check.exact for check in checks):
        checks.append(check_layout(target, layout))
    return RowCheck(layout=layout, rows=sum(c.rows for c in checks), differ=sum(c.differ for c in checks))


def _cache_path(target, directory: Path | None) -> Path:
    key = replace(profile_key(target), layout="")
    return (directory or profiles_dir()) / ("exactness-" + key.filename())


def select_layout(target, *, directory: Path | None = None, refresh: bool = False) -> str | None:
    """The first layout of :data:`~quickdraft.tree.LAYOUTS` that this machine computes exactly (cached), or None."""

    path = _cache_path(target, directory)
    key = asdict(replace(profile_key(target), layout=""))
    if path.is_file() and not refresh:
        try:
            data = json.loads(path.read_text())
            if data.get("version") == CHECK_VERSION and data.get("key") == key and (
                    data.get("layout") is None or data["layout"] in LAYOUTS):
                return data.get("layout")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable exactness check %s: %s", path, exc)
    checks = []
    for name in LAYOUTS:
        log.info("checking that %s layout computes every draft row as plain decoding (%s, once per machine)",
                 name, key["dtype"])
        checks.append(check_machine(target, name))
        if checks[-1].exact:
            break
    chosen = next((c.layout for c in checks if c.exact), None)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as out:
        json.dump({"version": CHECK_VERSION, "key": key, "layout": chosen,
                   "checks": [asdict(c) for c in checks]}, out, indent=1)
    os.replace(out.name, path)
    return chosen


NOT_EXACT = ("exactness is not guaranteed on this CPU in {dtype}: no draft layout computes every row as plain "
             "decoding does here, so output can differ from plain decoding at near-ties (float32 is exact)")
NOT_EXACT_GPU = ("exactness is not guaranteed on {device} in {dtype}: passes of several rows round differently from "
                 "one-token passes there, so output can differ from plain decoding at near-ties (float32 is exact)")


def not_exact_message(target) -> str | None:
    """Why greedy output is not promised equal to plain decoding on this target (None: it is)."""
    if target.exact:
        return None
    own = getattr(target, "not_exact_message", None)  # a backend that knows its own reason (llama.cpp)
    if own:
        return own
    dtype = str(target.dtype).removeprefix("torch.")
    if target.device.type != "cpu":
        return NOT_EXACT_GPU.format(device=target.device.type, dtype=dtype)
    return NOT_EXACT.format(dtype=dtype)
