"""Turning generated token ids into streamed text, with stop strings."""

from __future__ import annotations

from typing import Sequence


MAX_STOP_CHARS = 256  # longest stop string accepted (the engine and the server refuse longer ones)


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
        self._matchers = [StopMatcher(stop) for stop in self.stops]
        self.ids: list[int] = []
        self.text = ""  # the final text so far (cut at a stop string once one is seen)
        self._emitted = 0  # characters of text already handed out
        self._scanned = 0  # characters of text the stop matchers have read
        self._stopped = False

    def add(self, ids: Sequence[int]) -> tuple[str, bool]:
        """Add token ids; return (new text that is safe to show, whether a stop string was hit).

        Each step reads only the new characters for stop strings (a matcher per stop keeps how much
        of its stop the text ends with), so stops cost O(new characters x stops), whatever the
        answer's length."""
        if self._stopped:
            return "", True
        self.ids.extend(int(i) for i in ids)
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        settled = len(full.rstrip("\ufffd")) if full.endswith("\ufffd") else len(full)  # incomplete UTF-8 may change
        if full[: self._scanned] != self.text[: self._scanned]:  # earlier text changed (rare): read it all again
            self._scanned = 0
            self._matchers = [StopMatcher(stop) for stop in self.stops]
        hits = [h for h in (m.feed(full, self._scanned, settled) for m in self._matchers) if h is not None]
        self._scanned = settled
        if hits:
            self.text = full[: min(hits)]
            self._stopped = True
            return self._take(len(self.text)), True
        self.text = full
        held = max((m.matched for m in self._matchers), default=0)  # could be the start of a stop string
        return self._take(max(settled - held, self._emitted)), False

    def flush(self) -> str:
        """Everything not yet handed out (at the end of generation)."""
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        piece = self.text[self._emitted: end]
        self._emitted = max(self._emitted, end)
        return piece


class StopMatcher:
    """Knuth-Morris-Pratt over a growing text: how much of ``stop`` the text read so far ends with.

    >>> m = StopMatcher("abab")
    >>> m.feed("xaba", 0, 4), m.matched      # no match yet; the text ends with "aba"
    (None, 3)
    >>> m.feed("xabab!", 4, 6)               # the match starts at character 1
    1
    """

    def __init__(self, stop: str) -> None:
        assert stop, "a stop string is not empty"
        self.stop = stop
        self.matched = 0
        self._fail = [0] * len(stop)  # the longest proper border of stop[:i + 1]
        k = 0
        for i in range(1, len(stop)):
            while k and stop[i] != stop[k]:
                k = self._fail[k - 1]
            if stop[i] == stop[k]:
                k += 1
            self._fail[i] = k

    def feed(self, text: str, start: int, end: int) -> int | None:
        """Read ``text[start:end]``; return where the first whole match starts, or None."""
        stop, fail, k = self.stop, self._fail, self.matched
        for i in range(start, end):
            char = text[i]
            while k and char != stop[k]:
                k = fail[k - 1]
            if char == stop[k]:
                k += 1
            if k == len(stop):
                self.matched = k
                return i - k + 1
        self.matched = k
        return None
