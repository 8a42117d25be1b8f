"""`quickdraft index build` and `generate --method rest --datastore`, against the tiny model directory."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from quickdraft.cli import main
from tests.conftest import make_tiny_tokenizer


@pytest.fixture
def cli():
    return CliRunner()


@pytest.fixture
def corpus(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("abc abc abc and the quick brown fox jumps over the lazy dog")
    jsonl = tmp_path / "bench.jsonl"
    jsonl.write_text(json.dumps({"turns": ["abc abc, then abd", "second turn"]}) + "\n"
                     + json.dumps({"text": "abc abc abc abc"}) + "\n")
    return [str(text), str(jsonl)]


def test_index_build_then_generate_with_rest(cli, tiny_dir, corpus, tmp_path):
    out = cli.invoke(main, ["index", "build", *corpus, "--out", str(tmp_path / "ds"), "--model", str(tiny_dir)])
    assert out.exit_code == 0, out.output
    assert "in 4 documents from 2 file(s)" in out.output and str(tmp_path / "ds") in out.output
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert meta["model"] == tiny_dir.name and meta["documents"] == 4
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["meta.json", "suffix_array.npy", "tokens.npy"]
    args = ["generate", "abc abc", "--model", str(tiny_dir), "--method", "rest", "--datastore", str(tmp_path / "ds"),
            "--no-chat", "--max-new-tokens", "12", "--json", "--dtype", "float32"]
    got = cli.invoke(main, args)
    assert got.exit_code == 0, got.output
    plain = cli.invoke(main, args[:5] + ["ar"] + args[8:])
    assert json.loads(got.stdout)["token_ids"] == json.loads(plain.stdout)["token_ids"]


@pytest.fixture
def other_model(tiny_dir, tmp_path):
    """A model directory whose tokenizer has one token more than the tiny model's."""
    path = tmp_path / "other-model"
    path.mkdir()
    shutil.copy(tiny_dir / "config.json", path / "config.json")
    tok = make_tiny_tokenizer()
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(path)
    return path


def test_bad_index_and_datastore_input_is_one_line_and_exit_code_2(cli, tiny_dir, corpus, tmp_path, other_model):
    def fails(args, message):
        out = cli.invoke(main, args)
        assert out.exit_code == 2, out.output
        assert message in out.stderr and out.stderr.count("\n") == 1 and "Traceback" not in out.output

    model = ["--model", str(tiny_dir)]
    fails(["index", "build", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "ds"), *model], "does not exist")
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "empty.jsonl").write_text(json.dumps({"id": 1}) + "\n")
    fails(["index", "build", str(tmp_path / "empty.txt"), str(tmp_path / "empty.jsonl"), "--out",
           str(tmp_path / "ds"), *model], "no text to index")
    (tmp_path / "broken.jsonl").write_text("{oops\n")
    fails(["index", "build", str(tmp_path / "broken.jsonl"), "--out", str(tmp_path / "ds"), *model],
          "broken.jsonl:1: not valid JSON")
    generate = ["generate", "hi", *model, "--no-chat", "--max-new-tokens", "4", "--dtype", "float32"]
    fails([*generate, "--method", "rest"], "method 'rest' needs a datastore")
    fails([*generate, "--method", "rest", "--datastore", str(tmp_path)], "is not a quickdraft datastore")
    out = cli.invoke(main, ["index", "build", *corpus, "--out", str(tmp_path / "other-ds"), "--model",
                            str(other_model)])
    assert out.exit_code == 0, out.output
    fails([*generate, "--method", "rest", "--datastore", str(tmp_path / "other-ds")],
          "was built with the tokenizer of model 'other-model'")
    out = cli.invoke(main, ["index", "build", "--out", str(tmp_path / "ds")])
    assert out.exit_code == 2 and "give CORPUS files, --answers DATA, or both" in out.output


def test_index_build_answers_indexes_the_models_own_answers(cli, tiny_dir, tmp_path, monkeypatch):
    """--answers: the model's greedy answers (prompts left out, EOS kept) to a prompt file, plus a corpus."""
    from quickdraft import load
    from quickdraft.datastore import SEP, Datastore

    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path / "cache"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("abc abc\nthe quick brown fox\n")
    (tmp_path / "extra.txt").write_text("a corpus document")
    out = cli.invoke(main, ["index", "build", str(tmp_path / "extra.txt"), "--answers", str(prompts), "--out",
                            str(tmp_path / "ds"), "--model", str(tiny_dir), "--answer-tokens", "6",
                            "--dtype", "float32"])
    assert out.exit_code == 0, out.output
    assert "answers of" in out.output and "extra.txt" in out.output
    store = Datastore.open(tmp_path / "ds")
    docs = np.split(store.index.tokens, np.flatnonzero(store.index.tokens == SEP) + 1)[:-1]
    assert len(docs) == 3  # two answers, then the corpus document
    cached = list((tmp_path / "cache" / "train").glob("selfdistill-*.json"))  # shared with quickdraft train
    assert len(cached) == 1
    data = json.loads(cached[0].read_text())
    answers = [s["ids"][s["prompt_len"]:] for s in data["train"] + data["held_out"]]
    assert [doc[:-1].tolist() for doc in docs[:2]] == answers and all(len(a) > 0 for a in answers)
    engine = load(str(tiny_dir), dtype="float32")
    assert docs[2][:-1].tolist() == engine.tokenizer.encode("a corpus document", add_special_tokens=False)
