"""`--method auto` on the command line: its choices in --stats and --json."""

import json

from click.testing import CliRunner

from quickdraft.cli import main


def test_stats_line_and_json_show_where_drafts_came_from(tiny_dir):
    args = ["generate", "abc abc abc abc abc abc", "--model", str(tiny_dir), "--method", "auto", "--no-chat",
            "--max-new-tokens", "24", "--dtype", "float32"]
    out = CliRunner().invoke(main, [*args, "--stats"])
    assert out.exit_code == 0, out.output
    assert "[auto]" in out.stderr and "; sources: " in out.stderr
    out = CliRunner().invoke(main, [*args, "--json"])
    assert out.exit_code == 0, out.output
    stats = json.loads(out.stdout)["stats"]
    sources = stats["sources"]
    assert {"plain", "pld-tree", "recycle", "ngram"} == set(sources)
    assert sum(row["chosen"] for name, row in sources.items() if name == "plain") <= stats["steps"]
    assert sum(row["accepted"] for row in sources.values()) == stats["new_tokens"] - stats["steps"]


def test_plain_methods_have_no_sources_in_json(tiny_dir):
    out = CliRunner().invoke(main, ["generate", "abc abc", "--model", str(tiny_dir), "--method", "pld", "--no-chat",
                                    "--max-new-tokens", "8", "--json", "--dtype", "float32"])
    assert out.exit_code == 0, out.output
    assert "sources" not in json.loads(out.stdout)["stats"]


def test_unknown_auto_source_is_a_one_line_error(tiny_dir):
    out = CliRunner().invoke(main, ["generate", "abc", "--model", str(tiny_dir), "--method", "auto", "--option",
                                    "sources=pld-tree,bogus", "--max-new-tokens", "4"])
    assert out.exit_code == 2
    assert out.stderr.strip().startswith("error: auto: unknown source 'bogus'")
