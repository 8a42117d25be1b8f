from quickdraft.text import IncrementalText


class CharTok:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(map(chr, ids))


def feed(text, pieces, stops=()):
    t = IncrementalText(CharTok(), stops=stops)
    out, stopped = [], False
    for p in pieces:
        piece, stopped = t.add([ord(c) for c in p])
        out.append(piece)
        if stopped:
            break
    out.append(t.flush())
    return "".join(out), stopped, t.text


def test_streamed_pieces_add_up_to_the_text():
    assert feed("", ["ab", "cd", "e"]) == ("abcde", False, "abcde")


def test_stop_string_across_pieces_is_cut_and_never_shown():
    assert feed("", ["hello wo", "rld!!"], stops=("world",)) == ("hello ", True, "hello ")


def test_held_back_prefix_is_released_when_it_is_not_a_stop():
    assert feed("", ["ab<", "x"], stops=("<END>",)) == ("ab<x", False, "ab<x")


def test_incomplete_utf8_is_held_back():
    class ByteTok:
        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

    t = IncrementalText(ByteTok())
    euro = "€".encode()
    assert t.add([ord("a"), euro[0]]) == ("a", False)
    assert t.add(list(euro[1:])) == ("€", False)


def test_stop_strings_are_read_once_per_character_whatever_the_answer_length(monkeypatch):
    """16 stop strings of the longest allowed length over a long answer: each character is read once per
    stop (before, every step re-scanned the answer and sliced it once per stop character)."""
    from quickdraft import text as text_module

    read = []
    original = text_module.StopMatcher.feed
    monkeypatch.setattr(text_module.StopMatcher, "feed",
                        lambda self, s, start, end: read.append(end - start) or original(self, s, start, end))
    stops = tuple(("a" * (text_module.MAX_STOP_CHARS - 1) + chr(66 + i)) for i in range(16))  # never complete
    t = IncrementalText(CharTok(), stops=stops)
    shown = "".join(t.add([ord("a")] * 3)[0] for _ in range(2000))
    assert sum(read) == 16 * 6000
    assert shown == "a" * (6000 - text_module.MAX_STOP_CHARS + 1)  # held back: could still become a stop
    assert t.flush() == "a" * (text_module.MAX_STOP_CHARS - 1)


def test_the_earliest_stop_wins_and_matches_may_start_in_earlier_pieces():
    assert feed("", ["xxab", "cd", "zz"], stops=("cdz", "abcd")) == ("xx", True, "xx")
    assert feed("", ["aab", "ab"], stops=("abab",)) == ("a", True, "a")
