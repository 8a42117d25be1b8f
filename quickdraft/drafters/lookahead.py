"""``lookahead``: lookahead (Jacobi) decoding (Fu et al. 2024, "Break the Sequential
Dependency of LLM Inference Using Lookahead Decoding"), through the ordinary
drafter contract.

The paper, in brief: Jacobi decoding guesses a window of future tokens and
refines all of them in parallel, each iteration feeding the previous guesses
and taking the model's argmax at every position as the new guess. Lookahead
decoding keeps a 2D window (W positions x N-1 past levels of that trajectory)
in a *lookahead branch*, harvests n-grams from it (tokens along diagonals of
consecutive levels) into an *n-gram pool* keyed by first token, and in the
same forward pass verifies up to G pooled n-grams that start with the last
committed token (the *verification branch*), with a custom attention mask.

How that maps onto quickdraft's one loop (propose -> verify -> accept ->
commit -> observe), without touching the engine:

* The lookahead branch is a chain of W guessed tokens hanging off the root
  of the draft tree. The engine verifies every node, so the target's logits
  at the window nodes come back in ``StepOutcome.target_logits``: their argmax
  is one Jacobi iteration (the output at window node i is the model's guess
  for position i + 1 given the root and window tokens 1..i). ``observe`` turns
  these outputs into the next window, shifted by the number of tokens the
  step committed, and padded at the end with tokens drawn from the context
  (the paper starts from random prompt tokens too).
* n-grams come from consecutive Jacobi levels: the current window tokens
  (each produced by the previous iteration) followed by the model's new
  output, ``(g[i], ..., g[i+N-2], out[i+N-2])``, with the root standing as
  ``g[0]``. They go into :class:`NgramPool` (first token -> at most G most
  recent tails).
* The verification branch: the pool's tails for the root token, merged with
  the window into one tree by :class:`~quickdraft.tree.TokenTrie` (shared
  prefixes share nodes). The engine's greedy acceptance follows the target's
  argmax down that tree.

As in the authors' implementation (its ``POOL_FROM_PROMPT`` switch), the pool
can also take the n-grams of the committed text (``from_context``, on by
default): the prompt's and, as decoding goes, the output's. Text the model
copies or repeats is then drafted from the pool too, not only phrases its
Jacobi trajectories found.

Lossless: every window and candidate node is an ordinary tree node, verified
like any other; a window node that happens to equal the target's argmax is
accepted legitimately, a wrong one costs nothing but its slot.

Simplifications: the paper keeps N-1 levels of the trajectory in the
lookahead branch (so its diagonals are exactly consecutive Jacobi steps, each
output conditioned on the previous level) and gives each window position a
custom attention pattern; here the branch holds one level as a causal chain,
so the model's output at a window node is conditioned on all earlier window
tokens of the *current* level, and the older levels live on only through the
tokens the window carries forward. This keeps the branch a plain tree path
(no engine change, no custom mask) at the cost of slower convergence far
down the window. The window is shifted by the accepted length each step
rather than kept at fixed positions.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np

from ..tree import TokenTrie
from .base import Draft, DraftContext, Drafter, StepOutcome
from .registry import BuildContext, register


def collect_ngrams(root: int, window: Sequence[int], outputs: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """n-grams from one Jacobi step: window tokens then the model's output after them.

    window: W guessed tokens (a chain under ``root``); outputs: W tokens, the
    target's argmax at each window node. With ``g = [root, *window]`` the
    n-grams are ``(g[i], ..., g[i+n-2], outputs[i+n-3])`` for every i that fits.

    >>> collect_ngrams(9, [1, 2, 3], [20, 30, 40], n=3)
    [(9, 1, 20), (1, 2, 30), (2, 3, 40)]
    >>> collect_ngrams(9, [1], [5], n=3)
    [(9, 1, 5)]
    >>> collect_ngrams(9, [1, 2], [5, 6], n=2)
    [(1, 5), (2, 6)]
    """
    if n < 2:
        raise ValueError(f"n-grams need n >= 2, got {n}")
    guesses = [int(root), *(int(t) for t in window)]
    out = []
    for i in range(max(0, 3 - n), len(guesses) - n + 2):  # (with n = 2, skip (root, output at root))
        last = i + n - 2  # index in guesses of the n-gram's last window token (>= 1)
        out.append((*guesses[i: last + 1], int(outputs[last - 1])))
    return out


def next_window(outputs: Sequence[int], committed: int, width: int, pad: Sequence[int]) -> list[int]:
    """The next Jacobi window after a step that committed ``committed`` tokens.

    outputs: the target's argmax at the root and each window node,
        ``outputs[j]`` being the guess for the token j + 1 places after the root.
    The new root is ``committed`` places after the old one, so the window now
    starts at ``outputs[committed]``; the missing tail is filled from ``pad``.

    >>> next_window([5, 6, 7, 8], committed=2, width=3, pad=[0, 1])
    [7, 8, 0]
    >>> next_window([5, 6, 7, 8], committed=1, width=3, pad=[])
    [6, 7, 8]
    """
    window = [int(t) for t in outputs[committed: committed + width]]
    missing = width - len(window)
    return window + [int(t) for t in pad[:missing]]


class NgramPool:
    """n-grams keyed by their first token; each key keeps its ``per_key`` most recent tails.

    >>> pool = NgramPool(per_key=2)
    >>> pool.add([(1, 2, 3), (1, 4, 5), (1, 2, 3), (1, 6, 7), (8, 9, 9)])
    >>> pool.candidates(1)          # newest first; (1, 4, 5) fell out
    [(6, 7), (2, 3)]
    >>> pool.candidates(2)
    []
    """

    def __init__(self, *, per_key: int = 8, max_keys: int = 100_000) -> None:
        if per_key < 1 or max_keys < 1:
            raise ValueError("per_key and max_keys must be >= 1")
        self.per_key, self.max_keys = per_key, max_keys
        self._pool: OrderedDict[int, OrderedDict[tuple[int, ...], None]] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(tails) for tails in self._pool.values())

    def add(self, ngrams: Sequence[tuple[int, ...]]) -> None:
        for ngram in ngrams:
            key, tail = int(ngram[0]), tuple(int(t) for t in ngram[1:])
            tails = self._pool.get(key)
            if tails is None:
                tails = self._pool[key] = OrderedDict()
                if len(self._pool) > self.max_keys:
                    self._pool.popitem(last=False)
            else:
                self._pool.move_to_end(key)
            tails.pop(tail, None)
            tails[tail] = None  # most recent last
            if len(tails) > self.per_key:
                tails.popitem(last=False)

    def candidates(self, first: int) -> list[tuple[int, ...]]:
        """Tails of the pooled n-grams starting with ``first``, newest first."""
        return list(reversed(self._pool.get(int(first), {})))


class LookaheadDrafter(Drafter):
    """A Jacobi window plus pooled n-grams, verified as one tree.

    window: W, the window's length; ngram: N, the n-gram size; candidates: G,
    the most pooled n-grams verified per step; nodes: the most tree nodes
    (default W + G (N - 1), everything). The pool persists across requests
    (bounded); the window is per request.

    The window is always the first nodes of the tree (nodes 1..W, a chain), so
    its outputs can be read back even when a combining drafter verified only
    a prefix of this draft merged with others.
    """

    def __init__(self, *, window: int = 6, ngram: int = 4, candidates: int = 5, nodes: int | None = None,
                 from_context: bool = True, max_keys: int = 100_000, seed: int = 0) -> None:
        if window < 1 or ngram < 2 or candidates < 0 or (nodes is not None and nodes < 1):
            raise ValueError("need window >= 1, ngram >= 2, candidates >= 0, nodes >= 1")
        self.width, self.n, self.n_candidates = window, ngram, candidates
        self.nodes = nodes if nodes is not None else window + candidates * (ngram - 1)
        self.pool = NgramPool(per_key=max(candidates, 1), max_keys=max_keys)
        self.from_context = from_context
        self._read = 0  # committed tokens of this request whose n-grams are pooled
        self._rng = np.random.default_rng(seed)
        self._window: list[int] = []  # the guesses for the tokens after the root, per request
        self._verifying: list[int] = []  # the window part of the pending draft
        self._root = 0
        self._context: np.ndarray | None = None

    def reset(self) -> None:
        self._window, self._verifying, self._context = [], [], None
        self._read = 0

    def _pad(self, count: int) -> list[int]:
        """Tokens drawn at random from the context (the paper starts its window from prompt tokens)."""
        context = self._context
        if count <= 0 or context is None or len(context) == 0:
            return []
        return [int(t) for t in context[self._rng.integers(0, len(context), count)]]

    def propose(self, context: DraftContext) -> Draft:
        self._context = context.tokens
        self._root = int(context.tokens[-1])
        if self.from_context:
            self._pool_context(context.tokens)
        nodes = self.nodes if context.nodes is None else min(self.nodes, context.nodes)
        width = min(self.width, context.budget, nodes)
        self._verifying = []
        if width <= 0:
            return Draft()
        if len(self._window) < width:
            self._window = self._window + self._pad(width - len(self._window))
        self._verifying = self._window[:width]
        trie = TokenTrie(budget=nodes)
        trie.insert(self._verifying)  # nodes 1..width
        for tail in self.pool.candidates(self._root)[: self.n_candidates]:
            trie.insert(tail[: context.budget])
        return Draft(tokens=tuple(trie.tokens), parents=tuple(trie.parents))

    def _pool_context(self, tokens: np.ndarray) -> None:
        """Pool the n-grams of the committed tokens not pooled yet (those ending after ``self._read``)."""
        if len(tokens) < self._read:
            self._read = 0
        start = max(0, self._read - self.n + 1)
        if len(tokens) - start >= self.n:
            windows = np.lib.stride_tricks.sliding_window_view(tokens[start:], self.n)  # [k, n]
            self.pool.add([tuple(w) for w in windows.tolist()])
        self._read = len(tokens)

    def observe(self, outcome: StepOutcome) -> None:
        window, self._verifying = self._verifying, []
        width = len(window)
        draft = outcome.draft
        parents = draft.parents if draft.parents is not None else tuple(range(len(draft)))
        if width == 0 or tuple(draft.tokens[:width]) != tuple(window) or tuple(parents[:width]) != tuple(range(width)):
            self._window = []  # the window was not verified as proposed; start afresh
            return
        best = outcome.argmax[: width + 1]  # root, window nodes
        self.pool.add(collect_ngrams(self._root, window, best[1:], self.n))
        # best[j]: the guess for the token j + 1 places after the root (one Jacobi iteration)
        self._window = next_window(best, len(outcome.tokens), self.width, self._pad(self.width))


@register("lookahead", order=5,
          source={"learns": True, "needs": "sources"},  # opt-in: its window advances only when verified
          description="lookahead decoding: a Jacobi window refined in the verify pass feeds an n-gram pool")
def build(ctx: BuildContext) -> Drafter:
    return LookaheadDrafter(**ctx.pick("window", "ngram", "candidates", "nodes", "from_context", "max_keys", "seed"))


__all__ = ["LookaheadDrafter", "NgramPool", "collect_ngrams", "next_window"]
