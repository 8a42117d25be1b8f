"""The bench reports where a choosing method's (``auto``'s) drafts came from."""

from __future__ import annotations

import json

from quickdraft.bench import BenchConfig, BenchSettings, prepare, run_bench
from quickdraft.bench.report import RunInfo, aggregate, markdown


def rec(method, pid, category, sources=None, steps=10):
    return {"repeat": 0, "prompt_id": pid, "category": category, "method": method, "new_tokens": 20, "wall_s": 1.0,
            "steps": steps, "draft_s": 0.1, "verify_s": 0.5, "accepted_hist": {"0": steps}, "sources": sources,
            "turns": [{"token_ids": list(range(20))}]}


def test_sources_are_summed_per_category_and_shown_as_shares():
    info = RunInfo(model="m", dtype="float32", device="cpu", threads=2, suite="s",
                   settings=BenchSettings(max_new_tokens=32), lossless={"ar": True, "auto": True},
                   categories=["a", "b"], prompts=2)
    records = [
        rec("ar", "1", "a", steps=20), rec("ar", "2", "b", steps=20),
        rec("auto", "1", "a", {"plain": {"chosen": 2, "nodes": 0, "accepted": 0},
                               "pld": {"chosen": 8, "nodes": 40, "accepted": 10}}),
        rec("auto", "2", "b", {"plain": {"chosen": 10, "nodes": 0, "accepted": 0},
                               "pld": {"chosen": 0, "nodes": 0, "accepted": 0}}),
    ]
    res = aggregate(records, info)
    auto = res["methods"]["auto"]
    assert auto["overall"]["sources"] == {"plain": {"chosen": 12, "nodes": 0, "accepted": 0},
                                          "pld": {"chosen": 8, "nodes": 40, "accepted": 10}}
    assert auto["categories"]["a"]["sources"]["pld"]["chosen"] == 8
    assert "sources" not in res["methods"]["ar"]["overall"]
    text = markdown(res)
    assert "## Draft sources chosen by `auto`" in text
    assert "| `pld` | 80% (25%) | 0% | 40% (25%) |" in text
    assert "| `plain` | 20% | 100% | 60% |" in text


def test_auto_in_a_bench_run_reports_its_sources(tiny_engine, small_suite, tmp_path):
    out = tmp_path / "out"
    cfg = BenchConfig(suite=str(small_suite), out=out, settings=BenchSettings(max_new_tokens=8), model="tiny",
                      methods=("auto",))
    results = run_bench(prepare(cfg), engine=tiny_engine)
    sources = results["methods"]["auto"]["overall"]["sources"]
    assert {"plain", "pld-tree", "recycle", "ngram"} <= set(sources)
    assert sum(row["chosen"] for name, row in sources.items() if name == "plain") <= \
        results["methods"]["auto"]["overall"]["steps"]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert all(r["sources"] is None for r in records if r["method"] == "ar")
    assert "Draft sources chosen by `auto`" in (out / "report.md").read_text()
