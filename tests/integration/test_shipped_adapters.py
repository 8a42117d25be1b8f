"""The adapters shipped for the embedded model: they load, fit the model, and were really trained.

(Losslessness and drafts being accepted on the real model are checked for every
method in test_real_model.py, with these adapters as the defaults.)
"""

import pytest

from quickdraft.adapters import default_adapter_path, load_adapter_for

pytestmark = pytest.mark.real


@pytest.mark.parametrize("kind, max_bytes", [("ppd", 100_000), ("heads", 4_000_000), ("eagle", 8_000_000)])
def test_shipped_adapter_fits_the_embedded_model(real_engine, kind, max_bytes):
    path = default_adapter_path(kind, real_engine.model_name)
    assert path.is_file() and path.stat().st_size < max_bytes, "small enough to ship"
    adapter = load_adapter_for(real_engine.target, kind)  # raises unless it was trained for this model file
    info = adapter.info
    assert info["steps"] > 0 and info["train_tokens"] > 0 and info["held_out_sequences"] > 0
    top1 = info["held_out_accuracy"]["top1"]
    assert top1[0] > 0.2, f"{kind}: held-out top-1 accuracy for the token after next is only {top1[0]:.1%}"


@pytest.mark.parametrize("kind", ["ppd", "heads", "eagle"])
def test_learned_drafter_accepts_drafts_on_open_ended_text(real_engine, kind):
    prompt = "What are the main differences between a lake and a river?"
    expected = real_engine.generate(prompt, method="ar", max_new_tokens=48)
    got = real_engine.generate(prompt, method=kind, max_new_tokens=48, options={"nodes": 8})
    assert got.token_ids == expected.token_ids
    assert got.stats.mean_accepted > 1.2, f"{kind} accepted {got.stats.mean_accepted:.2f} tokens per pass"


def test_auto_drafts_with_the_shipped_eagle_by_default(real_engine, monkeypatch):
    assert [src.name for src in real_engine.drafter("auto").sources] == ["pld-tree", "recycle", "ngram", "eagle"]
    assert real_engine.drafter("auto").wants_prompt_hidden  # eagle reads the prompt's features
    # a fresh auto (other options: its own statistics, not what earlier tests taught the default one)
    fresh = {"margin": "0"}
    eagle = next(src.drafter for src in real_engine.drafter("auto", fresh).sources if src.name == "eagle")
    drafts = []  # what eagle proposed when auto asked it (auto then chooses by measured speed)
    propose = eagle.propose
    monkeypatch.setattr(eagle, "propose", lambda context: drafts.append(propose(context)) or drafts[-1])
    prompt = "Explain why the sky is dark at night, in a few sentences."
    expected = real_engine.generate(prompt, method="ar", max_new_tokens=64)
    got = real_engine.generate(prompt, method="auto", max_new_tokens=64, options=fresh)
    assert got.token_ids == expected.token_ids
    assert any(len(draft) for draft in drafts), "eagle drafted when asked"
    # a heads adapter given: heads joins, and eagle falls back to its shipped adapter
    heads = str(default_adapter_path("heads", real_engine.model_name))
    assert [src.name for src in real_engine.drafter("auto", {"adapter": heads}).sources] == [
        "pld-tree", "recycle", "ngram", "heads", "eagle"]
