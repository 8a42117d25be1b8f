"""Retrieval datastores: suffix arrays against brute force, corpora, tokenizer checks, the REST tree."""

import json

import numpy as np
import pytest

from quickdraft import QuickdraftError
from quickdraft.datastore import (
    SEP, Datastore, SuffixIndex, build_datastore, build_suffix_array, read_documents, tokenizer_fingerprint,
)
from quickdraft.drafters import DraftContext
from quickdraft.drafters.rest import RestDrafter, retrieval_tree
from quickdraft.tree import path_to
from tests.conftest import make_tiny_tokenizer


def brute_suffix_array(tokens):
    unsigned = [int(t) & 0xFFFFFFFF for t in tokens]
    return sorted(range(len(tokens)), key=lambda i: unsigned[i:])


def brute_occurrences(tokens, pattern):
    n = len(pattern)
    return sorted(i for i in range(len(tokens) - n + 1) if list(tokens[i:i + n]) == list(pattern))


def random_tokens(rng, size, alphabet=3, seps=True):
    tokens = rng.integers(0, alphabet, size).astype(np.int32)
    if seps:
        tokens[rng.random(size) < 0.1] = SEP
    return tokens


def test_suffix_array_small_example():
    # suffixes of 2 1 2 1: "1" < "1 2 1" < "2 1" < "2 1 2 1"
    assert build_suffix_array(np.array([2, 1, 2, 1], dtype=np.int32)).tolist() == [3, 1, 2, 0]
    assert build_suffix_array(np.array([], dtype=np.int32)).tolist() == []
    assert build_suffix_array(np.array([7], dtype=np.int32)).tolist() == [0]


@pytest.mark.parametrize("seed", range(6))
def test_suffix_array_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    tokens = random_tokens(rng, int(rng.integers(1, 80)), alphabet=int(rng.integers(1, 5)))
    assert build_suffix_array(tokens).tolist() == brute_suffix_array(tokens)


def test_suffix_array_of_a_long_repeat_and_the_separator_sorting_last():
    tokens = np.array([5] * 33 + [SEP, 0], dtype=np.int32)
    assert build_suffix_array(tokens).tolist() == brute_suffix_array(tokens)
    assert build_suffix_array(tokens)[-1] == 33  # SEP sorts after every token


@pytest.mark.parametrize("seed", range(4))
def test_occurrences_and_longest_match_equal_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    tokens = random_tokens(rng, 120, alphabet=3)
    index = SuffixIndex(tokens, build_suffix_array(tokens))
    for n in (1, 2, 3, 4):
        for _ in range(10):
            pattern = rng.integers(0, 3, n).tolist()
            assert sorted(index.occurrences(pattern).tolist()) == brute_occurrences(tokens, pattern)
    for _ in range(20):
        context = rng.integers(0, 3, 12).tolist()
        n, lo, hi = index.longest_match(context, max_len=8)
        expected = max((k for k in range(1, 9) if brute_occurrences(tokens, context[-k:])), default=0)
        assert n == expected
        if n:
            assert sorted(index.suffix_array[lo:hi].tolist()) == brute_occurrences(tokens, context[-n:])


def test_no_match_and_patterns_that_cannot_occur():
    tokens = np.array([1, 2, SEP, 3], dtype=np.int32)
    index = SuffixIndex(tokens, build_suffix_array(tokens))
    assert index.longest_match([7, 8], max_len=4) == (0, 0, 0)
    assert index.occurrences([2, 3]).tolist() == []  # never across the separator
    assert index.occurrences([SEP]).tolist() == []
    assert index.longest_match([1, 2], max_len=4, min_len=3) == (0, 0, 0)


def test_continuations_stop_at_separators_and_the_end():
    tokens = np.array([1, 2, 3, SEP, 1, 2, 4, 5, 6, SEP, 1, 2], dtype=np.int32)
    index = SuffixIndex(tokens, build_suffix_array(tokens))
    n, lo, hi = index.longest_match([1, 2], max_len=2)
    rows = index.continuations(lo, hi, n, depth=3, limit=10)
    assert sorted(map(tuple, rows.tolist())) == [(SEP, SEP, SEP), (3, SEP, SEP), (4, 5, 6)]
    assert len(index.continuations(lo, hi, n, depth=3, limit=2)) == 2


