"""The machine's self-check: a layout is used only where it computed every row as plain decoding did, here."""

import json

import pytest
import torch
from click.testing import CliRunner

from quickdraft import exactness, models
from quickdraft.cli import main


def test_the_check_is_cached_per_machine_and_kernels(tiny_dir, tmp_path, monkeypatch):
    from quickdraft import load
    from quickdraft.profile import cpu_kernels

    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path))
    engine = load(str(tiny_dir), dtype="bfloat16")
    target = engine.target
    assert target.layout in models.LAYOUTS and target.exact
    files = list((tmp_path / "profiles").glob("exactness-*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["layout"] == target.layout and data["key"]["kernels"] == cpu_kernels()
    assert data["checks"][-1]["differ"] == 0 and data["checks"][-1]["rows"] > 100
    calls = []

    def check(target, layout):
        calls.append(layout)
        return exactness.RowCheck(layout, 10, 0)

    monkeypatch.setattr(exactness, "check_machine", check)
    assert exactness.select_layout(target) == target.layout and not calls  # from the cache
    # a file made on a CPU with other kernels (the same model name, say) is not trusted: checked anew
    data["key"]["kernels"] = "aten=OTHER,onednn_bf16=0"
    files[0].write_text(json.dumps(data))
    assert exactness.select_layout(target) == next(iter(models.LAYOUTS)) and calls == [next(iter(models.LAYOUTS))]


def test_float32_is_exact_without_a_check(tiny_engine):
    assert tiny_engine.target.dtype == torch.float32 and tiny_engine.target.exact
    assert tiny_engine.target.layout is None  # float32 rows are not laid out


@pytest.fixture
def no_exact_layout(tmp_path, monkeypatch):
    """A machine where no layout passes: every check reports differing rows."""
    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path))
    monkeypatch.setattr(exactness, "check_machine", lambda target, layout: exactness.RowCheck(layout, 100, 3))


def test_no_exact_layout_is_reported_not_claimed(tiny_dir, no_exact_layout, caplog):
    from quickdraft import load

    with caplog.at_level("WARNING"):
        engine = load(str(tiny_dir), dtype="bfloat16")
    assert engine.target.layout is None and not engine.target.exact
    assert any("exactness is not guaranteed" in r.getMessage() for r in caplog.records)
    result = engine.generate("abc abc abc", method="pld", max_new_tokens=8, chat=False)
    assert result.exact is False and result.to_dict()["exact"] is False


def test_generate_warns_and_says_so_in_json_and_stats(tiny_dir, no_exact_layout):
    out = CliRunner().invoke(main, ["generate", "abc abc", "--model", str(tiny_dir), "--method", "ngram",
                                    "--no-chat", "--max-new-tokens", "8", "--json", "--stats",
                                    "--dtype", "bfloat16"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["exact"] is False
    assert out.stderr.count("warning: exactness is not guaranteed on this CPU in bfloat16") == 1
    assert "exactness NOT guaranteed here" in out.stderr


def test_generate_json_says_exact_where_the_check_passed(tiny_dir, tiny_bf16_engine):
    assert tiny_bf16_engine.target.exact  # the check ran (and is cached) for the session's tiny model
    for dtype in ("float32", "bfloat16"):
        out = CliRunner().invoke(main, ["generate", "abc abc", "--model", str(tiny_dir), "--method", "ngram",
                                        "--no-chat", "--max-new-tokens", "8", "--json", "--dtype", dtype])
        assert out.exit_code == 0, out.output
        assert json.loads(out.stdout)["exact"] is True and "warning" not in out.stderr


def test_the_bench_report_marks_lossless_methods_when_not_exact():
    from quickdraft.bench.report import _lossless

    assert _lossless({"lossless": True}, {"exact": True}) == "yes"
    assert _lossless({"lossless": True}, {"exact": False}) == "not here"
    assert _lossless({"lossless": False}, {"exact": False}) == "no"
