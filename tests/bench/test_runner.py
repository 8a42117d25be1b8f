"""The measurement loop on the tiny random model: schema, interleaving, exactness, resume."""

from __future__ import annotations

import dataclasses
import json

import pytest

from quickdraft import QuickdraftError
from quickdraft.bench import BenchConfig, BenchSettings, prepare, run_bench
from quickdraft.bench.runner import EngineMethod, RecordLog, Runner, build_backends, resolve_methods
from quickdraft.options import parse_options, split_methods
from quickdraft.bench.suites import load_suite


def config(suite, out, **kwargs) -> BenchConfig:
    settings = kwargs.pop("settings", BenchSettings(max_new_tokens=8))
    return BenchConfig(suite=str(suite), out=out, settings=settings, model="tiny", **kwargs)


def read_records(out):
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


class StopAfter:
    """A progress sink that interrupts the run after ``n`` records, like a Ctrl-C."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def start(self, total, done):
        self.total, self.done = total, done

    def update(self, label):
        pass

    def advance(self):
        self.seen += 1
        if self.seen == self.n:
            raise KeyboardInterrupt


def test_results_schema_order_and_peer_baselines(tiny_engine, small_suite, tmp_path):
    out = tmp_path / "out"
    cfg = config(small_suite, out, methods=("pld", "hf-generate", "hf-pld"),
                 settings=BenchSettings(max_new_tokens=8, repeats=2))
    results = run_bench(prepare(cfg), engine=tiny_engine)

    # Interleaved: every repeat, every prompt in file order, each method in turn, the first rotating.
    keys = [(r["repeat"], r["prompt_id"], r["method"]) for r in read_records(out)]
    methods = ["ar", "pld", "hf-generate", "hf-pld"]
    rotated = [(k, methods[k % 4:] + methods[: k % 4]) for k in range(6)]  # k: the prompt's place in the plan
    assert keys == [(k // 3, str(k % 3 + 1), m) for k, order in rotated for m in order]

    # The documented schema of results.json, read back from the file.
    data = json.loads((out / "results.json").read_text())
    assert data == json.loads(json.dumps(results))
    for key, kind in {"model": str, "dtype": str, "device": str, "threads": int, "suite": str,
                      "max_new_tokens": int, "temperature": float, "methods": dict}.items():
        assert isinstance(data[key], kind), key
    assert (data["dtype"], data["max_new_tokens"], data["temperature"]) == ("float32", 8, 0.0)
    assert list(data["methods"]) == methods
    for name, m in data["methods"].items():
        assert isinstance(m["lossless"], bool) and set(m["categories"]) == {"copy", "chat"}
        for cell in [m["overall"], *m["categories"].values()]:
            assert {"speedup", "tokens_per_s", "mean_accepted", "exact_match", "prompts"} <= set(cell)
            assert all(isinstance(cell[k], float) for k in ("speedup", "tokens_per_s", "mean_accepted", "exact_match"))
            assert isinstance(cell["prompts"], int)
        assert m["overall"]["prompts"] == 3 and m["categories"]["copy"]["prompts"] == 2
    ar = data["methods"]["ar"]["overall"]
    assert ar["speedup"] == 1.0 and ar["mean_accepted"] == 1.0 and ar["exact_match"] == 1.0
    # Lossless methods and transformers' own greedy decoding give ar's tokens; generate counts one pass per token.
    assert all(m["overall"]["exact_match"] == 1.0 for m in data["methods"].values())
    assert data["methods"]["hf-generate"]["overall"]["mean_accepted"] == 1.0
    assert data["methods"]["hf-generate"]["overall"]["accepted_hist"] is None

    for name in ("report.md", "run.json", "speedup.png", "accepted_hist.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| `pld` | yes |" in report and "| method | copy | chat | overall |" in report


def test_per_category_figures_are_recomputed_from_the_records(tiny_engine, small_suite, tmp_path):
    out = tmp_path / "out"
    results = run_bench(prepare(config(small_suite, out, methods=("pld",))), engine=tiny_engine)
    records = read_records(out)

    def tps(method, category):
        rows = [r for r in records if r["method"] == method and (category is None or r["category"] == category)]
        return sum(r["new_tokens"] / r["wall_s"] for r in rows) / len(rows)

    for category in ("copy", "chat", None):
        cell = results["methods"]["pld"]["categories"][category] if category else results["methods"]["pld"]["overall"]
        assert cell["tokens_per_s"] == pytest.approx(tps("pld", category), rel=1e-3)
        assert cell["speedup"] == pytest.approx(tps("pld", category) / tps("ar", category), rel=1e-3)
        rows = [r for r in records if r["method"] == "pld" and (category is None or r["category"] == category)]
        assert cell["mean_accepted"] == pytest.approx(sum(r["new_tokens"] for r in rows) / sum(r["steps"] for r in rows),
                                                      abs=1e-4)
    # Multi-turn: the second turn sees the method's own first answer, and totals add up the turns.
    chat = next(r for r in records if r["method"] == "ar" and r["prompt_id"] == "2")
    assert len(chat["turns"]) == 2 and chat["new_tokens"] == sum(len(t["token_ids"]) for t in chat["turns"])


def test_exactness_check_catches_a_method_that_corrupts_one_token(tiny_engine, small_suite, tmp_path):
    class CorruptOnce:
        """Wraps a real method and changes one token of its first answer."""

        def __init__(self, inner):
            self.inner, self.name, self.lossless, self.calls = inner, inner.name, True, 0

        def generate(self, messages, **kwargs):
            gen = self.inner.generate(messages, **kwargs)
            self.calls += 1
            if self.calls != 2:  # call 1 is the warm-up
                return gen
            ids = list(gen.token_ids)
            ids[len(ids) // 2] = (ids[len(ids) // 2] + 1) % 256
            return dataclasses.replace(gen, token_ids=ids)

    out = tmp_path / "out"
    prepared = prepare(config(small_suite, out, methods=("pld",)))
    backends = [EngineMethod(tiny_engine, "ar"), CorruptOnce(EngineMethod(tiny_engine, "pld"))]
    results = run_bench(prepared, engine=tiny_engine, backends=backends)
    pld = results["methods"]["pld"]
    assert pld["overall"]["exact_match"] == pytest.approx(2 / 3, abs=1e-3)
    assert pld["categories"]["copy"]["exact_match"] == 0.5 and pld["categories"]["chat"]["exact_match"] == 1.0
    assert "67% (2/3)" in (out / "report.md").read_text()


def test_resume_after_an_interruption_loses_and_repeats_nothing(tiny_engine, small_suite, tmp_path):
    out = tmp_path / "out"
    cfg = config(small_suite, out, methods=("pld", "hf-generate"))
    with pytest.raises(KeyboardInterrupt):
        run_bench(prepare(cfg), engine=tiny_engine, progress=StopAfter(4))
    before = (out / "records.jsonl").read_text()
    assert len(before.splitlines()) == 4 and not (out / "results.json").exists()
    # A kill in the middle of a write leaves a torn last line: it is dropped and that prompt redone.
    with open(out / "records.jsonl", "a") as fh:
        fh.write('{"repeat": 0, "prompt_id": "2", "meth')

    with pytest.raises(QuickdraftError, match="already holds a bench run; pass --resume"):
        prepare(cfg)
    progress = StopAfter(-1)
    results = run_bench(prepare(dataclasses.replace(cfg, resume=True)), engine=tiny_engine, progress=progress)
    assert (progress.total, progress.done, progress.seen) == (9, 4, 5)
    after = (out / "records.jsonl").read_text()
    assert after.startswith(before)
    keys = [(r["repeat"], r["prompt_id"], r["method"]) for r in read_records(out)]
    assert sorted(keys) == sorted((0, p, m) for p in "123" for m in ("ar", "pld", "hf-generate"))
    assert results["methods"]["pld"]["overall"]["prompts"] == 3
    assert results["methods"]["hf-generate"]["overall"]["exact_match"] == 1.0

    # Resuming a finished run measures nothing more; changing what was measured is refused.
    run_bench(prepare(dataclasses.replace(cfg, resume=True)), engine=tiny_engine)
    assert (out / "records.jsonl").read_text() == after
    other = dataclasses.replace(cfg, resume=True, settings=BenchSettings(max_new_tokens=9))
    with pytest.raises(QuickdraftError, match="started with different max_new_tokens"):
        prepare(other)
    with pytest.raises(QuickdraftError, match="different methods"):
        prepare(dataclasses.replace(cfg, resume=True, methods=("pld",)))
    # --force starts over.
    run_bench(prepare(dataclasses.replace(cfg, force=True, methods=("pld",))), engine=tiny_engine)
    assert len(read_records(out)) == 6


def test_a_corrupt_record_in_the_middle_is_an_error_with_its_line(tmp_path):
    path = tmp_path / "records.jsonl"
    good = json.dumps({"repeat": 0, "prompt_id": "1", "method": "ar"})
    path.write_text(f"{good}\nnot json\n{good}\n")
    with pytest.raises(QuickdraftError, match="records.jsonl:2: not a bench record"):
        RecordLog(path).read()
    path.write_text(f"{good}\n{good}")  # complete last line without its newline: kept, and the line ended
    assert len(RecordLog(path).read(repair=True)) == 2 and path.read_text().endswith("}\n")


def test_bad_input_fails_before_anything_is_written(tiny_engine, small_suite, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(QuickdraftError, match="unknown method 'bogus'; available: ar, pld.*hf-generate"):
        prepare(config(small_suite, out, methods=("pld", "bogus")))
    with pytest.raises(QuickdraftError, match="hf-assisted needs --draft-model"):
        prepare(config(small_suite, out, methods=("hf-assisted",)))
    with pytest.raises(QuickdraftError, match="unknown category 'nope'"):
        prepare(config(small_suite, out, categories=("copy", "nope")))
    long_prompt = tmp_path / "long.jsonl"
    long_prompt.write_text(json.dumps({"question_id": 1, "category": "a", "turns": ["x" * 300]}) + "\n")
    with pytest.raises(QuickdraftError, match="context holds 256"):
        run_bench(prepare(config(long_prompt, out)), engine=tiny_engine)
    assert not out.exists()


def test_interleaving_plan_and_method_resolution(tiny_engine):
    assert resolve_methods(["hf-pld", "pld", "ar", "pld"]) == ["ar", "hf-pld", "pld"]
    suite = load_suite("builtin").select(per_category=1, categories=["qa", "code"])
    backends = build_backends(tiny_engine, ["ar", "pld"])
    runner = Runner(backends, suite, BenchSettings(repeats=2), tiny_engine.tokenizer)
    ids = [p.id for p in suite.prompts]
    # every method per prompt, the first one rotating: the first answer to a new prompt is the slowest
    first, second = ("ar", "pld"), ("pld", "ar")
    assert runner.plan() == [(0, ids[0], m) for m in first] + [(0, ids[1], m) for m in second] + [
        (1, ids[0], m) for m in first] + [(1, ids[1], m) for m in second]
    with pytest.raises(ValueError, match="baseline"):
        Runner(backends[::-1], suite, BenchSettings(), tiny_engine.tokenizer)


def test_a_method_variant_runs_as_a_method_of_its_own_with_its_options(tiny_engine, small_suite, tmp_path):
    names = split_methods("pld, pld[max_n=2,k=2],ngram[ nodes=4 ],swift[skip=4,6,8],pld[k=\"2\"]")
    assert names == ["pld", "pld[max_n=2,k=2]", "ngram[ nodes=4 ]", "swift[skip=4,6,8]", 'pld[k="2"]']
    # one spelling per variant: keys sorted, values read back as given (the string "2" stays a string)
    assert resolve_methods(names) == ["ar", "pld", "pld[k=2,max_n=2]", "ngram[nodes=4]", "swift[skip=4,6,8]",
                                      'pld[k="2"]']
    # --option pld.k applies to pld and its variants; the variant's own options win
    backends = build_backends(tiny_engine, ["ar", "pld", "pld[k=2,max_n=2]"], options=parse_options(["pld.k=5"]))
    assert [(b.name, b.method, b.options) for b in backends] == [
        ("ar", "ar", {}), ("pld", "pld", {"k": 5}), ("pld[k=2,max_n=2]", "pld", {"k": 2, "max_n": 2})]
    out = tmp_path / "out"
    results = run_bench(prepare(config(small_suite, out, methods=("pld", "pld[k=1]"))), engine=tiny_engine)
    assert list(results["methods"]) == ["ar", "pld", "pld[k=1]"]
    assert {r["method"] for r in read_records(out)} == {"ar", "pld", "pld[k=1]"}
    variant, plain = results["methods"]["pld[k=1]"]["overall"], results["methods"]["pld"]["overall"]
    assert variant["exact_match"] == plain["exact_match"] == 1.0
    assert set(variant["accepted_hist"]) <= {"0", "1"}  # one draft token per pass at most
    assert ("pld", (("k", "1"),), None) in tiny_engine._drafters  # its own drafter, with its option
    assert "| `pld[k=1]` | yes |" in (out / "report.md").read_text()


def test_sampling_reports_exact_match_as_not_applicable(tiny_engine, small_suite, tmp_path):
    out = tmp_path / "out"
    cfg = config(small_suite, out, methods=("pld", "hf-generate"),
                 settings=BenchSettings(max_new_tokens=6, temperature=0.8, seed=3))
    results = run_bench(prepare(cfg), engine=tiny_engine)
    assert all(m["overall"]["exact_match"] is None for m in results["methods"].values())
    assert "| `pld` | yes |" in (out / "report.md").read_text() and "n/a" in (out / "report.md").read_text()


def test_hf_assisted_with_the_model_as_its_own_draft_accepts_and_matches(tiny_engine, tiny_dir, small_suite, tmp_path):
    out = tmp_path / "out"
    cfg = config(small_suite, out, methods=("hf-assisted",), draft_model=str(tiny_dir), dtype="float32")
    results = run_bench(prepare(cfg), engine=tiny_engine)
    peer = results["methods"]["hf-assisted"]["overall"]
    assert peer["exact_match"] == 1.0
    assert peer["mean_accepted"] > 1.5  # an assistant identical to the target is always right (plain: 1.0)
    assert results["draft_model"] == str(tiny_dir)


def test_a_folder_of_the_users_is_never_written_into(tiny_engine, small_suite, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my own report")
    for flags in ({}, {"force": True}, {"resume": True}):
        with pytest.raises(QuickdraftError, match="not empty and holds no bench run"):
            prepare(config(small_suite, out, methods=("pld",), **flags))
    assert (out / "report.md").read_text() == "my own report"


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_holds_it(tiny_engine, small_suite, tmp_path):
    from quickdraft.bench.runner import _locked

    out = tmp_path / "out"
    cfg = config(small_suite, out, methods=("pld",))
    prepared = prepare(cfg)
    out.mkdir()
    with _locked(out):  # another run is writing
        with pytest.raises(QuickdraftError, match="another bench run is writing"):
            prepare(cfg)
        with pytest.raises(QuickdraftError, match="another bench run is writing"):
            run_bench(prepared, engine=tiny_engine)
    run_bench(prepared, engine=tiny_engine)  # free again
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]  # results and plots written whole


def test_resume_refuses_measurements_from_other_code_libraries_or_cpu(tiny_engine, small_suite, tmp_path):
    out = tmp_path / "out"
    cfg = config(small_suite, out, methods=("pld",))
    with pytest.raises(KeyboardInterrupt):
        run_bench(prepare(cfg), engine=tiny_engine, progress=StopAfter(2))
    manifest = json.loads((out / "run.json").read_text())
    assert {"quickdraft", "torch", "transformers"} <= set(manifest["versions"])
    assert manifest["machine"].startswith("cpu:") and "aten=" in manifest["kernels"] and manifest["code"]
    prepare(dataclasses.replace(cfg, resume=True))  # the same environment resumes
    for key, value in (("kernels", "aten=OTHER,onednn_bf16=0"), ("versions", {"torch": "0.1"}), ("code", "abc")):
        (out / "run.json").write_text(json.dumps({**manifest, key: value}))
        with pytest.raises(QuickdraftError, match=f"another {key}"):
            prepare(dataclasses.replace(cfg, resume=True))
        prepare(dataclasses.replace(cfg, resume=True, resume_anywhere=True))  # the override
