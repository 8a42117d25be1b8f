"""Model-based drafters: draft model, self-speculation (swift, early-exit), adaptive length, dynamic trees."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from quickdraft import QuickdraftError
from quickdraft.drafters import DraftContext
from quickdraft.sizing import AcceptanceModel, keep_drafting
from quickdraft.drafters.draft_model import vocab_map
from quickdraft.drafters.lm import DraftSession, LayerSubsetLM, WholeModelLM, check_self_spec_support
from quickdraft.drafters.model_drafter import ModelDrafter, TreeShape
from quickdraft.drafters.self_spec import SelfSpecDrafter, predicted_speedup
from quickdraft.drafters.swift import swift_candidates
from quickdraft.engine import Stats, decode
from quickdraft.sampling import SamplingParams, target_probs
from quickdraft.tree import depths
from quickdraft.verify import verify_sampling
from tests.conftest import make_tiny_model, make_tiny_tokenizer

GREEDY = SamplingParams()
PROMPT = "the quick brown fox jumps over the lazy dog. the quick brown fox"


def run(target, ids, drafter, params=GREEDY, max_new_tokens=40):
    stats = Stats()
    out = [t for step in decode(target, ids, drafter, params, max_new_tokens, stats) for t in step]
    return out, stats


@pytest.fixture(scope="module")
def ids(tiny_engine):
    return tiny_engine.encode(PROMPT, chat=False)


@pytest.fixture(scope="module")
def expected(tiny_engine, ids):
    return run(tiny_engine.target, ids, tiny_engine.drafter("ar"))[0]


# --- the draft model's cache and forward --------------------------------------------------


def test_session_follows_the_committed_tokens_like_a_fresh_prefill(tiny_engine, ids):
    lm = WholeModelLM(tiny_engine.target.model)
    session = DraftSession(lm)
    tokens = np.array(ids + [5, 6, 7], dtype=np.int64)
    session.sync(tokens)
    session.extend([9, 9])  # drafted, then rejected
    rolled_back = np.array(ids + [5, 6, 8, 1], dtype=np.int64)  # 6 accepted, 8 recovered, 1 bonus
    got = session.sync(rolled_back)
    fresh = DraftSession(lm).sync(rolled_back)
    assert session.ids == rolled_back.tolist()
    assert torch.allclose(got, fresh, atol=1e-4)


def test_tree_nodes_never_survive_into_the_next_sync(tiny_engine, ids):
    session = DraftSession(WholeModelLM(tiny_engine.target.model))
    tokens = np.array(ids, dtype=np.int64)
    session.sync(tokens)
    allowed = torch.ones(2, len(tokens) + 2, dtype=torch.bool)
    session.extend_tree([3, 4], [len(tokens)] * 2, allowed)
    session.truncate(len(tokens))
    assert session.ids == tokens.tolist() and len(session) == len(tokens)


def test_all_layers_equal_the_model_itself(tiny_engine, ids):
    target = tiny_engine.target
    full = LayerSubsetLM(target.model, range(len(target.model.model.layers)))
    cache = full.new_cache()
    head = full.forward(ids[:-3], 0, cache)
    tail = full.forward(ids[-3:], len(ids) - 3, cache)  # with a cache, as drafting does
    reference = target.forward(list(ids), target.new_cache())
    assert torch.allclose(torch.cat([head, tail]), reference, atol=1e-4)


def test_fewer_layers_give_other_logits(tiny_engine, ids):
    model = tiny_engine.target.model
    one = LayerSubsetLM(model, [0]).forward(ids, 0, LayerSubsetLM(model, [0]).new_cache())
    assert not torch.allclose(one, tiny_engine.target.forward(list(ids), tiny_engine.target.new_cache()))


def test_unsupported_architecture_fails_loudly():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=64))
    with pytest.raises(QuickdraftError, match="gpt2"):
        check_self_spec_support(gpt2)


# --- chains: a slow reference beside the fast path ------------------------------------------


def test_fixed_k_chain_is_the_draft_models_greedy_continuation(tiny_engine, ids):
    draft_model = make_tiny_model(max_positions=256, seed=1)
    drafter = ModelDrafter(WholeModelLM(draft_model), k=5)
    tokens = np.array(ids, dtype=np.int64)
    draft = drafter.propose(DraftContext(tokens=tokens, prompt_len=len(ids), budget=10))
    reference = list(ids)
    with torch.no_grad():
        for _ in range(5):  # no cache: a full forward per token
            reference.append(int(draft_model(torch.tensor([reference])).logits[0, -1].argmax()))
    assert list(draft.tokens) == reference[len(ids):] and draft.draft_probs is None


def test_budget_caps_the_draft(tiny_engine, ids):
    drafter = ModelDrafter(WholeModelLM(tiny_engine.target.model), k=5)
    draft = drafter.propose(DraftContext(tokens=np.array(ids), prompt_len=len(ids), budget=2))
    assert len(draft) == 2
    assert len(drafter.propose(DraftContext(tokens=np.array(ids), prompt_len=len(ids), budget=0))) == 0


def test_sampled_drafts_carry_their_shaped_distribution(tiny_engine, ids):
    params = SamplingParams(temperature=0.7, top_k=4, seed=0)
    drafter = ModelDrafter(WholeModelLM(tiny_engine.target.model), k=3)
    draft = drafter.propose(DraftContext(tokens=np.array(ids), prompt_len=len(ids), budget=8, params=params))
    assert draft.draft_probs.shape == (3, tiny_engine.target.vocab_size)
    assert torch.allclose(draft.draft_probs.sum(-1), torch.ones(3))
    assert ((draft.draft_probs > 0).sum(-1) == 4).all()  # top-k shaped
    assert all(draft.draft_probs[i, t] > 0 for i, t in enumerate(draft.tokens))


# --- adaptive length -------------------------------------------------------------------------


def test_stop_rule_drafts_more_when_drafts_are_cheap_and_good():
    assert keep_drafting(reach=0.9, next_accept=0.9, expected=2.0, drafted=1, cost=0.1)
    assert not keep_drafting(reach=0.9, next_accept=0.9, expected=2.0, drafted=1, cost=1.0)
    assert not keep_drafting(reach=0.05, next_accept=0.5, expected=2.0, drafted=3, cost=0.2)


def test_acceptance_model_learns_a_confidence_curve():
    model = AcceptanceModel()
    rng = np.random.default_rng(0)
    for _ in range(2000):
        conf = float(rng.random())
        model.update(conf, bool(rng.random() < conf ** 2))  # true acceptance: conf squared
    assert model.estimate(0.95) == pytest.approx(0.95 ** 2, abs=0.12)
    assert model.estimate(0.3) == pytest.approx(0.3 ** 2, abs=0.12)


def test_adaptive_drafts_long_when_everything_is_accepted_and_nothing_when_it_costs_too_much(
        tiny_engine, ids, expected):
    target = tiny_engine.target
    cheap = ModelDrafter(WholeModelLM(target.model), cost=0.05, max_k=6)
    got, stats = run(target, ids, cheap)
    assert got == expected and stats.mean_accepted > 3.0
    dear = ModelDrafter(WholeModelLM(target.model), cost=1.0)  # the target drafting for itself: no gain possible
    got, stats = run(target, ids, dear)
    assert got == expected and stats.drafted_tokens == 0


def test_adaptive_backs_off_a_bad_draft(tiny_engine, ids, expected, tiny_draft_dir):
    from transformers import AutoModelForCausalLM

    bad = ModelDrafter(WholeModelLM(AutoModelForCausalLM.from_pretrained(tiny_draft_dir)), cost=0.2)
    got, stats = run(tiny_engine.target, ids, bad)
    assert got == expected
    assert stats.drafted_tokens < stats.steps  # less than one token a step after learning


# --- the draft method: tokenizers ----------------------------------------------------------


def test_identical_tokenizers_map_to_the_identity():
    tok = make_tiny_tokenizer()
    assert vocab_map(tok, make_tiny_tokenizer(), target_vocab=259, draft_vocab=259).identity


def test_a_special_token_difference_is_mapped():
    target, draft = make_tiny_tokenizer(), _tokenizer_with_specials(("<s>", "<pad>", "</s>"))
    m = vocab_map(target, draft, target_vocab=259, draft_vocab=259)
    assert not m.identity
    assert m.to_draft[:256].tolist() == list(range(256))
    assert m.to_draft[257] == 258 and m.to_draft[258] == 257  # </s> and <pad> swapped places


def test_padding_rows_are_not_mapped():
    tok = make_tiny_tokenizer()
    m = vocab_map(tok, make_tiny_tokenizer(), target_vocab=264, draft_vocab=259)
    assert m.to_draft[:259].tolist() == list(range(259)) and (m.to_draft[259:] == -1).all()


def test_a_different_ordinary_token_is_refused_by_name():
    target = make_tiny_tokenizer()
    draft = _tokenizer_with_bytes_reversed()
    with pytest.raises(QuickdraftError, match=r"token id 0 is '!' in the target but .* in the draft"):
        vocab_map(target, draft, target_vocab=259, draft_vocab=259)


def test_draft_method_needs_a_draft_model(tiny_engine):
    with pytest.raises(QuickdraftError, match="draft model"):
        tiny_engine.drafter("draft", {})


def test_draft_method_with_a_mismatched_tokenizer_fails_before_decoding(tiny_engine, tmp_path):
    make_tiny_model(max_positions=256, seed=2).save_pretrained(tmp_path)
    _tokenizer_with_bytes_reversed().save_pretrained(tmp_path)
    with pytest.raises(QuickdraftError, match="does not share the vocabulary"):
        tiny_engine.generate("hello", method="draft", max_new_tokens=4, options={"draft_model": str(tmp_path)})


def test_draft_with_mapped_special_tokens_equals_plain_greedy(tiny_engine, ids, expected, tmp_path):
    make_tiny_model(max_positions=256, seed=0).save_pretrained(tmp_path)  # the target's weights
    _tokenizer_with_specials(("<s>", "<pad>", "</s>")).save_pretrained(tmp_path)
    drafter = tiny_engine.drafter("draft", {"draft_model": str(tmp_path), "k": 4})
    got, stats = run(tiny_engine.target, ids, drafter)
    assert got == expected and stats.mean_accepted > 3.0  # byte tokens map to themselves: all accepted


def _tokenizer_with_specials(specials):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for special in specials:
        vocab[special] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _tokenizer_with_bytes_reversed():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), reverse=True)
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for special in ("<s>", "</s>", "<pad>"):
        vocab[special] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


# --- dynamic trees ---------------------------------------------------------------------------


def test_dynamic_tree_is_a_valid_tree_within_budget_holding_the_greedy_path(tiny_engine, ids, expected):
    drafter = ModelDrafter(WholeModelLM(tiny_engine.target.model), cost=0.01, tree=TreeShape(width=3, depth=4, nodes=10))
    draft = drafter.propose(DraftContext(tokens=np.array(ids), prompt_len=len(ids), budget=20))
    assert 3 <= len(draft) <= 10 and draft.draft_probs is None
    assert max(depths(draft.parents)) <= 4
    first = [i + 1 for i, p in enumerate(draft.parents) if p == 0]
    assert draft.tokens[first[0] - 1] == expected[0]  # the draft's best child is the model's argmax
    assert len(drafter.session) == len(ids)  # tree nodes were dropped from the draft cache


@pytest.mark.parametrize("method", ["draft", "swift", "early-exit"])
def test_trees_equal_plain_greedy(tiny_engine, ids, expected, tiny_draft_dir, method):
    options = {"tree": True, "cost": 0.05, "width": 3, "depth": 4, "nodes": 12}
    if method == "draft":
        options["draft_model"] = str(tiny_draft_dir)
    got, stats = run(tiny_engine.target, ids, tiny_engine.drafter(method, options))
    assert got == expected and stats.drafted_tokens > 0


def test_a_tree_from_the_target_itself_accepts_deep_paths(tiny_engine, ids, expected):
    drafter = ModelDrafter(WholeModelLM(tiny_engine.target.model), cost=0.01, tree=TreeShape(width=2, depth=5, nodes=12))
    got, stats = run(tiny_engine.target, ids, drafter)
    assert got == expected and stats.mean_accepted > 3.0


# --- self-speculation ------------------------------------------------------------------------


def test_swift_candidates_keep_the_first_and_last_layers():
    for total in (8, 24, 30):
        cands = swift_candidates(total)
        assert len(cands) >= 6 and len(set(cands)) == len(cands)
        assert all(c[0] == 0 and c[-1] == total - 1 and len(c) < total for c in cands)


def test_self_spec_chooses_the_candidate_that_matches_and_learns_from_acceptance(tiny_engine, ids):
    model = tiny_engine.target.model
    drafter = SelfSpecDrafter(model, [(0,), (0, 1)], k=3)  # (0, 1) is the model itself: match 1.0
    drafter.reset()
    drafter.propose(DraftContext(tokens=np.array(ids), prompt_len=len(ids), budget=5))
    assert drafter.layers == (0, 1)
    assert [c.alpha for c in drafter.candidates][1] == 1.0
    assert predicted_speedup(1.0, drafter.candidates[1].cost) < predicted_speedup(1.0, drafter.candidates[0].cost)


def test_self_spec_stands_down_without_draft_passes_when_nothing_pays(tiny_engine, ids):
    model = tiny_engine.target.model
    context = DraftContext(tokens=np.array(ids), prompt_len=len(ids), budget=5)
    drafter = SelfSpecDrafter(model, [(0,), (1,)])
    for cand in drafter.candidates:
        cand.alpha = 0.05  # measured: hardly ever agrees, so no candidate is predicted to pay
    drafter.reset()
    assert not drafter.propose(context).tokens and drafter.standing_down
    assert len(drafter.session) == 0  # not even a pass to keep the draft cache in step
    control = SelfSpecDrafter(model, [(0,), (1,)])
    control.candidates[0].alpha, control.candidates[1].alpha = 0.95, 0.05  # the first one pays
    control.reset()
    control.propose(context)
    assert not control.standing_down and control.layers == (0,) and len(control.session) == len(ids)


def test_model_drafter_backs_off_after_declining():
    from quickdraft.drafters.model_drafter import Backoff

    b = Backoff(cap=8)
    skipped = []
    for _ in range(6):
        b.record(declined=True)
        n = 0
        while b.skip():
            n += 1
        skipped.append(n)
    assert skipped == [1, 2, 4, 8, 8, 8]
    b.record(declined=False)
    assert not b.skip()


def test_self_spec_fixed_layers_and_bad_options(tiny_engine):
    assert tiny_engine.drafter("swift", {"skip": "1"}).candidates[0].layers == (0,)
    assert tiny_engine.drafter("early-exit", {"exit_layer": 1}).candidates[0].layers == (0,)
    for method, options in [("swift", {"skip": "0,1"}), ("swift", {"skip": "7"}), ("early-exit", {"exit_layer": 2}),
                            ("swift", {"width": 3})]:
        with pytest.raises(QuickdraftError):
            tiny_engine.drafter(method, options)


@pytest.mark.parametrize("method", ["swift", "early-exit"])
def test_self_spec_sampling_runs_and_is_reproducible(tiny_engine, ids, method):
    params = SamplingParams(temperature=0.8, top_p=0.9, seed=11)
    a, _ = run(tiny_engine.target, ids, tiny_engine.drafter(method, {"k": 3}), params, 24)
    b, _ = run(tiny_engine.target, ids, tiny_engine.drafter(method, {"k": 3}), params, 24)
    assert a == b and len(a) == 24


# --- statistics under sampling: a chain drafted from a real draft distribution ---------------

CRIT_4DOF = 18.47  # chi-square, 4 degrees of freedom, p = 0.001


def _first_token_counts(tiny_engine, ids, params, trials, *, wrong_probs=False):
    """Draft one token by early exit (the target's first layer), verify; count the emitted first token."""
    target = tiny_engine.target
    root = target_probs(target.forward(list(ids), target.new_cache())[-1:], params)[0]  # [V]
    drafter = ModelDrafter(LayerSubsetLM(target.model, [0]), k=1)
    g = torch.Generator().manual_seed(5)
    counts = torch.zeros(target.vocab_size)
    inside = 0
    for trial in range(trials):  # each trial a request of its own seed (a drafter's draws are keyed by position)
        drafter.reset()
        context = DraftContext(tokens=np.array(ids), prompt_len=len(ids), budget=1,
                               params=dataclasses.replace(params, seed=trial))
        draft = drafter.propose(context)
        probs = draft.draft_probs
        if wrong_probs:  # a verifier told the wrong draft distribution (uniform): biased
            probs = torch.full_like(probs, 1.0 / probs.shape[1])
        verdict = verify_sampling(torch.stack([root, root]), list(draft.tokens), probs, g)
        counts[verdict.tokens[0]] += 1
        inside += int(root[draft.tokens[0]] > 0)
    return counts, root, inside / trials


def _chi2(counts, probs):
    support = probs > 0
    assert counts[~support].sum() == 0, "a token outside the target's support was emitted"
    expected = probs[support] * counts.sum()
    return float(((counts[support] - expected) ** 2 / expected).sum())


def test_model_chain_sampling_matches_the_target_distribution(tiny_engine, ids):
    params = SamplingParams(temperature=1.0, top_k=5, seed=1)
    counts, root, inside = _first_token_counts(tiny_engine, ids, params, trials=1500)
    assert 0.1 < inside < 0.9  # the draft's top 5 overlaps the target's in part: residuals really matter
    assert _chi2(counts, root) < CRIT_4DOF


def test_negative_control_wrong_draft_probabilities_are_caught(tiny_engine, ids):
    params = SamplingParams(temperature=1.0, top_k=5, seed=1)
    counts, root, _ = _first_token_counts(tiny_engine, ids, params, trials=800, wrong_probs=True)
    assert counts[root == 0].sum() > 0 or _chi2(counts, root) > CRIT_4DOF


def test_self_spec_remembers_its_choice_and_learns_across_requests(tiny_engine, ids, expected):
    target = tiny_engine.target
    drafter = SelfSpecDrafter(target.model, [(0,), (0, 1)], k=3)
    got, _ = run(target, ids, drafter)
    assert got == expected
    calibration = drafter.acceptance
    drafter.reset()  # the next request: what was observed is folded into the chosen candidate
    chosen = drafter.candidates[1]
    assert chosen.observed == 1 and chosen.alpha == 1.0  # measured 1.0, observed 1.0 (it is the model)
    got, _ = run(target, ids, drafter)
    assert got == expected and drafter.layers == (0, 1) and drafter.acceptance is calibration


def _tree_first_token_counts(tiny_engine, ids, params, trials, *, claim_sampled=False):
    """A deterministic dynamic tree (drafted once), verified many times by recursive rejection sampling."""
    from quickdraft.drafters.model_drafter import draft_distribution
    from quickdraft.verify import verify_tree_sampling

    target = tiny_engine.target
    lm = LayerSubsetLM(target.model, [0])  # an early-exit draft: related to the target, not equal
    drafter = ModelDrafter(lm, cost=0.01, tree=TreeShape(width=3, depth=2, nodes=6))
    draft = drafter.propose(DraftContext(tokens=np.array(ids), prompt_len=len(ids), budget=4, params=params))
    cache = target.new_cache()
    target.forward(list(ids[:-1]), cache)
    logits = target.forward([ids[-1], *draft.tokens], cache, draft.parents)  # [n + 1, V]
    probs = target_probs(logits, params)
    claimed = None
    if claim_sampled:  # pretend each node was drawn from the draft's distribution at its parent
        rows = lm.forward(list(ids), 0, lm.new_cache())[-1:]
        claimed = draft_distribution(rows[0], params).expand(len(draft), -1).clone()
    g = torch.Generator().manual_seed(9)
    counts = torch.zeros(target.vocab_size)
    for _ in range(trials):
        counts[verify_tree_sampling(probs, list(draft.tokens), draft.parents, claimed, g).tokens[0]] += 1
    return counts, probs[0], draft


def test_dynamic_tree_sampling_matches_the_target_distribution(tiny_engine, ids):
    params = SamplingParams(temperature=1.0, top_k=5, seed=1)
    counts, root, draft = _tree_first_token_counts(tiny_engine, ids, params, trials=4000)
    assert sum(p == 0 for p in draft.parents) == 3 and not draft.is_chain
    assert _chi2(counts, root) < CRIT_4DOF


def test_negative_control_a_deterministic_tree_passed_off_as_sampled_is_caught(tiny_engine, ids):
    params = SamplingParams(temperature=1.0, top_k=5, seed=1)
    counts, root, _ = _tree_first_token_counts(tiny_engine, ids, params, trials=4000, claim_sampled=True)
    assert counts[root == 0].sum() > 0 or _chi2(counts, root) > CRIT_4DOF
