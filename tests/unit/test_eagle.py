"""eagle on the tiny model: decoding rolls out exactly what training evaluates; state and adapters."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from quickdraft import QuickdraftError
from quickdraft.adapters import Adapter, save_adapter
from quickdraft.drafters import Draft, DraftContext, StepOutcome
from quickdraft.drafters.eagle import EagleDrafter, build_eagle
from quickdraft.training import untrained_adapter
from quickdraft.training.data import Sequence
from quickdraft.training.objectives import EagleObjective, frequent_tokens


@pytest.fixture(scope="module")
def target(tiny_engine):
    return tiny_engine.target


def test_the_vocabulary_is_the_most_used_tokens():
    seqs = [Sequence(ids=(3, 3, 3, 9, 9, 1), prompt_len=2), Sequence(ids=(9, 4), prompt_len=1)]
    assert frequent_tokens(seqs, limit=3, vocab_size=16).tolist() == [3, 9, 1]
    assert frequent_tokens(seqs, limit=10, vocab_size=16).tolist() == [3, 9, 1, 4]  # only tokens seen


def test_decoding_guesses_what_training_evaluates(target):
    """The drafter, fed the verified steps of a sequence, guesses the tokens the objective's rollout predicts."""
    ids = torch.randint(0, target.vocab_size, (24,), generator=torch.Generator().manual_seed(1))
    seq = Sequence(ids=tuple(ids.tolist()), prompt_len=6)
    objective = EagleObjective(target.model, sequences=[seq], vocab=40, intermediate=16, depth=3)
    with torch.no_grad():  # a random drafter whose guesses are not all alike
        for p in objective.drafter.parameters():
            p.normal_(0.0, 0.3)
    hidden = objective.hidden(seq).float()  # [T, H]
    embed = objective.embed
    prompt = seq.prompt_len
    for anchor in (5, 9, 14):
        want = objective.predict(seq, torch.tensor([prompt - 2, anchor])).argmax(-1).tolist()  # [2, D]: +2..+4
        drafter = EagleDrafter(objective.drafter, embed, objective.head.float(), depth=3, topk=1, pool=1, nodes=3)
        drafter.observe_prompt(torch.tensor(seq.ids[:prompt]).numpy(), hidden[: prompt - 1])  # as after the prefill
        context = DraftContext(tokens=torch.tensor(seq.ids[:prompt]).numpy(), prompt_len=prompt, budget=8)
        draft = drafter.propose(context)  # the first step drafts from the prompt's features
        assert draft.tokens == tuple(want[0]) and draft.parents == (0, 1, 2)  # top-1 chain of depth 3
        # one verified step: the root (the prompt's last token) and a path up to the anchor, then the bonus token
        root = prompt - 1
        path = tuple(range(1, anchor - root + 1))
        nodes = [root, *range(root + 1, anchor + 1)]
        drafter.observe(StepOutcome(draft=Draft(tokens=seq.ids[root + 1: anchor + 1]), path=path,
                                    tokens=seq.ids[root + 1: anchor + 2], target_logits=torch.zeros(len(nodes), 4),
                                    target_hidden=hidden[nodes]))
        context = DraftContext(tokens=torch.tensor(seq.ids[: anchor + 2]).numpy(), prompt_len=prompt, budget=8)
        assert drafter.propose(context).tokens == tuple(want[1])
        # the same tokens observed one at a time, not asked in between (auto keeping it up to date): same guesses
        lazy = EagleDrafter(objective.drafter, embed, objective.head.float(), depth=3, topk=1, pool=1, nodes=3)
        lazy.observe_prompt(torch.tensor(seq.ids[:prompt]).numpy(), hidden[: prompt - 1])
        for at in range(root, anchor + 1):
            quiet = DraftContext(tokens=torch.tensor(seq.ids[: at + 1]).numpy(), prompt_len=prompt, budget=8, nodes=0)
            assert lazy.propose(quiet).tokens == ()
            lazy.observe(StepOutcome(draft=Draft(), path=(), tokens=(seq.ids[at + 1],),
                                     target_logits=torch.zeros(1, 4), target_hidden=hidden[at: at + 1]))
        assert lazy._cache.get_seq_length() == 0  # nothing ran while it was not asked
        assert lazy.propose(context).tokens == tuple(want[1])


def test_a_context_it_did_not_follow_starts_over(target, tmp_path):
    path = tmp_path / "eagle.safetensors"
    save_adapter(path, untrained_adapter(target, "eagle", vocab=32, intermediate=8))
    drafter = build_eagle(target, {"adapter": str(path), "nodes": 4})
    hidden = torch.randn(2, target.model.config.hidden_size).to(target.dtype)
    assert drafter.propose(DraftContext(tokens=torch.arange(5).numpy(), prompt_len=3, budget=8)).tokens == ()
    drafter.observe(StepOutcome(draft=Draft(tokens=(7,)), path=(1,), tokens=(7, 8), target_logits=torch.zeros(2, 4),
                                target_hidden=hidden))
    assert len(drafter.propose(DraftContext(tokens=torch.arange(7).numpy(), prompt_len=3, budget=8))) == 4
    drafter.observe(StepOutcome(draft=Draft(), path=(), tokens=(2,), target_logits=torch.zeros(1, 4),
                                target_hidden=hidden[:1]))
    # the tokens are not those it followed (two more than it observed): no guess, a fresh start
    assert drafter.propose(DraftContext(tokens=torch.arange(10).numpy(), prompt_len=3, budget=8)).tokens == ()


