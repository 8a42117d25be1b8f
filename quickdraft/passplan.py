"""How one target pass on the transformers backend lays out its nodes: a pure function of the draft's shape.

A pass feeds ``n`` tokens (the root and the draft, a chain or a tree by ``parents``) and ``m`` extra input
embeddings after them. To keep every row equal to plain decoding's, the pass may use a *key layout*
(:data:`quickdraft.tree.LAYOUTS`): slots, some holding copies of a node and some padding, in an order the
CPU's product kernel adds as plain decoding does. :func:`plan_pass` says which slot holds which node, which
slots are fed as rows (each node once, at its first slot; a copy's keys are spread in the cache instead of
computed), the rows' positions and attention mask, and how to put logits and cache entries back in node
order.

    >>> plan = plan_pass(3, 0, (0, 0), start=10)         # a root and two siblings after 10 cached tokens
    >>> plan.fed, plan.positions, plan.allowed.int().tolist()
    ([0, 1, 2], [10, 11, 11], [[1, 0, 0], [1, 1, 0], [1, 0, 1]])
    >>> plan_pass(1, 0, None, start=5, pad_single=True).slots   # a padded plain step: a second, ignored row
    [0, -1]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tree import LAYOUTS, ancestor_mask, chain_parents, depths


@dataclass(frozen=True)
class PassPlan:
    """slots: the node in each slot of the pass (-1: padding); slot_parents: the tree over the slots (None:
    a causal chain); fed: the slots fed as rows, in order; first: each node's first slot; spread: per slot,
    the row whose keys and values it holds (None: every slot is fed); positions: each row's position (None:
    causal positions); allowed: [rows, slots] which slots each row attends to, past the cache (None: causal);
    keep: the slots to keep in the cache, in node order, and picked: the output rows, in node order (None:
    already in node order)."""

    slots: list[int]
    slot_parents: tuple[int, ...] | None
    fed: list[int]
    first: dict[int, int]
    spread: list[int] | None
    positions: list[int] | None
    allowed: torch.Tensor | None
    keep: list[int] | None
    picked: list[int] | None


def plan_pass(n: int, m: int, parents: tuple[int, ...] | None, *, start: int, pad_single: bool = False,
              layout: str | None = None, can_spread: bool = False) -> PassPlan:
    """The layout of a pass of ``n`` tokens and ``m`` extra inputs (``parents``: the tree over all n + m nodes,
    node 0 the root; None: a chain) after ``start`` cached tokens. pad_single: plain steps run as two-row
    passes and drafts by ``layout``; can_spread: copies may be spread in the cache instead of computed."""
    slots, slot_parents = list(range(n + m)), parents
    if pad_single:
        if n + m == 1:  # a second, ignored row (see TargetModel.pad_single)
            slots, slot_parents = [0, -1], (0,)
        elif layout is not None:
            slots, slot_parents = LAYOUTS[layout](chain_parents(n + m - 1) if parents is None else parents, start)
    total = len(slots)
    first: dict[int, int] = {}
    for slot, node in enumerate(slots):
        first.setdefault(node, slot)
    spreading = len(first) < total and can_spread
    fed = sorted(first.values()) if spreading else list(range(total))
    row_of_slot = {slot: row for row, slot in enumerate(fed)}
    spread = [row_of_slot[first[node]] for node in slots] if spreading else None
    positions = allowed = None
    if slot_parents is not None and any(p != i for i, p in enumerate(slot_parents)):
        positions = [depths(slot_parents)[slot] + start for slot in fed]
        allowed = ancestor_mask(slot_parents)  # [slots, slots]
        if spreading:
            allowed = allowed[torch.tensor(fed)]  # a row sees the keys its slot sees
    keep = picked = None
    if slots != list(range(n + m)):  # back to node order: each node's first slot (a copy computes the same)
        keep = [first[node] for node in range(n + m)]
        picked = [row_of_slot[slot] for slot in keep]
    return PassPlan(slots=slots, slot_parents=slot_parents, fed=fed, first=first, spread=spread, positions=positions,
                    allowed=allowed, keep=keep, picked=picked)


__all__ = ["PassPlan", "plan_pass"]
