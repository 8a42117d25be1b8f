"""Combined drafters (``--method pld+recycle``): one tree merged from several drafters' drafts.

The registry builds a :class:`Combined` for any name ``a+b+...`` of registered
methods (see :func:`quickdraft.drafters.registry.get_method`); the engine sees
one drafter and never looks at the name.

Each step every part proposes in turn (earlier parts first, each told through
``DraftContext.nodes`` how many nodes are left) and its nodes are merged into a
:class:`~quickdraft.tree.TokenTrie`, so shared prefixes are verified once and
siblings stay distinct. The merged draft is deterministic: parts' draft
probabilities are dropped, which keeps sampling exact (a one-hot draft row is
always valid, see :func:`~quickdraft.verify.verify_tree_sampling`) at some cost
in acceptance for sampling drafters.

After verification each part observes the step *in its own numbering*: its
draft (the prefix of its nodes that made it into the merged tree), followed by
the accepted path's nodes that were not in its draft, with the matching rows
of the target's logits (and hidden states). So ``path`` is the full accepted
path, ``tokens`` the emitted tokens, and ``len(path) + 1 == len(tokens)`` as
for a drafter on its own.

Extra inputs (``Draft.extra_embeds``: PPD's prompt tokens) ride along: a
part's extras whose anchor node was placed are attached to that node in the
merged tree (:func:`attach_extras`), and the part observes their logits in its
own numbering. So ``ppd+ngram`` verifies the n-gram guesses and PPD's in one
pass while PPD's prompt tokens guess the next step's tokens.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch

from ..sizing import AdaptiveNodeBudget
from ..tree import TokenTrie
from .base import Draft, DraftContext, Drafter, StepOutcome


def merge_drafts(drafts: Sequence[Draft], budget: int) -> tuple[Draft, list[list[int]]]:
    """Merge drafts into one tree of at most ``budget`` nodes, earlier drafts first.

    Returns the merged draft and, per input draft, the merged node of its root
    and of each of its nodes that was placed (a prefix of its nodes: placing
    stops at the first node that no longer fits).

    >>> a = Draft(tokens=(5, 6, 7))                            # a chain 5-6-7
    >>> b = Draft(tokens=(5, 8, 9), parents=(0, 1, 0))         # 5-8 and 9
    >>> merged, maps = merge_drafts([a, b], budget=5)
    >>> merged.tokens, merged.parents, maps
    ((5, 6, 7, 8, 9), (0, 1, 2, 1, 0), [[0, 1, 2, 3], [0, 1, 4, 5]])
    """
    trie = TokenTrie(budget=budget)
    maps: list[list[int]] = []
    for draft in drafts:
        parents = draft.parents if draft.parents is not None else tuple(range(len(draft)))
        node_of = [0]  # draft node -> merged node
        for token, parent in zip(draft.tokens, parents):
            child = trie.child(node_of[parent], token)
            if child is None:
                trie.insert([token], parent=node_of[parent])
                child = trie.child(node_of[parent], token)
                if child is None:  # the budget is spent
                    break
            node_of.append(child)
        maps.append(node_of)
    return Draft(tokens=tuple(trie.tokens), parents=tuple(trie.parents)), maps


def attach_extras(merged: Draft, drafts: Sequence[Draft], maps: Sequence[list[int]]) -> tuple[Draft, list[list[int]]]:
    """Add the drafts' extra inputs to a merged tree: those whose anchor node was placed.

    maps: from :func:`merge_drafts`. Returns the merged draft with the kept
    extras (renumbered: extra j of the merged draft is node ``len(merged) + 1 + j``)
    and, per draft, the merged index of each of its kept extras (its other
    extras were dropped; a dropped extra drops the extras attached to it).

    >>> e = torch.zeros(3, 2)
    >>> a = Draft(tokens=(5,))
    >>> b = Draft(tokens=(6, 7), parents=(0, 1), extra_embeds=e, extra_parents=(0, 3, 2))  # 0 <- x <- y; 7 <- z
    >>> merged, maps = merge_drafts([a, b], budget=2)       # 7 does not fit, so z is dropped
    >>> merged, extras = attach_extras(merged, [a, b], maps)
    >>> merged.tokens, merged.parents, merged.extra_parents, extras
    ((5, 6), (0, 0), (0, 3), [[], [0, 1]])
    """
    n = len(merged)
    rows: list[torch.Tensor] = []
    parents: list[int] = []
    extras: list[list[int]] = []
    for draft, node_of in zip(drafts, maps):
        kept: list[int] = []
        if draft.extra_embeds is not None and draft.extra_parents is not None:
            k = len(draft)
            merged_of: dict[int, int] = {}  # the part's kept extra -> merged extra index
            for i in _kept_extras(draft, node_of):
                parent = draft.extra_parents[i]  # a tree node of the part, or an earlier (kept) extra
                parents.append(node_of[parent] if parent <= k else n + 1 + merged_of[parent - k - 1])
                merged_of[i] = len(rows)
                kept.append(len(rows))
                rows.append(draft.extra_embeds[i])
        extras.append(kept)
    if not rows:
        return merged, extras
    return replace(merged, extra_embeds=torch.stack(rows), extra_parents=tuple(parents)), extras


def part_view(outcome: StepOutcome, draft: Draft, node_of: list[int], extras: list[int] | None = None) -> StepOutcome:
    """The step as one part sees it, in its own node numbering.

    draft: the part's draft; node_of: merged node of its root and of each
    placed node (from :func:`merge_drafts`). The view's draft is the placed
    prefix of the part's draft, then any accepted-path nodes it lacked, then
    its kept extra inputs (``extras``: their merged indices, from
    :func:`attach_extras`) with their logits.

    >>> merged = Draft(tokens=(5, 6, 8), parents=(0, 1, 1))
    >>> out = StepOutcome(draft=merged, path=(1, 3), tokens=(5, 8, 4), target_logits=torch.eye(4))
    >>> view = part_view(out, Draft(tokens=(5, 6)), [0, 1, 2])   # the part drafted 5-6; 5-8 was accepted
    >>> view.draft.tokens, view.draft.parents, view.path, view.target_logits.argmax(-1).tolist()
    ((5, 6, 8), (0, 1, 1), (1, 3), [0, 1, 2, 3])
    """
    placed = len(node_of) - 1
    parents = list(draft.parents[:placed]) if draft.parents is not None else list(range(placed))
    tokens = list(draft.tokens[:placed])
    rows = list(node_of)  # merged node behind each view node
    part_node = {merged: i for i, merged in enumerate(node_of)}
    path: list[int] = []
    current = 0
    for merged in outcome.path:
        node = part_node.get(merged)
        if node is None or node == 0 or parents[node - 1] != current:
            tokens.append(outcome.draft.tokens[merged - 1])
            parents.append(current)
            rows.append(merged)
            node = len(tokens)
        path.append(node)
        current = node
    probs = None
    if draft.draft_probs is not None:
        extra = len(tokens) - placed
        one_hot = draft.draft_probs.new_zeros(extra, draft.draft_probs.shape[1])
        one_hot[torch.arange(extra), torch.tensor(tokens[placed:], dtype=torch.long)] = 1.0
        probs = torch.cat([draft.draft_probs[:placed], one_hot])
    identity = rows == list(range(len(rows)))

    def gather(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        return t[: len(rows)] if identity else t[torch.tensor(rows, device=t.device)]

    extra_embeds = extra_parents = extra_logits = None
    if extras and outcome.extra_logits is not None and draft.extra_parents is not None:
        k, n = len(draft), len(tokens)
        kept = _kept_extras(draft, node_of)
        assert len(kept) == len(extras), "extras must come from attach_extras for this draft"
        view_of = {own: i for i, own in enumerate(kept)}
        extra_parents = tuple(p if p <= k else n + 1 + view_of[p - k - 1] for p in (draft.extra_parents[i] for i in kept))
        extra_embeds = draft.extra_embeds[kept]
        extra_logits = outcome.extra_logits[torch.tensor(extras, device=outcome.extra_logits.device)]
    view = Draft(tokens=tuple(tokens), parents=tuple(parents), draft_probs=probs, extra_embeds=extra_embeds,
                 extra_parents=extra_parents)
    best = outcome.target_argmax
    return replace(outcome, draft=view, path=tuple(path), target_logits=gather(outcome.target_logits),
                   target_hidden=gather(getattr(outcome, "target_hidden", None)), extra_logits=extra_logits,
                   target_argmax=None if best is None else tuple(best[r] for r in rows))


def surviving_nodes(proposed: Draft, verified: Draft) -> dict[int, int]:
    """Node of ``verified`` (a cut of ``proposed``: fewer nodes, maybe renumbered) behind each node of
    ``proposed`` that survived the cut, matched by the tokens on the way from the root; 0 is the root.

    >>> tree = Draft(tokens=(5, 6, 7), parents=(0, 1, 0))
    >>> surviving_nodes(tree, Draft(tokens=(5, 6)))   # its first branch, as a chain
    {0: 0, 1: 1, 2: 2}
    >>> surviving_nodes(tree, Draft(tokens=(5, 7), parents=(0, 0)))   # depth 1 only
    {0: 0, 1: 1, 3: 2}
    """
    def keys(draft: Draft) -> dict[tuple[int, ...], int]:
        parents = draft.parents if draft.parents is not None else tuple(range(len(draft)))
        path: list[tuple[int, ...]] = [()]
        for token, parent in zip(draft.tokens, parents):
            path.append(path[parent] + (int(token),))
        return {key: node for node, key in enumerate(path)}

    kept = keys(verified)
    return {node: kept[key] for key, node in keys(proposed).items() if key in kept}


def _mapped_prefix(node_of: list[int], remap: dict[int, int]) -> list[int]:
    """A part's node map after a cut: its first nodes whose merged nodes survived, renumbered."""
    out = []
    for merged in node_of:
        if merged not in remap:
            break
        out.append(remap[merged])
    return out