def test_retrieval_tree_orders_prefixes_by_frequency():
    rows = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 4], [1, 5, SEP], [6, SEP, SEP]])
    tokens, parents = retrieval_tree(rows, nodes=10)
    seqs = [tuple(tokens[n - 1] for n in path_to(parents, node)) for node in range(1, len(tokens) + 1)]
    # counts: 1 x4, 1-2 x3, 1-2-3 x2, then count 1: 6 (depth 1), 1-5 (depth 2), 1-2-4 (depth 3)
    assert seqs == [(1,), (1, 2), (1, 2, 3), (6,), (1, 5), (1, 2, 4)]
    assert retrieval_tree(rows, nodes=3)[0] == tokens[:3]
    assert retrieval_tree(np.empty((0, 3), dtype=np.int64), nodes=5) == ([], [])
    assert retrieval_tree(np.full((2, 3), SEP), nodes=5) == ([], [])


# ---------------------------------------------------------------- corpora and datastores


def test_read_documents_from_text_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("plain text file")
    lines = [{"text": "one"}, {"turns": ["two", "three"]}, {"messages": [{"role": "user", "content": "four"}]},
             {"id": 5}, "six"]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert list(read_documents(tmp_path / "a.txt")) == ["plain text file"]
    assert list(read_documents(tmp_path / "b.jsonl")) == ["one", "two", "three", "four", "six"]


