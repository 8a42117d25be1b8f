"""What the benchmark's runner and its report share: the baseline's name, the peers' settings, the run's
settings, and two small helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import QuickdraftError

BASELINE = "ar"
HF_PLD_TOKENS = 10  # the same draft length and n-gram size as our `pld`, so the two compare like for like
HF_PLD_NGRAM = 3


@dataclass(frozen=True)
class BenchSettings:
    """What every generation of a run shares."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    repeats: int = 1

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise QuickdraftError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        t = self.temperature
        if not isinstance(t, (int, float)) or not 0 <= t <= 100:
            raise QuickdraftError(f"--temperature must be a number in [0, 100] (0 = greedy), got {t!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def merge_sources(parts) -> dict[str, dict[str, int]] | None:
    """Sum per-source counters (``Stats.sources``) over turns or records; None when none has any.

    >>> merge_sources([{"pld": {"chosen": 2, "accepted": 5}}, None, {"pld": {"chosen": 1, "accepted": 0}}])
    {'pld': {'chosen': 3, 'accepted': 5}}
    """
    out: dict[str, dict[str, int]] = {}
    for part in parts:
        for name, row in (part or {}).items():
            mine = out.setdefault(name, {})
            for key, value in row.items():
                mine[key] = mine.get(key, 0) + value
    return out or None


def write_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing (a reader never sees half of it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


__all__ = ["BASELINE", "HF_PLD_NGRAM", "HF_PLD_TOKENS", "BenchSettings", "merge_sources", "write_atomic"]
