"""The adaptive n-gram drafter: table updates, tree growth, learning across requests."""

import numpy as np
import pytest
import torch

from quickdraft.drafters import Draft, DraftContext, StepOutcome
from quickdraft.errors import QuickdraftError
from quickdraft.drafters.ngram import NgramDrafter, NgramTable, best_first_tree
from quickdraft.tree import depths


def ctx(tokens, budget=16, nodes=None):
    return DraftContext(tokens=np.array(tokens, dtype=np.int64), prompt_len=len(tokens), budget=budget, nodes=nodes)


def test_learn_counts_bigrams_and_trigrams():
    table = NgramTable(decay=1.0)
    table.learn([1, 2, 3, 1, 2, 3, 1, 2, 4])
    assert table.successors((1, 2)) == [(3, 2.0), (4, 1.0)]
    assert table.successors((2,)) == [(3, 2.0), (4, 1.0)]
    assert table.successors((3,)) == [(1, 2.0)]
    assert table.successors((3, 1)) == [(2, 2.0)]
    assert table.successors((9,)) == []
    assert table.seen((1, 2)) == 3


def test_learn_continues_from_history():
    table = NgramTable(decay=1.0)
    table.learn([5], history=[3, 4])
    assert table.successors((3, 4)) == [(5, 1.0)] and table.successors((4,)) == [(5, 1.0)]


def test_decay_favours_the_recent_successor():
    table = NgramTable(decay=0.5)
    for token in (7, 7, 8):
        table.add((1,), token)
    # 7: (1 * 0.5 + 1) * 0.5 = 0.75; 8: 1
    assert table.successors((1,)) == [(8, 1.0), (7, 0.75)]


def test_successors_per_context_are_capped_space_saving():
    table = NgramTable(max_successors=2, decay=1.0)
    table.add((1,), 10, 3.0)
    table.add((1,), 11, 1.0)
    table.add((1,), 12, 1.0)  # replaces the weakest (11) and inherits its weight
    assert table.successors((1,)) == [(10, 3.0), (12, 2.0)]


def test_contexts_are_capped_least_recently_updated_first():
    table = NgramTable(max_contexts=2, decay=1.0)
    table.add((1,), 5)
    table.add((2,), 5)
    table.add((1,), 6)  # (1,) is now the most recent
    table.add((3,), 5)  # evicts (2,)
    assert len(table) == 2
    assert table.successors((2,)) == [] and table.successors((1,)) and table.successors((3,))


def test_predict_smooths_the_trigram_toward_the_bigram():
    table = NgramTable(decay=1.0)
    table.add((2,), 3, 3.0)
    table.add((2,), 4, 1.0)
    table.add((1, 2), 4, 1.0)
    # p(4) = (1 + 0.25) / 2, p(3) = (0 + 0.75) / 2
    assert table.predict(1, 2) == [(4, 0.625), (3, 0.375)]
    assert table.predict(9, 2) == [(3, 0.75), (4, 0.25)]  # unseen trigram: the bigram
    assert table.predict(None, 2) == [(3, 0.75), (4, 0.25)]
    assert table.predict(1, 7) == []


def probs_from(table):
    return lambda a, b: table.get((a, b), [])


def test_best_first_picks_the_most_probable_paths():
    table = {(0, 1): [(2, 0.6), (3, 0.4)], (1, 2): [(4, 0.5), (5, 0.5)], (1, 3): [(6, 1.0)], (3, 6): [(7, 0.1)]}
    tokens, parents = best_first_tree((0, 1), probs_from(table), nodes=10, max_depth=5)
    # path probs: 2 .6, 3 .4, 3-6 .4, 2-4 .3, 2-5 .3, 3-6-7 .04
    assert tokens == [2, 3, 6, 4, 5, 7]
    assert parents == [0, 0, 2, 1, 1, 3]


def test_best_first_respects_nodes_depth_width_and_min_prob():
    table = {(0, 1): [(2, 0.6), (3, 0.4)], (1, 2): [(4, 0.5), (5, 0.5)], (1, 3): [(6, 1.0)], (3, 6): [(7, 0.1)]}
    assert best_first_tree((0, 1), probs_from(table), nodes=3, max_depth=5) == ([2, 3, 6], [0, 0, 2])
    tokens, parents = best_first_tree((0, 1), probs_from(table), nodes=10, max_depth=1)
    assert tokens == [2, 3] and max(depths(parents)) == 1
    assert best_first_tree((0, 1), probs_from(table), nodes=10, max_depth=5, width=1)[0] == [2, 4]
    assert best_first_tree((0, 1), probs_from(table), nodes=10, max_depth=5, min_prob=0.35)[0] == [2, 3, 6]
    assert best_first_tree((0, 1), probs_from(table), nodes=0, max_depth=5) == ([], [])
    assert best_first_tree((0, 9), probs_from(table), nodes=5, max_depth=5) == ([], [])


