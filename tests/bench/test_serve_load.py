"""The load benchmark (`quickdraft bench-serve`) on the tiny model: real servers on loopback, concurrent
streaming clients, a report with throughput, latency percentiles and identical answers."""

from __future__ import annotations

import json

from click.testing import CliRunner

from quickdraft import load
from quickdraft.bench.serve_load import LoadConfig, markdown, run_load, write_report
from quickdraft.cli import main
from quickdraft.server import ServerConfig


def test_load_report_on_the_tiny_model(tiny_dir, tmp_path):
    engine = load(str(tiny_dir), dtype="float32")
    config = LoadConfig(concurrency=(1, 3), modes=("one-at-a-time", "goodput"), method="pld",
                        requests_per_client=2, max_tokens=6, time_limit_s=120)
    prompts = ["hello there", "one two three one two", "abc abc abc"]
    lines = []
    results = run_load(engine, config, prompts, base=ServerConfig(default_method="pld"), progress=lines.append)
    assert len(results["levels"]) == 4 and len(lines) == 4
    for row in results["levels"]:
        assert row["errors"] == 0 and row["requests"] == 2 * row["concurrency"]
        assert row["tokens_per_s"] > 0 and row["ttft_p50_s"] <= row["ttft_p95_s"]
        same, total = row["identical"]
        assert same == total == row["requests"]  # greedy: every mode answers as the one-at-a-time server
    # the tiny model runs on transformers, which does not batch: the server says so and serves one at a time
    assert results["served"] == {"one-at-a-time": "max_batch=1", "goodput": "max_batch=1"}
    write_report(results, tmp_path / "out", "quickdraft bench-serve --test")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["command"] == "quickdraft bench-serve --test"
    assert (tmp_path / "out" / "throughput.png").stat().st_size > 1000
    table = markdown(saved)
    assert "| goodput | 3 |" in table and "1.00×" in table


def test_bench_serve_bad_input_is_one_line():
    for args in (["--concurrency", "1,x"], ["--modes", "sometimes"], ["--concurrency", "0"]):
        out = CliRunner().invoke(main, ["bench-serve", *args])
        assert out.exit_code != 0 and "Traceback" not in out.output, out.output
        assert out.output.strip().count("\n") == 0
