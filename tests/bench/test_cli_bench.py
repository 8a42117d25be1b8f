"""`quickdraft bench` on the command line: a small run, resume, and bad input (exit 2, nothing written)."""

import json

import pytest
from click.testing import CliRunner

from quickdraft.cli import main


@pytest.fixture
def cli():
    return CliRunner()


def test_bench_writes_everything_and_resume_keeps_records(cli, tiny_dir, small_suite, tmp_path):
    out = tmp_path / "out"
    args = ["bench", "--model", str(tiny_dir), "--dtype", "float32", "--suite", str(small_suite), "--methods",
            "pld,hf-pld", "--max-new-tokens", "6", "--option", "pld.k=4", "--out", str(out)]
    result = cli.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert {"results.json", "report.md", "records.jsonl", "run.json", "speedup.png", "accepted_hist.png"} <= {
        p.name for p in out.iterdir()}
    assert "hf-pld" in result.stdout and "speedup" in result.stdout  # the summary table
    data = json.loads((out / "results.json").read_text())
    assert list(data["methods"]) == ["ar", "pld", "hf-pld"] and data["options"] == {"pld": {"k": 4}}
    assert data["command"].startswith("quickdraft bench --methods pld,hf-pld --suite ")
    records = (out / "records.jsonl").read_text()
    assert len(records.splitlines()) == 9

    again = cli.invoke(main, args + ["--resume"])
    assert again.exit_code == 0, again.output
    assert (out / "records.jsonl").read_text() == records

    refused = cli.invoke(main, args)
    assert refused.exit_code == 2 and "pass --resume to continue it" in refused.stderr


@pytest.mark.parametrize("extra, message", [
    (["--suite", "/nonexistent/suite.jsonl"], "suite file /nonexistent/suite.jsonl does not exist"),
    (["--methods", "pld,bogus"], "unknown method 'bogus'"),
    (["--categories", "copy,poetry"], "unknown category 'poetry'"),
    (["--methods", "hf-assisted"], "hf-assisted needs --draft-model"),
    (["--methods", "pld,pld[k=2"], "cannot read method 'pld[k=2'"),
    (["--methods", "pld[]"], "has empty brackets"),
    (["--methods", "pld[k]"], "expected key=value"),
    (["--methods", "hf-pld[k=2]"], "hf-pld takes no options"),
    (["--methods", "bogus[k=2]"], "unknown method 'bogus'"),
    (["--methods", "pld[bogus=1]"], "method 'pld' has no option 'bogus'; its options: k, max_n, min_n"),
    (["--methods", "pld", "--option", "ngarm.nodes=8"], "--option ngarm.nodes: no method 'ngarm' in this run"),
    (["--methods", "pld,pld[k=3]", "--option", "pld.k=3"], "pld and pld[k=3] are the same method with the same"),
    (["--per-category", "0"], "--per-category must be a positive integer"),
    (["--repeats", "0"], "--repeats must be a positive integer"),
    (["--max-new-tokens", "-1"], "--max-new-tokens must be a positive integer"),
    (["--temperature", "-0.5"], "--temperature must be a number"),
    (["--option", "k"], "--option expects key=value"),
    (["--resume", "--force"], "contradict"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, tiny_dir, small_suite, tmp_path, extra, message):
    out = tmp_path / "out"
    args = ["bench", "--model", str(tiny_dir), "--suite", str(small_suite), "--out", str(out), *extra]
    result = cli.invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not out.exists()


def test_malformed_suite_line_is_reported_with_its_number(cli, tiny_dir, tmp_path):
    suite = tmp_path / "s.jsonl"
    suite.write_text('{"question_id": 1, "category": "a", "turns": ["hi"]}\n\n{"question_id": 2, "category": "a"\n')
    out = tmp_path / "out"
    result = cli.invoke(main, ["bench", "--model", str(tiny_dir), "--suite", str(suite), "--out", str(out)])
    assert result.exit_code == 2 and f"{suite}:3: not valid JSON" in result.stderr
    assert not out.exists()