def test_a_smaller_budget_gives_a_prefix_of_the_larger_tree():
    rng = np.random.default_rng(0)
    table = NgramTable(decay=1.0)
    table.learn(rng.integers(0, 6, 400).tolist())
    big = best_first_tree((1, 2), table.predict, nodes=30, max_depth=8)
    for m in (1, 5, 17):
        small = best_first_tree((1, 2), table.predict, nodes=m, max_depth=8)
        assert small == (big[0][:m], big[1][:m])


def test_drafter_learns_the_prompt_and_keeps_stats_across_requests():
    drafter = NgramDrafter(nodes=4, explore=0.0, min_prob=0.0, decay=1.0)
    draft = drafter.propose(ctx([1, 2, 3, 4, 1, 2]))
    assert draft.tokens[:3] == (3, 4, 1) and draft.parents[:3] == (0, 1, 2)
    drafter.reset()  # a new request: the statistics stay
    draft = drafter.propose(ctx([9, 3]))
    assert draft.tokens[0] == 4


def test_drafter_caps_depth_by_the_engine_budget_and_nodes_by_the_hint():
    drafter = NgramDrafter(nodes=10, explore=0.0, min_prob=0.0)
    assert max(depths(drafter.propose(ctx([1, 2, 3, 1, 2, 3, 1, 2], budget=2)).parents)) <= 2
    drafter.reset()
    assert len(drafter.propose(ctx([1, 2, 3, 1, 2, 3, 1, 2], nodes=3))) == 3
    drafter.reset()
    assert len(drafter.propose(ctx([1, 2, 3, 1, 2], budget=0))) == 0


def test_observe_learns_emitted_tokens_and_the_targets_argmax_at_rejected_nodes():
    drafter = NgramDrafter(nodes=4, explore=0.0, min_prob=0.0, decay=1.0, target_weight=0.5)
    drafter.propose(ctx([5, 6]))  # nothing known yet: empty draft
    assert drafter.table.successors((6,)) == []
    # a hand-made tree under root 6: nodes 1 (token 7) and 2 (token 8); the target says 9 after 8, 7 after 6
    draft = Draft(tokens=(7, 8), parents=(0, 0))
    logits = torch.eye(12)[[7, 3, 9]]  # argmax at root, node 1, node 2
    drafter.observe(StepOutcome(draft=draft, path=(1,), tokens=(7, 3), target_logits=logits))
    assert drafter.table.successors((6, 7)) == [(3, 1.0)]  # emitted: 7 then 3
    assert drafter.table.successors((6, 8)) == [(9, 0.5)]  # rejected node 2: the target's argmax, half weight
    assert drafter.table.successors((8,)) == [(9, 0.5)]
    assert drafter.table.successors((7, 3)) == []


def test_observe_stops_learning_at_eos():
    drafter = NgramDrafter(nodes=4, decay=1.0, eos_ids=frozenset({0}))
    drafter.propose(ctx([5, 6]))
    drafter.observe(StepOutcome(draft=Draft(), path=(), tokens=(0,), target_logits=torch.zeros(1, 3)))
    assert drafter.table.successors((6,)) == [(0, 1.0)]
    assert drafter.table.successors((0,)) == []


def test_exploration_bonus_prefers_little_known_contexts():
    drafter = NgramDrafter(nodes=8, explore=0.5, min_prob=0.0)
    drafter.table.add((1,), 2)
    boosted = dict(drafter._predict(None, 1))[2]
    assert boosted == pytest.approx(1.0)
    drafter.table.add((3,), 4)
    drafter.table.add((3,), 5)
    once = drafter._predict(None, 3)
    assert all(p > 0.5 for _, p in once)  # plain estimates 0.5-ish plus a bonus


@pytest.mark.parametrize("bad", [dict(nodes=0), dict(max_depth=0), dict(decay=0.0), dict(explore=-1)])
def test_bad_settings_raise(bad):
    with pytest.raises(ValueError):
        NgramDrafter(**bad)


# ---------------------------------------------------------------- a prior from a datastore