def test_while_not_asked_it_catches_up_in_pieces(target, tmp_path):
    from quickdraft.drafters.eagle import CATCH_UP

    path = tmp_path / "eagle.safetensors"
    save_adapter(path, untrained_adapter(target, "eagle", vocab=32, intermediate=8))
    drafter = build_eagle(target, {"adapter": str(path), "nodes": 4})
    hidden = torch.randn(CATCH_UP + 8, target.model.config.hidden_size).to(target.dtype)
    drafter.observe_prompt(torch.arange(4).numpy(), hidden[:3])
    quiet = DraftContext(tokens=torch.arange(4).numpy(), prompt_len=4, budget=8, nodes=0)
    assert drafter.propose(quiet).tokens == () and drafter._cache.get_seq_length() == 0  # 3 waiting: later
    drafter.observe(StepOutcome(draft=Draft(), path=(), tokens=(9,), target_logits=torch.zeros(1, 4),
                                target_hidden=hidden[3:4]))
    big = StepOutcome(draft=Draft(tokens=tuple(range(CATCH_UP))), path=tuple(range(1, CATCH_UP + 1)),
                      tokens=tuple(range(CATCH_UP + 1)), target_logits=torch.zeros(CATCH_UP + 1, 4),
                      target_hidden=hidden[4: CATCH_UP + 5])
    drafter.propose(replace(quiet, tokens=torch.arange(5).numpy()))
    drafter.observe(big)
    tokens = torch.arange(5 + CATCH_UP + 1).numpy()
    assert drafter.propose(replace(quiet, tokens=tokens)).tokens == ()
    assert drafter._cache.get_seq_length() == len(tokens) - 1  # caught up to the root, without drafting
    assert len(drafter.propose(DraftContext(tokens=tokens, prompt_len=4, budget=8))) == 4  # asked: drafts at once


def test_broken_eagle_adapters_are_clear_errors(target, tmp_path):
    good = untrained_adapter(target, "eagle", vocab=32, intermediate=8)
    cases = {
        "lacks": ({k: v for k, v in good.tensors.items() if k != "fc.weight"}, good.hparams, "lacks"),
        "shape": (good.tensors, {**good.hparams, "intermediate": 9}, "has shape"),
        "vocab": ({**good.tensors, "vocab": torch.tensor([0, target.vocab_size])}, good.hparams, "vocabulary"),
    }
    for name, (tensors, hparams, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_adapter(path, Adapter(kind="eagle", model=good.model, model_sha256=good.model_sha256, hparams=hparams,
                                   tensors=tensors))
        with pytest.raises(QuickdraftError, match=message):
            build_eagle(target, {"adapter": str(path)})


def test_only_drafters_that_read_the_prompt_get_its_hidden_states(tiny_engine, tiny_method_options):
    both = {**tiny_method_options["eagle"]}
    assert tiny_engine.drafter("eagle", both).wants_prompt_hidden
    assert tiny_engine.drafter("ngram+eagle", both).wants_prompt_hidden  # a combination passes it on
    assert not tiny_engine.drafter("heads", tiny_method_options["heads"]).wants_prompt_hidden  # no prefill cost
    assert not tiny_engine.drafter("auto").wants_prompt_hidden  # no eagle adapter for the tiny model
    # with the prompt's features, eagle drafts at the very first step (one step: nothing learned from decoding yet)
    result = tiny_engine.generate("abc abc abc", method="eagle", chat=False, max_new_tokens=3,
                                  options={**both, "nodes": 2})
    assert result.stats.steps >= 1 and result.stats.drafted_tokens >= 2


def test_a_tree_rollout_scores_every_guess_in_its_own_context(target):
    """Each candidate's score equals a chain rollout along its own path (tree mask and positions are right),
    the expanded nodes are the best paths, and the cache is left as it was."""
    from transformers import DynamicCache

    from quickdraft.drafters.eagle import tree_rollout

    ids = torch.randint(0, target.vocab_size, (12,), generator=torch.Generator().manual_seed(2))
    seq = Sequence(ids=tuple(ids.tolist()), prompt_len=4)
    objective = EagleObjective(target.model, sequences=[seq], vocab=40, intermediate=16, depth=3)
    with torch.no_grad():
        for p in objective.drafter.parameters():
            p.normal_(0.0, 0.3)
    drafter, embed, head = objective.drafter, objective.embed, objective.head.float()
    hidden = objective.hidden(seq).float()
    cache = DynamicCache()
    with torch.no_grad():
        out = drafter(hidden[None, :8], embed(ids[None, 1:9]), torch.arange(8)[None], cache=cache)[:, -1:]
        tree = tree_rollout(drafter, embed, head, out, cache, 8, depth=3, topk=3, pool=4)
        assert cache.get_seq_length() == 8
        assert len(tree.tokens) == 12 and tree.depths == (1,) * 4 + (2,) * 4 + (3,) * 4
        for i in range(len(tree.tokens)):
            path = [i]
            while tree.parents[path[0]] >= 0:
                path.insert(0, tree.parents[path[0]])
            feature, score = out, 0.0
            for d, node in enumerate(path):
                logp = torch.log_softmax(feature[0, 0] @ head.T, dim=-1)
                score += float(logp[drafter.vocab.tolist().index(tree.tokens[node])])
                feature = drafter(feature, embed(torch.tensor([[tree.tokens[node]]])), torch.tensor([[8 + d]]),
                                  cache=cache)
            cache.crop(-(cache.get_seq_length() - 8))
            assert abs(score - tree.scores[i]) < 1e-4, (i, score, tree.scores[i])
            if tree.depths[i] > 1:  # its parent was one of the 3 best at its depth
                siblings = [j for j in range(len(tree.tokens)) if tree.depths[j] == tree.depths[i] - 1]
                assert tree.parents[i] in sorted(siblings, key=lambda j: -tree.scores[j])[:3]
