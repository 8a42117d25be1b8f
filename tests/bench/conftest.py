"""Fixtures for the bench tests: a small suite file in the MT-bench/Spec-Bench format."""

from __future__ import annotations

import json

import pytest

SMALL_SUITE = [
    {"question_id": 1, "category": "copy", "turns": ["abc abc abc abc"]},
    {"question_id": 2, "category": "chat", "turns": ["hello there", "and again"]},
    {"question_id": 3, "category": "copy", "turns": ["xyz xyz xyz"]},
]


@pytest.fixture
def small_suite(tmp_path):
    """Three prompts in two categories, one of them with two turns."""
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in SMALL_SUITE), encoding="utf-8")
    return path
