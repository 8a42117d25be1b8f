"""``quickdraft train`` and ``generate --adapter`` through the CLI, on the tiny model."""

import json

from click.testing import CliRunner

from quickdraft.cli import main


def test_train_then_generate_with_the_adapter(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path / "cache"))  # the generated training data goes here
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"question {i}" for i in range(10)))
    out = tmp_path / "heads.safetensors"
    cli = CliRunner()
    result = cli.invoke(main, ["train", "--kind", "heads", "--model", str(tiny_dir), "--out", str(out),
                               "--data", str(prompts), "--steps", "3", "--answer-tokens", "16", "--rank", "8",
                               "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    assert "held-out accuracy" in result.output and "+2: top-1" in result.output
    assert out.is_file()
    result = cli.invoke(main, ["generate", "abc", "--model", str(tiny_dir), "--method", "heads", "--adapter", str(out),
                               "--no-chat", "--max-new-tokens", "8", "--json", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["method"] == "heads"


def test_bad_adapter_is_one_line_and_exit_code_2(tiny_dir, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    for method in ("ppd", "heads"):
        result = CliRunner().invoke(main, ["generate", "hi", "--model", str(tiny_dir), "--method", method,
                                           "--adapter", str(bad), "--dtype", "float32"])
        assert result.exit_code == 2
        assert result.stderr.strip().count("\n") == 0 and "not a safetensors adapter" in result.stderr


def test_no_shipped_adapter_for_the_tiny_model(tiny_dir):
    result = CliRunner().invoke(main, ["generate", "hi", "--model", str(tiny_dir), "--method", "ppd"])
    assert result.exit_code == 2 and "quickdraft train --kind ppd" in result.stderr


def test_train_rejects_bad_options(tiny_dir, tmp_path):
    result = CliRunner().invoke(main, ["train", "--kind", "ppd", "--model", str(tiny_dir), "--out",
                                       str(tmp_path / "a.safetensors"), "--steps", "-1"])
    assert result.exit_code == 2 and "steps must be a positive integer" in result.stderr
