"""The CLI with model-based drafters: --draft-model, --option, and their errors (tiny models)."""

import json

from click.testing import CliRunner

from quickdraft.cli import main
from tests.conftest import make_tiny_model
from tests.unit.test_model_drafting import _tokenizer_with_bytes_reversed


def generate(args):
    return CliRunner().invoke(main, ["generate", "abc abc abc", "--no-chat", "--max-new-tokens", "12",
                                     "--dtype", "float32", *args])


def test_draft_model_and_options_reach_the_drafter(tiny_dir):
    plain = generate(["--model", str(tiny_dir), "--json"])
    # The target as its own draft model, k=3: every step drafts 3 tokens and all are accepted.
    out = generate(["--model", str(tiny_dir), "--method", "draft", "--draft-model", str(tiny_dir),
                    "--option", "k=3", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["token_ids"] == json.loads(plain.stdout)["token_ids"]
    assert data["stats"]["steps"] == 3 and data["stats"]["mean_accepted"] == 4.0


def test_swift_with_fixed_layers_from_the_command_line(tiny_dir):
    out = generate(["--model", str(tiny_dir), "--method", "swift", "--option", "skip=1", "--option", "k=2"])
    assert out.exit_code == 0, out.output


def test_draft_without_a_draft_model_is_a_clean_error(tiny_dir):
    out = generate(["--model", str(tiny_dir), "--method", "draft"])
    assert out.exit_code == 2 and out.output.startswith("error: ") and "--draft-model" in out.output
    assert "Traceback" not in out.output


def test_mismatched_draft_tokenizer_is_a_clean_error(tiny_dir, tmp_path):
    make_tiny_model(max_positions=256, seed=3).save_pretrained(tmp_path)
    _tokenizer_with_bytes_reversed().save_pretrained(tmp_path)
    out = generate(["--model", str(tiny_dir), "--method", "draft", "--draft-model", str(tmp_path)])
    assert out.exit_code == 2 and "token id 0" in out.output and len(out.output.strip().splitlines()) == 1


def test_bad_self_spec_option_is_a_clean_error(tiny_dir):
    out = generate(["--model", str(tiny_dir), "--method", "early-exit", "--option", "exit_layer=5"])
    assert out.exit_code == 2 and "exit_layer" in out.output
