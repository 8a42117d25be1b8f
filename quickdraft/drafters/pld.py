"""Prompt lookup decoding (Saxena 2023): copy what followed the last n-gram before."""

from __future__ import annotations

import numpy as np

from .base import Draft, DraftContext, Drafter
from .registry import BuildContext, register


def find_continuation(tokens: np.ndarray, *, min_n: int, max_n: int, k: int) -> np.ndarray:
    """The tokens that followed an earlier occurrence of the context's suffix.

    Tries suffix lengths n from ``max_n`` down to ``min_n``; for the first n with
    a match, the *most recent* earlier occurrence wins (recent text predicts
    best, and a model repeating itself is caught at once). Returns up to ``k``
    following tokens, an empty array when nothing matches.

    tokens: [T] int token ids.

    >>> find_continuation(np.array([1, 2, 3, 4, 1, 2]), min_n=1, max_n=2, k=3)
    array([3, 4, 1])
    >>> find_continuation(np.array([5, 9, 5, 7, 5]), min_n=1, max_n=2, k=2)  # latest match: 5 -> 7
    array([7, 5])
    >>> find_continuation(np.array([1, 2, 3]), min_n=1, max_n=2, k=3)
    array([], dtype=int64)
    """
    total = len(tokens)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        if n <= 0:
            break
        suffix = tokens[total - n:]
        # windows[i] = tokens[i : i + n] for every start i whose window ends
        # before the suffix itself starts repeating it (i + n < total).
        windows = np.lib.stride_tricks.sliding_window_view(tokens[: total - 1], n)
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            return np.asarray(tokens[start: start + k], dtype=np.int64)
    return np.empty(0, dtype=np.int64)


class PromptLookup(Drafter):
    """Chain drafts copied from the context (prompt and generated text).

    Defaults (max_n=3, min_n=1, k=10) measured with ``quickdraft bench`` on the
    embedded model; see the README.
    """

    def __init__(self, *, min_n: int = 1, max_n: int = 3, k: int = 10) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        self.min_n, self.max_n, self.k = min_n, max_n, k

    def propose(self, context: DraftContext) -> Draft:
        k = min(self.k, context.budget)
        found = find_continuation(context.tokens, min_n=self.min_n, max_n=self.max_n, k=k)
        return Draft(tokens=tuple(int(t) for t in found))


@register("pld", order=1, description="prompt lookup: copy what followed the last matching n-gram of the context")
def build(ctx: BuildContext) -> Drafter:
    return PromptLookup(**ctx.pick("min_n", "max_n", "k"))