def test_read_documents_bad_input(tmp_path):
    with pytest.raises(QuickdraftError, match="does not exist"):
        list(read_documents(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(QuickdraftError, match="bad.jsonl:2: not valid JSON"):
        list(read_documents(bad))
    (tmp_path / "empty.txt").write_text("  \n")
    assert list(read_documents(tmp_path / "empty.txt")) == []


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer()


def test_build_open_and_search_a_datastore(tmp_path, tokenizer):
    meta = build_datastore(["abcd abce", "abcf"], tokenizer, tmp_path / "ds", model_name="tiny")
    assert meta["documents"] == 2 and meta["tokens"] == 9 + 1 + 4 + 1 and meta["model"] == "tiny"
    assert not list(tmp_path.glob(".ds.tmp-*"))
    ds = Datastore.open(tmp_path / "ds", tokenizer=tokenizer, model_name="tiny")
    ids = tokenizer.encode("abc", add_special_tokens=False)
    assert len(ds.index.occurrences(ids)) == 3
    build_datastore(["xyz"], tokenizer, tmp_path / "ds", model_name="tiny")  # rebuilding replaces it
    assert Datastore.open(tmp_path / "ds").meta["tokens"] == 4


def test_datastore_refuses_another_tokenizer(tmp_path, tokenizer):
    build_datastore(["some text"], tokenizer, tmp_path / "ds", model_name="tiny")
    other = make_tiny_tokenizer()
    other.add_tokens(["<extra>"])
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tokenizer)
    with pytest.raises(QuickdraftError, match="built with the tokenizer of model 'tiny'.*rebuild it with --model"):
        Datastore.open(tmp_path / "ds", tokenizer=other, model_name="other-model")


def test_datastore_bad_input(tmp_path, tokenizer):
    with pytest.raises(QuickdraftError, match="no text to index"):
        build_datastore(["", ""], tokenizer, tmp_path / "ds", model_name="tiny")
    with pytest.raises(QuickdraftError, match="not a quickdraft datastore"):
        Datastore.open(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(QuickdraftError, match="exists and is not a folder"):
        build_datastore(["text"], tokenizer, tmp_path / "file", model_name="tiny")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(QuickdraftError, match="exists and is not a quickdraft datastore"):
        build_datastore(["text"], tokenizer, tmp_path / "full", model_name="tiny")
    build_datastore(["text"], tokenizer, tmp_path / "ds", model_name="tiny")
    (tmp_path / "ds" / "meta.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(QuickdraftError, match="format"):
        Datastore.open(tmp_path / "ds")


def test_rest_drafter_proposes_what_followed_the_longest_match(tmp_path, tokenizer):
    build_datastore(["the cat sat on the mat", "the cat ran"], tokenizer, tmp_path / "ds", model_name="tiny")
    drafter = RestDrafter(Datastore.open(tmp_path / "ds"), nodes=7, depth=4)
    context = np.array(tokenizer.encode("I saw the cat", add_special_tokens=False), dtype=np.int64)
    draft = drafter.propose(DraftContext(tokens=context, prompt_len=len(context), budget=8))
    seqs = {tokenizer.decode([draft.tokens[n - 1] for n in path_to(draft.parents, node)])
            for node in range(1, len(draft) + 1)}
    assert " sat" in seqs and " ran" in seqs  # both continuations of "the cat", sharing the space
    assert len(draft) == 7  # " " (x2), then " r", " s", " ra", " sa", " ran", " sat" by depth
    short = drafter.propose(DraftContext(tokens=context, prompt_len=len(context), budget=1))
    assert set(short.parents) == {0}
    none = np.array(tokenizer.encode("QQQ", add_special_tokens=False), dtype=np.int64)
    assert len(drafter.propose(DraftContext(tokens=none, prompt_len=3, budget=8))) == 0


def test_the_embedded_models_datastore_ships_and_opens():
    """Its own answers to selfinstruct (quickdraft index build --answers selfinstruct): rest's default there."""
    from quickdraft.datastore import shipped_datastore

    path = shipped_datastore("smollm2-135m-instruct")
    assert path is not None and shipped_datastore("tiny-model0") is None
    store = Datastore.open(path)
    assert store.meta["model"] == "smollm2-135m-instruct" and store.meta["documents"] > 1000
    assert "selfinstruct" in store.meta["sources"][0] and len(store.index) == store.meta["tokens"]


def test_a_shipped_prior_that_does_not_fit_the_tokenizer_is_left_out(tokenizer, caplog):
    """The default prior must never break decoding: a shipped datastore for another tokenizer means none."""
    from types import SimpleNamespace

    from quickdraft.datastore import prior_datastore

    impostor = SimpleNamespace(name="smollm2-135m-instruct", tokenizer=tokenizer)  # the tiny tokenizer
    assert prior_datastore(impostor, None) is None and prior_datastore(impostor, "shipped") is None
    assert "does not fit" in caplog.text
    assert prior_datastore(impostor, "none") is None
    with pytest.raises(QuickdraftError, match="was built with the tokenizer"):
        prior_datastore(impostor, str(shipped_datastore_path()))  # named explicitly: the user's error


def shipped_datastore_path():
    from quickdraft.datastore import shipped_datastore

    return shipped_datastore("smollm2-135m-instruct")


def test_a_users_folder_with_a_meta_json_is_never_replaced(tmp_path, tokenizer):
    """A folder holding a meta.json of the user's own (and other files) survives, with a clear error."""
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "meta.json").write_text('{"name": "my project"}')
    (mine / "notes.txt").write_text("important")
    with pytest.raises(QuickdraftError, match="not a quickdraft datastore"):
        build_datastore(["text"], tokenizer, mine, model_name="tiny")
    assert sorted(p.name for p in mine.iterdir()) == ["meta.json", "notes.txt"]
    # a datastore of ours with a user's file put into it is not replaced either
    build_datastore(["text"], tokenizer, tmp_path / "ds", model_name="tiny")
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    with pytest.raises(QuickdraftError, match="other files"):
        build_datastore(["more text"], tokenizer, tmp_path / "ds", model_name="tiny")
    assert (tmp_path / "ds" / "notes.txt").read_text() == "mine"


def test_rebuilding_a_datastore_swaps_it_in_and_leaves_no_temporary_folders(tmp_path, tokenizer):
    first = build_datastore(["one text"], tokenizer, tmp_path / "ds", model_name="tiny")
    second = build_datastore(["another, longer text than the first"], tokenizer, tmp_path / "ds", model_name="tiny")
    assert second["tokens"] > first["tokens"]
    assert Datastore.open(tmp_path / "ds").meta["tokens"] == second["tokens"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
