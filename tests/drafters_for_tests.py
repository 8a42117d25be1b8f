"""Drafters with known behaviour, for the lossless suite."""

from __future__ import annotations

import numpy as np

from quickdraft.drafters import Draft, DraftContext, Drafter


class OracleDrafter(Drafter):
    """Proposes the reference output's next tokens: everything is accepted."""

    def __init__(self, prompt_len: int, reference: list[int], k: int = 5) -> None:
        self.prompt_len, self.reference, self.k = prompt_len, reference, k

    def propose(self, context: DraftContext) -> Draft:
        done = len(context.tokens) - self.prompt_len
        return Draft(tokens=tuple(self.reference[done: done + min(self.k, context.budget)]))


class RandomDrafter(Drafter):
    """Proposes random tokens: (almost) nothing is accepted."""

    def __init__(self, vocab_size: int, k: int = 5, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.vocab_size, self.k = vocab_size, k

    def propose(self, context: DraftContext) -> Draft:
        n = min(self.k, context.budget)
        return Draft(tokens=tuple(int(t) for t in self.rng.integers(0, self.vocab_size, n)))


class OracleTreeDrafter(Drafter):
    """A tree whose correct path is never the first child: decoys at every level.

    Shape per level: a random decoy sibling first, then the true token, whose
    children are again (decoy, true). So the accepted path's nodes are not a
    prefix of the node order, which exercises KV-cache compaction.
    """

    def __init__(self, prompt_len: int, reference: list[int], vocab_size: int, depth: int = 4, seed: int = 0):
        self.prompt_len, self.reference, self.depth = prompt_len, reference, depth
        self.rng = np.random.default_rng(seed)
        self.vocab_size = vocab_size

    def propose(self, context: DraftContext) -> Draft:
        done = len(context.tokens) - self.prompt_len
        truth = self.reference[done: done + min(self.depth, context.budget)]
        tokens, parents, parent = [], [], 0
        for token in truth:
            decoy = int(self.rng.integers(0, self.vocab_size))
            if decoy == token:
                decoy = (decoy + 1) % self.vocab_size
            tokens += [decoy, token]
            parents += [parent, parent]
            parent = len(tokens)  # the true token's node index
        return Draft(tokens=tuple(tokens), parents=tuple(parents))