def _kept_extras(draft: Draft, node_of: list[int]) -> list[int]:
    """The part's extras that :func:`attach_extras` kept: their anchors were placed."""
    k, kept = len(draft), []
    alive: list[bool] = []
    for parent in draft.extra_parents or ():
        ok = parent < len(node_of) if parent <= k else alive[parent - k - 1]
        alive.append(ok)
        if ok:
            kept.append(len(alive) - 1)
    return kept


class Combined(Drafter):
    """Several drafters' drafts merged into one tree within a node budget.

    parts: (method name, drafter) pairs, most trusted first (its nodes are
    placed first). nodes: a fixed node budget; else ``budget`` chooses per step;
    with neither, the merged tree is capped at ``default_nodes``.
    """

    def __init__(self, parts: Sequence[tuple[str, Drafter]], *, nodes: int | None = None,
                 budget: AdaptiveNodeBudget | None = None, default_nodes: int = 32) -> None:
        if len(parts) < 2:
            raise ValueError("a combined method needs at least two parts")
        self.parts = list(parts)
        self.nodes = nodes if nodes is not None or budget is not None else default_nodes
        self.budget = budget if nodes is None else None
        self._pending: list[tuple[Draft, list[int], list[int]]] | None = None
        self._merged: Draft | None = None
        self._used = 0

    @property
    def wants_hidden(self) -> bool:  # type: ignore[override]
        return any(getattr(drafter, "wants_hidden", False) for _, drafter in self.parts)

    @property
    def wants_prompt_hidden(self) -> bool:  # type: ignore[override]
        return any(getattr(drafter, "wants_prompt_hidden", False) for _, drafter in self.parts)

    def propose(self, context: DraftContext) -> Draft:
        size = self.nodes if self.budget is None else self.budget.next_budget(len(context.tokens))
        if context.nodes is not None:
            size = min(size, context.nodes)
        self._used = size
        drafts: list[Draft] = []
        placed = 0
        for _, drafter in self.parts:
            draft = drafter.propose(replace(context, nodes=max(size - placed, 0)))
            drafts.append(draft)
            placed += len(draft)  # an upper bound: shared prefixes are merged
        merged, maps = merge_drafts(drafts, size)
        merged, extras = attach_extras(merged, drafts, maps)
        self._pending = list(zip(drafts, maps, extras))
        self._merged = merged
        return merged

    def observe_prompt(self, tokens, hidden) -> None:
        for _, drafter in self.parts:
            drafter.observe_prompt(tokens, hidden if getattr(drafter, "wants_prompt_hidden", False) else None)

    def observe(self, outcome: StepOutcome) -> None:
        if self._pending is None:
            return
        pending = self._pending
        if outcome.draft is not self._merged:  # the engine cut the tree (room left, a pass's row limit, its best chain)
            remap = surviving_nodes(self._merged, outcome.draft)
            pending = [(draft, _mapped_prefix(node_of, remap), extras) for draft, node_of, extras in pending]
        for (_, drafter), (draft, node_of, extras) in zip(self.parts, pending):
            drafter.observe(part_view(outcome, draft, node_of, extras))
        if self.budget is not None and len(outcome.draft):
            self.budget.record(self._used, outcome.path)
        self._pending = None

    def reset(self) -> None:
        self._pending = None
        self._merged = None
        for _, drafter in self.parts:
            drafter.reset()
