"""Verification: which drafted tokens the target model accepts.

Vocabulary (as in vLLM's rejection sampler): the tokens a step emits are the
*accepted* draft tokens followed by exactly one target token, which is the
*recovered* token (sampled from the residual after a rejection, or the target's
argmax at the first mismatch under greedy) or the *bonus* token (when every
drafted token on the path was accepted). A step therefore always emits
``accepted + 1`` tokens, so plain decoding (empty draft) emits one per step.

Drafts are chains here. Nodes are numbered as in :mod:`quickdraft.tree`:
node 0 is the *root*, the last committed token (fed to the model but not yet in
the KV cache); node ``i >= 1`` is draft token ``i - 1``. The target's logits at
node ``i`` predict the token after node ``i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampling import sample


@dataclass(frozen=True)
class Verdict:
    """The outcome of verifying one draft.

    path: node indices (>= 1) of the accepted draft tokens, root to leaf.
    tokens: emitted token ids: the accepted draft tokens, then the recovered or
        bonus token. ``len(tokens) == len(path) + 1``.
    """

    path: tuple[int, ...]
    tokens: tuple[int, ...]

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
    best = target_logits.argmax(dim=-1).tolist()  # [k + 1]
    accepted = 0
    while accepted < k and draft_tokens[accepted] == best[accepted]:
        accepted += 1
    tokens = tuple(draft_tokens[:accepted]) + (best[accepted],)
    return Verdict(path=tuple(range(1, accepted + 1)), tokens=tokens)


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
    best = target_logits.argmax(dim=-1).tolist()  # [n + 1]
    child_by_token: dict[tuple[int, int], int] = {}
    for node, (parent, token) in enumerate(zip(parents, draft_tokens), start=1):
        child_by_token.setdefault((parent, token), node)
    path: list[int] = []
    tokens: list[int] = []
    node = 0
    while (child := child_by_token.get((node, best[node]))) is not None:
        path.append(child)
        tokens.append(best[node])
        node = child
    tokens.append(best[node])
    return Verdict(path=tuple(path), tokens=tuple(tokens))
