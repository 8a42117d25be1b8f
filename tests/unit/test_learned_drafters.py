"""ppd and heads on the tiny model: extra embeddings in the verify pass, hidden states, adapters.

The fast paths (one tree pass with prompt tokens attached; the training pass
with many anchors and a 4D mask) are checked against slow references: plain
causal passes over the same inputs, one at a time.
"""

from __future__ import annotations

import pytest
import torch

from quickdraft import QuickdraftError
from quickdraft.adapters import Adapter, load_adapter_for, read_adapter, save_adapter
from quickdraft.drafters import Draft, DraftContext, StepOutcome
from quickdraft.drafters.heads import MedusaHeads, build_heads
from quickdraft.drafters.ppd import ParallelPromptDrafter, build_ppd
from quickdraft.training import untrained_adapter
from quickdraft.training.data import Sequence
from quickdraft.tree import depths
from quickdraft.training.objectives import HeadsObjective, PPDObjective, prompt_group_mask

ATOL = 1e-4


@pytest.fixture(scope="module")
def target(tiny_engine):
    return tiny_engine.target


def reference_logits(target, ids: list[int], extra: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of a plain causal pass over ``ids`` then the ``extra`` embeddings: [len, V]."""
    with torch.no_grad():
        emb = target.model.get_input_embeddings()(torch.tensor([ids]))
        if extra is not None:
            emb = torch.cat([emb, extra[None]], dim=1)
        return target.model(inputs_embeds=emb).logits[0].float()


def test_extra_embeddings_see_their_ancestors_only(target):
    prefix = [5, 17, 99, 3, 42]
    cache = target.new_cache()
    target.forward(prefix[:-1], cache)
    root = prefix[-1]
    # tree: root -> 7 -> 8, root -> 9; extras: a 2-chain under node 2 ("8"), one extra under the root
    tokens, parents = (7, 8, 9), (0, 1, 0)
    extras = torch.randn(3, target.model.config.hidden_size) * 0.05
    extra_parents = (2, 4, 0)  # node 4 is the first extra, node 5 the second, node 6 the third
    plain = target.forward([root, *tokens], target_clone(target, prefix), parents)
    out = target.forward_full([root, *tokens], cache, parents, extra_embeds=extras, extra_parents=extra_parents)
    assert torch.allclose(out.logits, plain, atol=ATOL), "extras must not change the tree's logits"
    want = reference_logits(target, prefix + [7, 8], extras[:2])
    assert torch.allclose(out.extra_logits[:2], want[-2:], atol=ATOL)
    want_root = reference_logits(target, prefix, extras[2:3])
    assert torch.allclose(out.extra_logits[2], want_root[-1], atol=ATOL)
    # commit the path root -> 7 -> 8: the cache equals a fresh prefill (the extras are gone)
    base = len(prefix) - 1
    cache.keep(base, [0, 1, 2])
    next_logits = target.forward([11], cache)
    assert torch.allclose(next_logits[0], reference_logits(target, prefix + [7, 8, 11])[-1], atol=ATOL)


def target_clone(target, prefix):
    cache = target.new_cache()
    target.forward(prefix[:-1], cache)
    return cache


def test_hidden_state_is_what_the_output_layer_reads(target):
    cache = target.new_cache()
    out = target.forward_full([1, 2, 3, 4], cache, (0, 0, 1), hidden=True)
    assert out.hidden.shape == (4, target.model.config.hidden_size)
    with torch.no_grad():
        assert torch.allclose(target.model.get_output_embeddings()(out.hidden).float(), out.logits, atol=ATOL)


def test_prompt_group_mask_matches_its_definition():
    anchors = torch.tensor([1, 4])
    mask = prompt_group_mask(6, anchors, 3)
    for row in range(6):
        a, j = divmod(row, 3)
        for col in range(6 + 6):
            if col < 6:
                want = col <= int(anchors[a])
            else:
                ga, gj = divmod(col - 6, 3)
                want = ga == a and gj <= j
            assert bool(mask[row, col]) == want


def test_ppd_training_pass_equals_the_inference_pass(target):
    """One training forward over many anchors gives each anchor what decoding would see."""
    objective = PPDObjective(target.model, prompt_tokens=3, seed=1)
    seq = Sequence(ids=tuple(range(30, 60)), prompt_len=5)
    anchors = torch.tensor([4, 9, 17, 25])
    student, teacher = objective.logits(seq, anchors)
    embeds = objective.embeds.detach()
    for i, a in enumerate(anchors.tolist()):
        cache = target.new_cache()
        target.forward(list(seq.ids[:a]), cache)
        out = target.forward_full([seq.ids[a]], cache, extra_embeds=embeds, extra_parents=(0, 1, 2))
        assert torch.allclose(student[i].detach(), out.extra_logits, atol=ATOL)
        ref = reference_logits(target, list(seq.ids[: a + 4]))
        assert torch.allclose(teacher[i], ref[a + 1: a + 4], atol=ATOL)


def test_heads_training_reads_the_same_hidden_states_as_decoding(target):
    objective = HeadsObjective(target.model, heads=2, rank=8)
    seq = Sequence(ids=tuple(range(70, 90)), prompt_len=3)
    cache = target.new_cache()
    out = target.forward_full(list(seq.ids), cache, hidden=True)
    assert torch.allclose(objective.hidden(seq), out.hidden, atol=ATOL)


def test_ppd_attaches_prompt_tokens_and_reads_guesses_back(target):
    m = 3
    embeds = torch.randn(m, target.model.config.hidden_size)
    drafter = ParallelPromptDrafter(embeds, nodes=6, topk=2, attach=2)
    ctx = DraftContext(tokens=torch.arange(10).numpy(), prompt_len=5, budget=50)
    first = drafter.propose(ctx)
    assert first.tokens == () and first.extra_parents == (0, 1, 2)  # nothing to guess yet: prompts on the root
    vocab = target.vocab_size
    extra_logits = torch.zeros(m, vocab)
    extra_logits[0, 11] = extra_logits[1, 12] = extra_logits[2, 13] = 10.0
    drafter.observe(StepOutcome(draft=first, path=(), tokens=(4,), target_logits=torch.zeros(1, vocab),
                                extra_logits=extra_logits))
    second = drafter.propose(ctx)
    assert second.tokens[:3] == (11, 12, 13) and second.parents[:3] == (0, 1, 2)  # the top chain comes first
    assert len(second) == 6 and len(second.extra_parents) == 2 * m
    # acceptance stopped at node 1 ("11"): if node 1 has no prompts, its ancestor's guesses shift by one
    attached = sorted({p for p in second.extra_parents if p <= len(second)})
    n = len(second)
    logits = torch.zeros(2 * m, vocab)
    for g, node in enumerate(attached):
        for j in range(m):
            logits[g * m + j, 20 + 3 * node + j] = 10.0
    drafter.observe(StepOutcome(draft=second, path=(1,), tokens=(11, 5), target_logits=torch.zeros(n + 1, vocab),
                                extra_logits=logits))
    third = drafter.propose(ctx)
    if 1 in attached:
        assert third.tokens[0] == 20 + 3
    else:
        assert 0 in attached and third.tokens[0] == 20 + 1  # the root's prompt 1 guesses the token after "5"
    # a foreign draft (merged or trimmed elsewhere) is ignored: next step drafts nothing
    drafter.observe(StepOutcome(draft=Draft(), path=(), tokens=(1,), target_logits=torch.zeros(1, vocab)))
    assert drafter.propose(ctx).tokens == ()


def test_ppd_respects_the_budget(target):
    drafter = ParallelPromptDrafter(torch.randn(3, target.model.config.hidden_size), nodes=8)
    assert drafter.propose(DraftContext(tokens=torch.arange(4).numpy(), prompt_len=2, budget=0)) == Draft()


def test_heads_guess_from_the_last_accepted_node(target, tiny_engine, tiny_method_options):
    drafter = tiny_engine.drafter("heads", {**tiny_method_options["heads"], "nodes": 6})
    assert isinstance(drafter, MedusaHeads) and drafter.wants_hidden
    ctx = DraftContext(tokens=torch.arange(8).numpy(), prompt_len=4, budget=2)
    assert len(drafter.propose(ctx)) == 0  # no hidden state yet
    hidden = torch.randn(3, target.model.config.hidden_size)
    draft = Draft(tokens=(1, 2), parents=(0, 1))
    drafter.observe(StepOutcome(draft=draft, path=(1,), tokens=(1, 9), target_logits=torch.zeros(3, 10),
                                target_hidden=hidden))
    proposed = drafter.propose(ctx)
    assert 0 < len(proposed) <= drafter.nodes and max(depths(proposed.parents)) <= 2  # the budget caps the depth
    assert drafter.heads.token_input  # the heads also read the bonus token (9 here)
    with torch.no_grad():
        next_embeds = target.model.get_input_embeddings()(torch.tensor([9]))
        expected = drafter.lm_head(drafter.heads(hidden[1:2], next_embeds)[0, 0]).argmax().item()
    assert proposed.tokens[0] == expected


# ------------------------------------------------------------------ adapter files


def test_adapter_round_trip_keeps_tensors_and_metadata(target, tmp_path):
    adapter = untrained_adapter(target, "ppd", prompt_tokens=2)
    path = tmp_path / "a.safetensors"
    save_adapter(path, adapter)
    back = read_adapter(path)
    assert (back.kind, back.model, back.model_sha256, back.hparams) == ("ppd", adapter.model, adapter.model_sha256,
                                                                       {"prompt_tokens": 2})
    assert torch.equal(back.tensors["prompt_embeds"], adapter.tensors["prompt_embeds"])
    assert path.read_bytes()[8:9] == b"{", "a safetensors file (JSON header), not a pickle"


def test_garbage_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x80\x04not a safetensors file at all")
    with pytest.raises(QuickdraftError, match="not a safetensors adapter"):
        read_adapter(path)
    with pytest.raises(QuickdraftError, match="does not exist"):
        read_adapter(tmp_path / "missing.safetensors")


def test_plain_safetensors_without_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"prompt_embeds": torch.zeros(3, 64)}, str(path))
    with pytest.raises(QuickdraftError, match="not a quickdraft adapter"):
        read_adapter(path)


def test_adapter_for_another_model_is_refused(target, tmp_path):
    adapter = untrained_adapter(target, "heads", heads=2, rank=4)
    other = Adapter(kind="heads", model="some-other-model", model_sha256="0" * 64, hparams=adapter.hparams,
                    tensors=adapter.tensors)
    path = tmp_path / "other.safetensors"
    save_adapter(path, other)
    with pytest.raises(QuickdraftError, match="trained for model some-other-model"):
        build_heads(target, {"adapter": str(path)})


def test_adapter_of_the_wrong_kind_is_refused(target, tiny_method_options):
    with pytest.raises(QuickdraftError, match="is a 'heads' adapter, not 'ppd'"):
        build_ppd(target, {"adapter": tiny_method_options["heads"]["adapter"]})


def test_missing_default_adapter_says_how_to_train_one(target):
    with pytest.raises(QuickdraftError, match="quickdraft train --kind ppd"):
        load_adapter_for(target, "ppd")


def test_bad_adapter_via_the_engine_is_a_quickdraft_error(tiny_engine, tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_text("nonsense")
    with pytest.raises(QuickdraftError):
        tiny_engine.generate("abc", method="ppd", chat=False, max_new_tokens=4, options={"adapter": str(path)})


@pytest.mark.parametrize("method", ["ppd", "heads"])
def test_sampling_runs_and_is_reproducible(tiny_engine, tiny_method_options, method):
    """Their drafts are deterministic trees (no draft_probs): tree speculative sampling verifies them.

    A fixed tree size: with the adaptive budget, statistics carried over from
    the first request change the second one's drafts, hence its random draws.
    """
    kwargs = dict(method=method, chat=False, max_new_tokens=24, temperature=0.8, seed=3,
                  options={**tiny_method_options[method], "nodes": 6})
    first = tiny_engine.generate("abc abc abc", **kwargs)
    second = tiny_engine.generate("abc abc abc", **kwargs)
    assert first.token_ids == second.token_ids and len(first.token_ids) > 0
    assert first.stats.drafted_tokens > 0


def test_a_combination_with_ppd_charges_its_prompt_tokens(tiny_engine, tiny_method_options):
    from quickdraft.profile import load_or_measure

    combined = tiny_engine.drafter("ngram+ppd", tiny_method_options["ppd"])
    ppd = dict(combined.parts)["ppd"]
    assert ppd.extra_inputs == ppd.attach * ppd.prompt_tokens > 0
    profile = load_or_measure(tiny_engine.target)
    assert combined.budget.latency(4) == profile.latency(4 + ppd.extra_inputs)  # nodes plus prompt tokens
    alone = tiny_engine.drafter("ngram+recycle")
    assert alone.budget.latency(4) == profile.latency(4)