def test_learn_documents_does_not_learn_across_separators():
    table = NgramTable(decay=1.0)
    table.learn_documents(np.array([1, 2, 3, -1, 2, 3, -1, 4], dtype=np.int32), weight=0.5)
    assert table.successors((1, 2)) == [(3, 0.5)]
    assert table.successors((2,)) == [(3, 1.0)]
    assert table.successors((3,)) == []  # 3 ends two documents: nothing follows it
    assert table.successors((4,)) == [] and len(table) == 3


def test_ngram_prior_option(tiny_engine, tmp_path):
    """prior: a datastore's documents at prior_weight; 'none' and a model without a shipped one: empty."""
    from quickdraft.drafters import BuildContext, get_method
    from tests.conftest import make_datastore

    path = make_datastore(tiny_engine, ["abc abd abc abd"], tmp_path / "ds")
    ids = tiny_engine.tokenizer.encode("abc abd abc abd", add_special_tokens=False)

    def build(**options):
        return get_method("ngram").build(BuildContext(target=tiny_engine.target, options=options))

    learned = build(prior=str(path), prior_weight=0.25)
    reference = NgramTable(decay=1.0)  # the prior's counts do not decay
    reference.learn(ids, weight=0.25)
    assert learned.table.decay == 0.9  # ... what the request teaches does
    assert len(learned.table) == len(reference) > 0
    assert learned.table.successors((ids[0], ids[1])) == reference.successors((ids[0], ids[1]))
    assert len(build(prior="none").table) == 0
    assert len(build().table) == 0  # the default, "shipped": none is shipped for the tiny model
    with pytest.raises(QuickdraftError, match="not a quickdraft datastore"):
        build(prior=str(tmp_path))
    with pytest.raises(QuickdraftError, match="prior must be 'shipped', 'none' or a datastore directory"):
        build(prior="")
    with pytest.raises(ValueError, match="prior_weight must be positive"):
        build(prior=str(path), prior_weight=-1)


def test_order_four_learns_three_token_contexts_and_smooths_down():
    table = NgramTable(decay=1.0, order=4)
    table.learn([1, 2, 3, 4, 9, 2, 3, 5, 1, 2, 3, 4])
    assert table.successors((1, 2, 3)) == [(4, 2.0)]
    assert table.successors((2, 3)) == [(4, 2.0), (5, 1.0)]
    # the 4-gram (1, 2, 3) -> 4 twice, smoothed toward the trigram (2, 3): 4 2/3, 5 1/3
    assert [(t, round(p, 4)) for t, p in table.predict_after((1, 2, 3))] == [(4, round((2 + 2 / 3) / 3, 4)),
                                                                         (5, round((1 / 3) / 3, 4))]
    # an unseen 4-gram context keeps the trigram estimate; a None in front shortens the context
    assert table.predict_after((7, 2, 3)) == table.predict_after((None, 2, 3)) == table.predict(2, 3)
    assert NgramTable(order=3).predict_after((1, 2, 3)) == []  # nothing learned
    three = NgramTable(decay=1.0, order=3)
    three.learn([1, 2, 3, 4])
    assert three.successors((1, 2, 3)) == [] and three.successors((2, 3)) == [(4, 1.0)]
    with pytest.raises(ValueError, match="order"):
        NgramTable(order=1)


def test_drafter_uses_the_longer_context():
    # after (1, 2, 3) comes 4; after (8, 2, 3) comes 5: a trigram (2, 3) alone cannot tell
    tokens = [1, 2, 3, 4, 0, 8, 2, 3, 5, 0, 1, 2, 3, 4, 0, 8, 2, 3, 5, 0, 1, 2, 3]
    four = NgramDrafter(nodes=1, explore=0.0, min_prob=0.0, decay=1.0, order=4)
    assert four.propose(ctx(tokens)).tokens == (4,)
    assert four.propose(ctx(tokens[:-3] + [8, 2, 3])).tokens == (5,)


def test_target_argmax_is_learned_for_every_context_length():
    drafter = NgramDrafter(nodes=4, explore=0.0, min_prob=0.0, decay=1.0, target_weight=0.5, order=4)
    drafter.propose(ctx([4, 5, 6]))
    draft = Draft(tokens=(7, 8), parents=(0, 1))  # a chain 6 -> 7 -> 8; the target rejects 7 (wants 3)
    logits = torch.eye(12)[[3, 9, 10]]
    drafter.observe(StepOutcome(draft=draft, path=(), tokens=(3,), target_logits=logits))
    assert drafter.table.successors((5, 6, 7)) == [(9, 0.5)]  # node 7: the target's argmax after it
    assert drafter.table.successors((6, 7, 8)) == [(10, 0.5)] and drafter.table.successors((8,)) == [(10, 0.5)]
