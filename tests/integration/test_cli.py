"""The CLI: exit codes and exact output, against the tiny model directory."""

import json

import pytest
from click.testing import CliRunner

from quickdraft.cli import main


@pytest.fixture
def cli():
    return CliRunner()


def test_methods_lists_name_losslessness_and_description(cli):
    out = cli.invoke(main, ["methods"])
    assert out.exit_code == 0
    lines = out.output.strip().splitlines()
    assert lines[0].split()[:3] == ["method", "transformers", "llamacpp"]  # the backends a method runs on
    assert lines[1].split()[:4] == ["ar", "lossless", "yes", "yes"]
    assert any(line.split()[:4] == ["eagle", "lossless", "yes", "-"] for line in lines)


def test_generate_json_has_the_documented_fields(cli, tiny_dir):
    out = cli.invoke(main, ["generate", "abc abc", "--model", str(tiny_dir), "--method", "pld", "--no-chat",
                            "--max-new-tokens", "16", "--json", "--dtype", "float32"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert {"text", "token_ids", "method", "model", "stats"} <= set(data)
    assert {"prompt_tokens", "new_tokens", "steps", "mean_accepted", "tokens_per_s", "wall_s"} <= set(data["stats"])
    assert data["method"] == "pld" and len(data["token_ids"]) == data["stats"]["new_tokens"] <= 16


def test_generate_streams_text_and_stats(cli, tiny_dir, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("hello hello")
    out = cli.invoke(main, ["generate", "--prompt-file", str(prompt), "--model", str(tiny_dir), "--no-chat",
                            "--max-new-tokens", "8", "--stats", "--dtype", "float32", "--method", "ar"])
    assert out.exit_code == 0, out.output
    assert "mean accepted 1.00" in out.stderr


def test_generate_defaults_to_auto(cli, tiny_dir):
    out = cli.invoke(main, ["generate", "abc abc abc", "--model", str(tiny_dir), "--no-chat", "--max-new-tokens", "8",
                            "--dtype", "float32", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["method"] == "auto"


def test_prompt_from_stdin(cli, tiny_dir):
    out = cli.invoke(main, ["generate", "--prompt-file", "-", "--model", str(tiny_dir), "--max-new-tokens", "4",
                            "--json"], input="hi there")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["stats"]["new_tokens"] <= 4


@pytest.mark.parametrize("args, message", [
    (["generate", "hi", "--method", "bogus"], "unknown method 'bogus'"),
    (["generate", "  "], "prompt is empty"),
    (["generate"], "no prompt"),
    (["generate", "hi", "--max-new-tokens", "0"], "max_new_tokens must be a positive integer"),
    (["generate", "hi", "--temperature", "-1"], "temperature"),
    (["generate", "x" * 300], "context holds 256"),
    (["generate", "--prompt-file", "/nonexistent/p.txt"], "cannot read prompt file"),
    (["generate", "hi", "--prompt-file", "/nonexistent/p.txt"], "not both"),
    (["generate", "hi", "--method", "pld", "--option", "kk=4"], "method 'pld' has no option 'kk'; its options: k,"),
    (["generate", "hi", "--method", "ngram", "--option", "ngram.node=4"], "method 'ngram' has no option 'node'"),
    (["generate", "hi", "--method", "ngram", "--option", "pld.k=4"], "--option pld.KEY is for method 'pld', not 'ngram'"),
])
def test_bad_input_is_one_line_and_exit_code_2(cli, tiny_dir, args, message):
    out = cli.invoke(main, [*args, "--model", str(tiny_dir)] if args[0] == "generate" else args)
    assert out.exit_code == 2, out.output
    assert message in out.stderr
    assert "Traceback" not in out.output and len(out.stderr.strip().splitlines()) == 1


def test_missing_and_corrupt_model_files(cli, tmp_path):
    out = cli.invoke(main, ["generate", "hi", "--model", str(tmp_path / "missing.gguf")])
    assert out.exit_code == 2 and "does not exist" in out.stderr
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all")
    out = cli.invoke(main, ["generate", "hi", "--model", str(bad)])
    assert out.exit_code == 2 and "not a GGUF file" in out.stderr
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    out = cli.invoke(main, ["generate", "hi", "--model", str(empty_dir)])
    assert out.exit_code == 2 and "no config.json" in out.stderr


def test_truncated_gguf_is_a_clear_error(cli, tmp_path):
    bad = tmp_path / "trunc.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 20)
    out = cli.invoke(main, ["generate", "hi", "--model", str(bad)], env={"QUICKDRAFT_CACHE": str(tmp_path / "c")})
    assert out.exit_code == 2 and "could not" in out.stderr and "trunc.gguf" in out.stderr  # either backend
    assert out.stderr.count("\n") == 1
