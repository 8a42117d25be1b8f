"""``quickdraft train`` on the tiny model: the loss goes down, a checkpoint resumes, errors are clear."""

from __future__ import annotations

import json
import re

import pytest
import torch

from quickdraft import QuickdraftError
from quickdraft.adapters import read_adapter
from quickdraft.bench import load_suite
from quickdraft.training import TrainConfig, checkpoint_path, sample_batch, train
from quickdraft.training.data import Sequence, build_dataset, read_prompts
from quickdraft.training.prompts import builtin_prompts, split
from quickdraft.training.selfinstruct import Derived, PromptSet, selfinstruct_prompts

FAST = dict(steps=12, anchors=12, max_new_tokens=24, checkpoint_every=4, progress=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    (folder / "prompts.txt").write_text("\n".join(f"tell me about thing number {i}" for i in range(10)))
    return folder


def run(tiny_engine, workdir, kind, out, **kwargs):
    options = {**FAST, **kwargs}
    return train(kind=kind, model="tiny", out=out, data=str(workdir / "prompts.txt"), engine=tiny_engine,
                 data_cache=workdir / "cache", **options)


@pytest.mark.parametrize("kind, lr", [("ppd", 0.05), ("heads", 0.01), ("eagle", 0.01)])
def test_short_training_lowers_the_loss_and_writes_an_adapter(tiny_engine, workdir, tmp_path, kind, lr):
    out = tmp_path / f"{kind}.safetensors"
    report = run(tiny_engine, workdir, kind, out, lr=lr, steps=16)
    assert report.steps == 16
    assert report.last_loss < report.first_loss - 0.05, (report.first_loss, report.last_loss)
    adapter = read_adapter(out)
    assert adapter.kind == kind and adapter.info["steps"] == 16
    acc = adapter.info["held_out_accuracy"]
    assert len(acc["top1"]) == 3 and acc["predictions"] > 0
    assert not checkpoint_path(out).exists(), "a finished run leaves no checkpoint behind"
    # the adapter decodes losslessly
    expected = tiny_engine.generate("abc abc", method="ar", chat=False, max_new_tokens=12).token_ids
    got = tiny_engine.generate("abc abc", method=kind, chat=False, max_new_tokens=12, options={"adapter": str(out)})
    assert got.token_ids == expected


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("kind", ["ppd", "heads", "eagle"])
def test_an_interrupted_run_resumes_where_it_stopped(tiny_engine, workdir, tmp_path, kind):
    whole = tmp_path / "whole.safetensors"
    run(tiny_engine, workdir, kind, whole, steps=8)

    def stop_at_5(step):
        if step == 5:
            raise Interrupt

    parts = tmp_path / "parts.safetensors"
    with pytest.raises(Interrupt):
        run(tiny_engine, workdir, kind, parts, steps=8, on_step=stop_at_5)
    ckpt = checkpoint_path(parts)
    assert ckpt.exists() and not parts.exists()
    assert read_adapter(ckpt).info["step"] == 5  # saved on the way out, not only every 4 steps
    report = run(tiny_engine, workdir, kind, parts, steps=8)
    assert report.resumed_from == 5 and report.steps == 8
    a, b = read_adapter(whole).tensors, read_adapter(parts).tensors
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=1e-5), name


def test_a_checkpoint_from_other_settings_is_not_resumed(tiny_engine, workdir, tmp_path):
    out = tmp_path / "p.safetensors"

    def stop(step):
        if step == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(tiny_engine, workdir, "ppd", out, steps=8, on_step=stop)
    with pytest.raises(QuickdraftError, match="other settings"):
        run(tiny_engine, workdir, "ppd", out, steps=8, anchors=5)
    assert run(tiny_engine, workdir, "ppd", out, steps=3, anchors=5, fresh=True).resumed_from == 0


def test_a_corpus_joins_the_answers_and_its_tokens_fill_the_vocabulary(tiny_engine, workdir, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("zebra quartz jukebox " * 40)
    out = tmp_path / "e.safetensors"
    plain = run(tiny_engine, workdir, "eagle", tmp_path / "plain.safetensors", steps=2)
    report = run(tiny_engine, workdir, "eagle", out, steps=2, corpus=[str(corpus)])
    with_corpus = read_adapter(out)
    assert with_corpus.info["train_tokens"] > read_adapter(plain.out).info["train_tokens"]
    assert with_corpus.info["config"]["corpus"] == [str(corpus)] and report.steps == 2
    answers_vocab = read_adapter(plain.out).tensors["vocab"].tolist()
    vocab = with_corpus.tensors["vocab"].tolist()
    assert vocab[: len(answers_vocab)] == answers_vocab  # the model's own answers' tokens first
    extra = set(tiny_engine.tokenizer.encode("zebra quartz jukebox", add_special_tokens=False))
    assert extra <= set(vocab)


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="medusa"), "unknown adapter kind"),
    (dict(kind="ppd", corpus=["/nonexistent/corpus.txt"]), "does not exist"),
    (dict(kind="ppd", steps=0), "steps must be a positive integer"),
    (dict(kind="ppd", out="x.bin"), "must end in .safetensors"),
    (dict(kind="ppd", minutes=0), "minutes must be positive"),
    (dict(kind="ppd", data="/nonexistent/prompts.txt"), "cannot read training data"),
])
def test_bad_training_input_is_a_clear_error(tiny_engine, tmp_path, kwargs, message):
    args = dict(model="tiny", out=str(tmp_path / "a.safetensors"), engine=tiny_engine, progress=False)
    args.update(kwargs)
    with pytest.raises(QuickdraftError, match=message):
        train(**args)


