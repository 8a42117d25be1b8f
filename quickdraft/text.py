"""Turning generated token ids into streamed text, with stop strings."""

from __future__ import annotations

from typing import Sequence


class IncrementalText:
    """Detokenize as tokens arrive; hold back what might still change.

    Held back: a trailing incomplete UTF-8 sequence (decoded as U+FFFD) and a
    tail that could be the start of a stop string. When a stop string appears,
    the text is cut just before it and ``add`` reports that generation should stop.

    >>> class Tok:  # a toy tokenizer: ids are characters
    ...     def decode(self, ids, skip_special_tokens=True): return "".join(map(chr, ids))
    >>> t = IncrementalText(Tok(), stops=("END",))
    >>> t.add([ord(c) for c in "abcE"])
    ('abc', False)
    >>> t.add([ord(c) for c in "NDxyz"])
    ('', True)
    >>> t.text
    'abc'
    """

    def __init__(self, tokenizer, *, stops: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(stops)
        self.ids: list[int] = []
        self.text = ""  # the final text so far (cut at a stop string once one is seen)
        self._emitted = 0  # characters of text already handed out
        self._stopped = False

    def add(self, ids: Sequence[int]) -> tuple[str, bool]:
        """Add token ids; return (new text that is safe to show, whether a stop string was hit)."""
        if self._stopped:
            return "", True
        self.ids.extend(int(i) for i in ids)
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        hits = [full.find(s) for s in self.stops]
        hits = [h for h in hits if h >= 0]
        if hits:
            self.text = full[: min(hits)]
            self._stopped = True
            return self._take(len(self.text)), True
        self.text = full
        safe = len(full)
        if full.endswith("\ufffd"):
            safe = len(full.rstrip("\ufffd"))
        for stop in self.stops:
            for n in range(min(len(stop) - 1, safe), 0, -1):
                if full[:safe].endswith(stop[:n]):
                    safe -= n
                    break
        return self._take(max(safe, self._emitted)), False

    def flush(self) -> str:
        """Everything not yet handed out (at the end of generation)."""
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        piece = self.text[self._emitted: end]
        self._emitted = max(self._emitted, end)
        return piece
