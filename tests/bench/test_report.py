"""Aggregation on hand-made records with obvious answers, and the written files."""

import pytest

from quickdraft.bench.report import RunInfo, aggregate, markdown, summary_table, write_all
from quickdraft.bench.common import BenchSettings
from quickdraft.options import parse_options
from quickdraft import QuickdraftError


def rec(method, pid, category, tokens, wall, steps, ids=None, repeat=0, hist=None):
    ids = ids if ids is not None else list(range(tokens))
    return {"repeat": repeat, "prompt_id": pid, "category": category, "method": method, "new_tokens": tokens,
            "wall_s": wall, "steps": steps, "draft_s": None if steps is None else 0.1 * wall,
            "verify_s": None if steps is None else 0.6 * wall,
            "accepted_hist": hist if hist is not None else ({"0": steps} if steps else None),
            "turns": [{"token_ids": ids}]}


def info(methods, repeats=1, temperature=0.0):
    return RunInfo(model="m", dtype="float32", device="cpu", threads=2, suite="s",
                   settings=BenchSettings(max_new_tokens=32, repeats=repeats, temperature=temperature),
                   lossless=methods, categories=["a", "b"], prompts=2)


def test_speedup_is_a_ratio_of_mean_tokens_per_second_over_the_same_prompts():
    records = [
        rec("ar", "1", "a", 10, 1.0, 10), rec("ar", "2", "b", 20, 1.0, 20),
        rec("fast", "1", "a", 10, 0.5, 4, hist={"0": 1, "3": 3}), rec("fast", "2", "b", 20, 2.0, 10, hist={"1": 10}),
    ]
    res = aggregate(records, info({"ar": True, "fast": True}))
    fast = res["methods"]["fast"]
    assert fast["categories"]["a"]["speedup"] == 2.0 and fast["categories"]["b"]["speedup"] == 0.5
    # overall: mean(20, 10) / mean(10, 20) = 1.0; the total-time variant: (30 / 2.5) / (30 / 2) = 0.8
    assert fast["overall"]["speedup"] == 1.0 and fast["overall"]["speedup_total"] == 0.8
    assert fast["overall"]["tokens_per_s"] == 15.0
    assert fast["overall"]["mean_accepted"] == round(30 / 14, 4) and fast["categories"]["a"]["mean_accepted"] == 2.5
    assert fast["overall"]["accepted_hist"] == {"0": 1, "1": 10, "3": 3}
    assert res["methods"]["ar"]["overall"]["speedup"] == 1.0


def test_exact_match_counts_prompts_and_every_repeat():
    records = [
        rec("ar", "1", "a", 3, 1, 3, [1, 2, 3], 0), rec("ar", "1", "a", 3, 1, 3, [1, 2, 3], 1),
        rec("ar", "2", "b", 3, 1, 3, [4, 5, 6], 0), rec("ar", "2", "b", 3, 1, 3, [4, 5, 6], 1),
        rec("m", "1", "a", 3, 1, 3, [1, 2, 3], 0), rec("m", "1", "a", 2, 1, 2, [1, 2], 1),  # shorter in repeat 1
        rec("m", "2", "b", 3, 1, 3, [4, 5, 6], 0), rec("m", "2", "b", 3, 1, 3, [4, 5, 6], 1),
    ]
    res = aggregate(records, info({"ar": True, "m": True}, repeats=2))
    m = res["methods"]["m"]
    assert m["overall"]["exact_match"] == 0.5
    assert m["categories"]["a"]["exact_match"] == 0.0 and m["categories"]["b"]["exact_match"] == 1.0
    assert "50% (1/2)" in markdown(res)
    sampled = aggregate(records, info({"ar": True, "m": True}, repeats=2, temperature=0.7))
    assert sampled["methods"]["m"]["overall"]["exact_match"] is None


def test_incomplete_prompts_and_unknown_counts():
    records = [
        rec("ar", "1", "a", 10, 1.0, 10), rec("ar", "2", "b", 10, 1.0, 10),
        rec("hf-pld", "1", "a", 10, 0.5, None),  # prompt 2 never finished for this method
    ]
    res = aggregate(records, info({"ar": True, "hf-pld": True}))
    peer = res["methods"]["hf-pld"]
    assert peer["overall"]["prompts"] == 1 and peer["overall"]["speedup"] == 2.0
    assert peer["overall"]["mean_accepted"] is None and peer["overall"]["accepted_hist"] is None
    assert peer["categories"]["b"] == {"speedup": None, "tokens_per_s": None, "mean_accepted": None,
                                       "exact_match": None, "prompts": 0}
    text = markdown(res)
    assert "| `hf-pld` | yes | 2.00× | 20.0 | n/a | 100% | n/a |" in text


def test_files_and_summary_table(tmp_path):
    records = [rec("ar", "1", "a", 10, 1.0, 10), rec("ar", "2", "b", 10, 1.0, 10),
               rec("pld", "1", "a", 10, 0.5, 5, hist={"1": 5}), rec("pld", "2", "b", 10, 1.0, 10)]
    res = aggregate(records, info({"ar": True, "pld": True}))
    write_all(tmp_path, res)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accepted_hist.png", "report.md", "results.json", "speedup.png"]
    from rich.console import Console

    console = Console(record=True, width=100)
    console.print(summary_table(res))
    text = console.export_text()
    assert "pld" in text and "1.50×" in text


def test_option_parsing():
    assert parse_options([]) == {"": {}}
    assert parse_options(["k=8", "pld.k=4", "name=x=y", "flag=true"]) == {
        "": {"k": 8, "name": "x=y", "flag": True}, "pld": {"k": 4}}
    for bad in ("k", "=3", ".k=3", "pld.=3"):
        with pytest.raises(QuickdraftError, match="--option expects key=value"):
            parse_options([bad])