def test_prompt_files(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text(json.dumps({"prompt": "a"}) + "\n\n" + json.dumps({"prompt": "b"}) + "\n")
    assert read_prompts(str(good)) == ["a", "b"]
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"text": "a"}\n')
    with pytest.raises(QuickdraftError, match="string 'prompt'"):
        read_prompts(str(bad))
    one = tmp_path / "one.txt"
    one.write_text("only one\n")
    with pytest.raises(QuickdraftError, match="at least 2"):
        read_prompts(str(one))


def test_builtin_prompts_hold_out_a_tenth():
    prompts = builtin_prompts()
    train_set, held = split(prompts)
    assert len(prompts) == len(set(prompts)) > 200
    assert not set(train_set) & set(held) and len(held) == len(prompts) // 10


def test_selfinstruct_is_fixed_varied_and_holds_out_what_derives_from_a_held_out_prompt():
    prompts = selfinstruct_prompts()
    assert prompts == selfinstruct_prompts() != selfinstruct_prompts(seed=1)
    assert len(prompts.first) == len(set(prompts.first)) > 900 and len(prompts.derived) > 450
    assert all(0 <= d.source < len(prompts.first) for d in prompts.derived)
    kinds = {d.template.split("\n")[0][:20] if d.template else "follow-up" for d in prompts.derived}
    assert len(kinds) >= 8  # summaries, questions on a text, translations both ways, rewrites, second turns
    train_set, held = prompts.split()
    assert len(held.first) == len(prompts.first) // 10 and not set(train_set.first) & set(held.first)
    assert len(train_set) + len(held) == len(prompts)
    # a derived request stays with its source: same first request before and after the split
    by_source = {(prompts.first[d.source], d.template, d.follow_up) for d in prompts.derived}
    for part in (train_set, held):
        assert {(part.first[d.source], d.template, d.follow_up) for d in part.derived} <= by_source
    assert read_prompts("selfinstruct") == prompts


def _shingles(text, n=8):
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i: i + n]) for i in range(len(words) - n + 1)}


def test_training_prompts_do_not_overlap_the_bench_suites():
    bench = set()
    for name in ("builtin", "humaneval"):
        for prompt in load_suite(name).prompts:
            for turn in prompt.turns:
                bench |= _shingles(turn)
    si = selfinstruct_prompts()
    texts = builtin_prompts() + si.first + [d.template + " " + d.follow_up for d in si.derived]
    overlapping = [t for t in texts if _shingles(t) & bench]
    assert not overlapping, overlapping[:3]


def test_derived_requests_are_answered_over_the_first_answers(tiny_engine, tmp_path):
    first = [f"tell me about thing number {i}" for i in range(10)]
    derived = [Derived(0, template="Summarize: {text}"), Derived(9, follow_up="and then?"),
               Derived(3, template="Translate: {text}")]
    prompts = PromptSet(first, derived)
    data = build_dataset(tiny_engine, prompts, model_sha256="x", max_new_tokens=8, cache=tmp_path)
    assert len(data.train) == 9 + 2 and len(data.held_out) == 1 + 1  # prompt 9 and its follow-up are held out
    tok = tiny_engine.tokenizer
    answer0 = tok.decode(data.train[0].ids[data.train[0].prompt_len:], skip_special_tokens=True).strip()
    summary = data.train[9]
    assert summary.ids[: summary.prompt_len] == tuple(tiny_engine.encode("Summarize: " + answer0))
    follow = data.held_out[1]
    assert follow.ids[: follow.prompt_len] == tuple(tiny_engine.encode([
        {"role": "user", "content": first[9]},
        {"role": "assistant", "content": tok.decode(data.held_out[0].ids[data.held_out[0].prompt_len:],
                                                    skip_special_tokens=True).strip()},
        {"role": "user", "content": "and then?"}]))
    again = build_dataset(tiny_engine, prompts, model_sha256="x", max_new_tokens=8, cache=tmp_path)
    assert again == data and len(list(tmp_path.glob("selfdistill-*.json"))) == 1


def test_batches_depend_only_on_seed_and_step():
    seqs = [Sequence(ids=tuple(range(40)), prompt_len=5), Sequence(ids=tuple(range(30)), prompt_len=3)]
    config = TrainConfig(kind="ppd", anchors=6, sequences=2)
    a = sample_batch(config, seqs, 3, step=7)
    b = sample_batch(config, seqs, 3, step=7)
    assert [(s.ids, x.tolist()) for s, x in a] == [(s.ids, x.tolist()) for s, x in b]
    assert all(len(x) == 6 and x.min() >= s.prompt_len - 1 and x.max() <= len(s.ids) - 5 for s, x in a)


def test_init_continues_an_adapter_and_refuses_a_foreign_one(tiny_engine, workdir, tmp_path, tiny_method_options):
    first = tmp_path / "first.safetensors"
    run(tiny_engine, workdir, "ppd", first, steps=6, lr=0.05)
    start = read_adapter(first).tensors["prompt_embeds"]
    # a step with a negligible learning rate keeps the initial adapter's parameters (not a random start)
    again = run(tiny_engine, workdir, "ppd", tmp_path / "again.safetensors", steps=1, lr=1e-9, init=str(first))
    assert again.steps == 1
    assert torch.allclose(read_adapter(tmp_path / "again.safetensors").tensors["prompt_embeds"], start, atol=1e-4)
    with pytest.raises(QuickdraftError, match="--init"):
        run(tiny_engine, workdir, "ppd", tmp_path / "x.safetensors", steps=2,
            init=tiny_method_options["heads"]["adapter"])
