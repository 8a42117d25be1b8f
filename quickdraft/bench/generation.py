"""One answer of a bench backend (one of our methods or a peer) and how it was produced."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Generation:
    """One answer and how it was produced. Fields a backend cannot know are None."""

    token_ids: list[int]  # new tokens, EOS included when it ended the answer
    wall_s: float
    steps: int | None = None  # target forward passes that produced tokens
    draft_s: float | None = None
    verify_s: float | None = None
    accepted_hist: dict[str, int] | None = None  # accepted draft tokens per step -> count
    finish_reason: str = "length"
    sources: dict[str, dict[str, int]] | None = None  # where drafts came from (auto), see Drafter.explain
