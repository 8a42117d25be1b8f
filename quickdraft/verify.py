"""Verification: which drafted tokens the target model accepts.

Vocabulary (as in vLLM's rejection sampler): the tokens a step emits are the
*accepted* draft tokens followed by exactly one target token, which is the
*recovered* token (sampled from the residual after a rejection, or the target's
argmax at the first mismatch under greedy) or the *bonus* token (when every
drafted token on the path was accepted). A step therefore always emits
``accepted + 1`` tokens, so plain decoding (empty draft) emits one per step.

Drafts are chains or trees. Nodes are numbered as in :mod:`quickdraft.tree`:
node 0 is the *root*, the last committed token (fed to the model but not yet in
the KV cache); node ``i >= 1`` is draft token ``i - 1``. The target's logits at
node ``i`` predict the token after node ``i``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .sampling import argmax_rows, sample
from .tree import children


@dataclass(frozen=True)
class Verdict:
    """The outcome of verifying one draft.

    path: node indices (>= 1) of the accepted draft tokens, root to leaf.
    tokens: emitted token ids: the accepted draft tokens, then the recovered or
        bonus token. ``len(tokens) == len(path) + 1``.
    best: the target's argmax at the root and every node, when the verifier
        computed it (greedy); drafters learn from it (``StepOutcome.argmax``).
    """

    path: tuple[int, ...]
    tokens: tuple[int, ...]
    best: tuple[int, ...] | None = field(default=None, repr=False, compare=False)  # greedy: argmax per node

    @property
    def accepted(self) -> int:
        return len(self.path)


def verify_greedy(target_logits: torch.Tensor, draft_tokens: list[int]) -> Verdict:
    """Accept the longest draft prefix equal to the target's argmax, plus one token.

    target_logits: [k + 1, V], logits at the root and at each draft token.
    draft_tokens: k token ids.

    >>> logits = torch.eye(5)[[3, 1, 4, 2]] # argmax at each node: 3, 1, 4, 2
    >>> verify_greedy(logits, [3, 1, 0])     # 3, 1 match; 0 != 4, recover 4
    Verdict(path=(1, 2), tokens=(3, 1, 4))
    >>> verify_greedy(logits, [3, 1, 4])     # all match, bonus 2
    Verdict(path=(1, 2, 3), tokens=(3, 1, 4, 2))
    """
    k = len(draft_tokens)
    assert target_logits.shape[0] == k + 1, f"need {k + 1} logit rows, got {target_logits.shape[0]}"
    best = argmax_rows(target_logits)  # [k + 1]
    accepted = 0
    while accepted < k and draft_tokens[accepted] == best[accepted]:
        accepted += 1
    tokens = tuple(draft_tokens[:accepted]) + (best[accepted],)
    return Verdict(path=tuple(range(1, accepted + 1)), tokens=tokens, best=tuple(best))


def verify_sampling(
    target_probs: torch.Tensor,
    draft_tokens: list[int],
    draft_probs: torch.Tensor | None,
    generator: torch.Generator,
) -> Verdict:
    """Speculative sampling (Leviathan et al. 2023; Chen et al. 2023) for a chain.

    target_probs: [k + 1, V], the target distribution at the root and each draft token.
    draft_probs: [k, V], the distribution each draft token was sampled from, or
        None for a deterministic drafter (then each draft distribution is one-hot).

    Draft token ``x`` at position ``i`` is accepted with probability
    ``min(1, target_probs[i, x] / draft_probs[i, x])``. On the first rejection
    the recovered token is drawn from the residual
    ``max(0, target_probs[i] - draft_probs[i])`` normalised; if every token is
    accepted the bonus token is drawn from ``target_probs[k]``. The emitted
    tokens then follow the target distribution exactly.
    """
    k = len(draft_tokens)
    assert target_probs.shape[0] == k + 1, f"need {k + 1} prob rows, got {target_probs.shape[0]}"
    if draft_probs is not None:
        assert draft_probs.shape == (k, target_probs.shape[1]), (
            f"draft_probs must be [{k}, {target_probs.shape[1]}], got {tuple(draft_probs.shape)}"
        )
    accepted_tokens: list[int] = []
    for i, token in enumerate(draft_tokens):
        p_target = float(target_probs[i, token])
        p_draft = 1.0 if draft_probs is None else float(draft_probs[i, token])
        if p_draft > 0 and torch.rand((), generator=generator).item() * p_draft < p_target:
            accepted_tokens.append(token)
            continue
        residual = residual_distribution(target_probs[i], None if draft_probs is None else draft_probs[i], token)
        accepted_tokens.append(sample(residual, generator))
        return Verdict(path=tuple(range(1, i + 1)), tokens=tuple(accepted_tokens))
    accepted_tokens.append(sample(target_probs[k], generator))
    return Verdict(path=tuple(range(1, k + 1)), tokens=tuple(accepted_tokens))


def residual_distribution(target_row: torch.Tensor, draft_row: torch.Tensor | None, token: int) -> torch.Tensor:
    """Normalised ``max(0, target - draft)``: [V] -> [V].

    draft_row None means the draft was the one-hot distribution on ``token``,
    so the residual is the target with ``token`` removed.
    """
    if draft_row is None:
        residual = target_row.clone()
        residual[token] = 0.0
    else:
        residual = (target_row - draft_row).clamp_min(0.0)
    total = float(residual.sum())
    if total <= 0.0:
        # Only possible when target == draft up to rounding; the target itself
        # is then the right distribution to fall back to.
        return target_row
    return residual / total


def verify_tree_greedy(target_logits: torch.Tensor, draft_tokens: list[int], parents: tuple[int, ...]) -> Verdict:
    """Greedy acceptance over a token tree: follow the target's argmax down the tree.

    target_logits: [n + 1, V] at the root and every node; parents: see :mod:`quickdraft.tree`.
    From the root, move to the child whose token equals the target's argmax at
    the current node; stop when no child matches and emit the argmax there.
    This is the longest root-to-leaf path whose tokens equal the target's
    argmax at each parent, plus the bonus token.

    >>> logits = torch.eye(6)[[2, 5, 4, 1]]  # argmax at nodes 0..3: 2, 5, 4, 1
    >>> verify_tree_greedy(logits, [1, 2, 4], (0, 0, 2))  # root's children 1 ("1"), 2 ("2"); node 3 ("4") under 2
    Verdict(path=(2, 3), tokens=(2, 4, 1))
    """
    n = len(draft_tokens)
    assert target_logits.shape[0] == n + 1, f"need {n + 1} logit rows, got {target_logits.shape[0]}"
    best = argmax_rows(target_logits)  # [n + 1]
    path, tokens = follow_tree(draft_tokens, parents, lambda node, depth: best[node])
    return Verdict(path=path, tokens=tokens, best=tuple(best))


def follow_tree(draft_tokens: list[int], parents: tuple[int, ...],
                target_token: Callable[[int, int], int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """From the root, the target's token at each node (``target_token(node, depth)``, asked once per node on
    the path) and the child carrying it, while there is one: (accepted path, emitted tokens).

    >>> follow_tree([7, 8, 9], (0, 0, 2), lambda node, depth: {0: 8, 2: 9, 3: 1}[node])
    ((2, 3), (8, 9, 1))
    """
    child_by_token: dict[tuple[int, int], int] = {}
    for node, (parent, token) in enumerate(zip(parents, draft_tokens), start=1):
        child_by_token.setdefault((parent, token), node)  # the first of duplicated siblings
    path: list[int] = []
    tokens: list[int] = []
    node = 0
    while True:
        token = target_token(node, len(path))
        tokens.append(token)
        child = child_by_token.get((node, token))
        if child is None:
            return tuple(path), tuple(tokens)
        path.append(child)
        node = child


def verify_tree_positional(
    target_probs: torch.Tensor,
    draft_tokens: list[int],
    parents: tuple[int, ...],
    draw: Callable[[int], torch.Generator],
) -> Verdict:
    """Sampling acceptance of a deterministic draft (chain or tree) with one draw per token position.

    target_probs: [n + 1, V] at the root and every node; draw(d): the generator for
    the token emitted after d accepted tokens (a fresh one per position, see
    :class:`~quickdraft.sampling.Draws`). From the root: draw the token ``x`` from
    the current node's target row with ``draw(depth)``; move to a child whose
    token is ``x``; with none, ``x`` is the recovered token (at a leaf, the bonus).

    Every emitted token is a draw from the target distribution at its position,
    whatever was drafted, so the output follows the target exactly; and with the
    draws of plain sampling (the same seed) it is the very token plain sampling
    emits there. A draft token is accepted with probability ``target[x]``, as
    speculative sampling accepts a one-hot draft; siblings add their
    probabilities. (Draft distributions that are not one-hot need
    :func:`verify_tree_sampling`.)

    >>> probs = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    >>> verify_tree_positional(probs, [0, 1, 2], (0, 0, 2), lambda d: torch.Generator().manual_seed(d))
    Verdict(path=(2, 3), tokens=(1, 2, 0))
    """
    n = len(draft_tokens)
    assert target_probs.dim() == 2 and target_probs.shape[0] == n + 1, (
        f"need {n + 1} prob rows, got {tuple(target_probs.shape)}"
    )
    assert len(parents) == n, f"need {n} parents, got {len(parents)}"
    path, tokens = follow_tree(draft_tokens, parents, lambda node, depth: sample(target_probs[node], draw(depth)))
    return Verdict(path=path, tokens=tokens)


def verify_tree_sampling(
    target_probs: torch.Tensor,
    draft_tokens: list[int],
    parents: tuple[int, ...],
    draft_probs: torch.Tensor | None,
    generator: torch.Generator,
) -> Verdict:
    """Recursive rejection sampling over a token tree (SpecInfer; Jeon et al. 2024).

    target_probs: [n + 1, V], the target distribution at the root and at every node.
    parents: see :mod:`quickdraft.tree`; siblings are tried in node order.
    draft_probs: [n, V] or None. Row ``i - 1`` is the distribution node ``i``'s
        token was drawn from *given its parent path and its earlier siblings*:
        for siblings drawn i.i.d. from q it is q for every sibling; for siblings
        drawn from q without replacement it is q with the earlier siblings'
        tokens removed and renormalised (see :func:`sample_without_replacement`).
        None means deterministic drafting: every row is one-hot on the node's
        token. A one-hot row is always a valid choice, even for a sampled token
        (it only lowers acceptance), so a drafter may drop its probabilities.

    At the current node (starting at the root) with residual ``r`` (at first the
    target row of that node), each child with token ``x`` and draft row ``q`` is
    accepted with probability ``min(1, r[x] / q[x])``; on rejection
    ``r <- normalise(max(0, r - q))`` (for a one-hot ``q``: ``x`` is removed and
    ``r`` renormalised, so a duplicated sibling token is never accepted twice).
    An accepted child becomes the current node with a fresh target row. When
    every child is rejected, the recovered token is drawn from ``r``; at a leaf,
    the bonus token is drawn from the leaf's target row. Each round emits a
    token with exactly the distribution ``r`` it started from (speculative
    sampling), whatever the draft proposed, so the emitted tokens follow the
    target distribution exactly.

    On a chain with the same generator state it draws the same random numbers
    and returns the same verdict as :func:`verify_sampling`.

    >>> probs = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    >>> g = torch.Generator().manual_seed(0)
    >>> verify_tree_sampling(probs, [0, 1, 2], (0, 0, 2), None, g)  # node 1 ("0") has target prob 0
    Verdict(path=(2, 3), tokens=(1, 2, 0))
    """
    n = len(draft_tokens)
    assert target_probs.dim() == 2 and target_probs.shape[0] == n + 1, (
        f"need {n + 1} prob rows, got {tuple(target_probs.shape)}"
    )
    assert len(parents) == n, f"need {n} parents, got {len(parents)}"
    if draft_probs is not None:
        assert draft_probs.shape == (n, target_probs.shape[1]), (
            f"draft_probs must be [{n}, {target_probs.shape[1]}], got {tuple(draft_probs.shape)}"
        )
    kids = children(parents)
    path: list[int] = []
    tokens: list[int] = []
    node = 0
    while True:
        if not kids[node]:  # a leaf: everything on the path was accepted; bonus token
            tokens.append(sample(target_probs[node], generator))
            return Verdict(path=tuple(path), tokens=tuple(tokens))
        if draft_probs is None:
            child, recovered = _siblings_one_hot(target_probs[node], kids[node], draft_tokens, generator)
        else:
            child, recovered = _siblings_sampled(target_probs[node], kids[node], draft_tokens, draft_probs, generator)
        if child is None:
            tokens.append(recovered)
            return Verdict(path=tuple(path), tokens=tuple(tokens))
        path.append(child)
        tokens.append(draft_tokens[child - 1])
        node = child


def _siblings_one_hot(
    target_row: torch.Tensor, kids: list[int], draft_tokens: list[int], generator: torch.Generator
) -> tuple[int | None, int]:
    """One round over deterministic siblings: (accepted child, -1) or (None, recovered token).

    target_row: [V]. The residual after removing tokens R is the target with R
    zeroed, renormalised; a sibling ``x`` not in R is accepted with probability
    ``target[x] / (1 - target[R])``. Only the removed mass is tracked, so a
    round costs O(siblings) until a token has to be drawn.
    """
    removed: list[int] = []
    removed_mass = 0.0
    for child in kids:
        token = draft_tokens[child - 1]
        if token in removed:
            continue  # already rejected: the residual gives it probability 0
        p = float(target_row[token])
        remaining = 1.0 - removed_mass
        if remaining > 0 and torch.rand((), generator=generator).item() * remaining < p:
            return child, -1
        removed.append(token)
        removed_mass += p
    residual = target_row.clone()
    residual[removed] = 0.0
    total = float(residual.sum())
    if total <= 0.0:  # only by rounding: the rejected tokens held all the mass
        return None, sample(target_row, generator)
    return None, sample(residual / total, generator)


def _siblings_sampled(
    target_row: torch.Tensor, kids: list[int], draft_tokens: list[int], draft_probs: torch.Tensor,
    generator: torch.Generator,
) -> tuple[int | None, int]:
    """One round over siblings with draft distributions: (accepted child, -1) or (None, recovered token)."""
    residual = target_row
    for child in kids:
        token = draft_tokens[child - 1]
        draft_row = draft_probs[child - 1]  # [V]
        p_target = float(residual[token])
        p_draft = float(draft_row[token])
        if p_draft > 0 and torch.rand((), generator=generator).item() * p_draft < p_target:
            return child, -1
        residual = residual_distribution(residual, draft_row, token)
    return None, sample(residual, generator)


def sample_without_replacement(
    draft_row: torch.Tensor, count: int, generator: torch.Generator
) -> tuple[list[int], torch.Tensor]:
    """Draw ``count`` distinct tokens from draft_row: [V], one after another.

    Returns the tokens and their per-sibling draft distributions [count, V]:
    row j is ``draft_row`` with the first j tokens removed and renormalised,
    which is what :func:`verify_tree_sampling` needs for siblings drawn this way.

    >>> toks, rows = sample_without_replacement(torch.tensor([0.5, 0.5, 0.0]), 2, torch.Generator().manual_seed(0))
    >>> sorted(toks), rows[1, toks[0]].item()
    ([0, 1], 0.0)
    """
    rows = []
    tokens: list[int] = []
    row = draft_row.clone()
    for _ in range(count):
        total = float(row.sum())
        if total <= 0:
            break
        row = row / total
        rows.append(row)
        token = sample(row, generator)
        tokens.append(token)
        row = row.clone()
        row[token] = 0.0
    return tokens, torch.stack(rows) if rows else draft_row.new_zeros(0, draft_row.shape[-1])
