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
