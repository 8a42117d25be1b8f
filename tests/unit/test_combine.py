"""Combined methods: merging drafts, each part's view of the step, and the registry's a+b names."""

import numpy as np
import pytest
import torch

from quickdraft import QuickdraftError
from quickdraft.drafters import Draft, DraftContext, Drafter, StepOutcome, get_method
from quickdraft.drafters.combine import Combined, merge_drafts, part_view


def test_merge_shares_prefixes_and_stops_a_part_at_the_budget():
    a = Draft(tokens=(1, 2, 3))
    b = Draft(tokens=(1, 4, 5, 6), parents=(0, 1, 2, 0))  # 1-4-5 and 6
    merged, maps = merge_drafts([a, b], budget=5)
    assert merged.tokens == (1, 2, 3, 4, 5) and merged.parents == (0, 1, 2, 1, 4)
    assert maps == [[0, 1, 2, 3], [0, 1, 4, 5]]  # b's last node (6) did not fit: a prefix is placed
    merged, maps = merge_drafts([a, Draft()], budget=2)
    assert merged.tokens == (1, 2) and maps == [[0, 1, 2], [0]]


def test_merged_chains_stay_chains():
    merged, _ = merge_drafts([Draft(tokens=(1, 2)), Draft(tokens=(1, 2, 3))], budget=10)
    assert merged.tokens == (1, 2, 3) and merged.is_chain


def coded_logits(n):
    """Row i is one-hot on i, so a gathered row tells which merged node it came from."""
    return torch.eye(n + 1, 16)


def test_view_of_a_part_whose_path_was_accepted():
    merged, maps = merge_drafts([Draft(tokens=(1, 2)), Draft(tokens=(7, 8), parents=(0, 0))], budget=8)
    # merged: 1 (node 1), 2 (node 2), 7 (node 3), 8 (node 4); the target accepted 7
    outcome = StepOutcome(draft=merged, path=(3,), tokens=(7, 9), target_logits=coded_logits(4))
    view = part_view(outcome, Draft(tokens=(7, 8), parents=(0, 0)), maps[1])
    assert view.draft.tokens == (7, 8) and view.path == (1,) and view.tokens == (7, 9)
    assert view.target_logits.argmax(-1).tolist() == [0, 3, 4]


def test_view_appends_the_accepted_nodes_a_part_lacked():
    merged, maps = merge_drafts([Draft(tokens=(1, 2, 3)), Draft(tokens=(1, 5), parents=(0, 0))], budget=8)
    # merged: 1, 2, 3, 5 (nodes 1-4); accepted 1, 2, 3 (the first part's chain)
    outcome = StepOutcome(draft=merged, path=(1, 2, 3), tokens=(1, 2, 3, 6), target_logits=coded_logits(4))
    view = part_view(outcome, Draft(tokens=(1, 5), parents=(0, 0)), maps[1])
    assert view.draft.tokens == (1, 5, 2, 3) and view.draft.parents == (0, 0, 1, 3)
    assert view.path == (1, 3, 4) and len(view.path) + 1 == len(view.tokens)
    assert view.target_logits.argmax(-1).tolist() == [0, 1, 4, 2, 3]
    first = part_view(outcome, Draft(tokens=(1, 2, 3)), maps[0])
    assert first.draft.tokens == (1, 2, 3) and first.path == (1, 2, 3)
    assert first.target_logits.data_ptr() == outcome.target_logits.data_ptr()  # a slice, not a copy


def test_view_extends_draft_probabilities_with_one_hot_rows():
    probs = torch.full((1, 16), 1 / 16)
    part = Draft(tokens=(4,), draft_probs=probs)
    merged, maps = merge_drafts([Draft(tokens=(1, 2)), part], budget=8)
    outcome = StepOutcome(draft=merged, path=(1, 2), tokens=(1, 2, 0), target_logits=coded_logits(3))
    view = part_view(outcome, part, maps[1])
    assert view.draft.tokens == (4, 1, 2)
    assert torch.equal(view.draft.draft_probs[0], probs[0])
    assert view.draft.draft_probs[1:].argmax(-1).tolist() == [1, 2] and view.draft.draft_probs[1:].sum() == 2


class Fixed(Drafter):
    """Proposes a fixed draft and records what it observes and the node hints it got."""

    def __init__(self, draft):
        self.draft, self.seen, self.hints, self.resets = draft, [], [], 0

    def propose(self, context):
        self.hints.append(context.nodes)
        return self.draft

    def observe(self, outcome):
        self.seen.append(outcome)

    def reset(self):
        self.resets += 1


def test_combined_drafter_merges_hints_and_reports_back():
    a, b = Fixed(Draft(tokens=(1, 2, 3))), Fixed(Draft(tokens=(4, 5), parents=(0, 0)))
    combined = Combined([("a", a), ("b", b)], nodes=4)
    ctx = DraftContext(tokens=np.array([0]), prompt_len=1, budget=10)
    draft = combined.propose(ctx)
    assert draft.tokens == (1, 2, 3, 4) and a.hints == [4] and b.hints == [1]
    combined.observe(StepOutcome(draft=draft, path=(4,), tokens=(4, 7), target_logits=coded_logits(4)))
    assert a.seen[0].path == (4,) and a.seen[0].draft.tokens == (1, 2, 3, 4)  # appended for a
    assert b.seen[0].path == (1,) and b.seen[0].draft.tokens == (4,)  # b's 5 did not fit
    combined.reset()
    assert a.resets == b.resets == 1


class Extra(Drafter):
    """Drafts 1 -> 2 with two extra inputs chained under node 2, then remembers what it saw."""

    def __init__(self):
        self.seen = []

    def propose(self, context):
        return Draft(tokens=(1, 2), extra_embeds=torch.arange(8.0).view(2, 4), extra_parents=(2, 3))

    def observe(self, outcome):
        self.seen.append(outcome)


def test_extra_inputs_ride_along_in_a_combination():
    extra = Extra()
    combined = Combined([("pld", Fixed(Draft(tokens=(5, 6)))), ("extra", extra)], nodes=8)
    draft = combined.propose(DraftContext(tokens=np.array([0]), prompt_len=1, budget=8))
    # merged: 5 (1), 6 (2), 1 (3), 2 (4); the extras hang on node 4 ("2"), then on the first extra (node 5)
    assert draft.tokens == (5, 6, 1, 2) and draft.parents == (0, 1, 0, 3)
    assert draft.extra_parents == (4, 5) and torch.equal(draft.extra_embeds, torch.arange(8.0).view(2, 4))
    extra_logits = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    combined.observe(StepOutcome(draft=draft, path=(1, 2), tokens=(5, 6, 9), target_logits=coded_logits(4),
                                 extra_logits=extra_logits))
    view = extra.seen[0]  # its own numbering: 1 (1), 2 (2), then the accepted 5 (3), 6 (4); extras nodes 5, 6
    assert view.draft.tokens == (1, 2, 5, 6) and view.draft.parents == (0, 1, 0, 3) and view.path == (3, 4)
    assert view.draft.extra_parents == (2, 5) and torch.equal(view.extra_logits, extra_logits)


def test_extras_of_an_unplaced_node_are_dropped():
    extra = Extra()
    combined = Combined([("pld", Fixed(Draft(tokens=(5, 6, 7)))), ("extra", extra)], nodes=4)
    draft = combined.propose(DraftContext(tokens=np.array([0]), prompt_len=1, budget=8))
    assert draft.tokens == (5, 6, 7, 1) and draft.extra_embeds is None and draft.extra_parents is None
    combined.observe(StepOutcome(draft=draft, path=(), tokens=(3,), target_logits=coded_logits(4)))
    assert extra.seen[0].extra_logits is None and extra.seen[0].draft.extra_parents is None


def test_registry_parses_combined_names():
    spec = get_method("pld+recycle")
    assert spec.name == "pld+recycle" and spec.lossless
    for bad, message in [("pld+", "empty"), ("pld+pld", "twice"), ("pld+nope", "unknown method 'nope'")]:
        with pytest.raises(QuickdraftError, match=message):
            get_method(bad)


def test_engine_runs_a_combined_method(tiny_engine):
    r = tiny_engine.generate("abcabcabc", method="pld+recycle", max_new_tokens=12, chat=False)
    plain = tiny_engine.generate("abcabcabc", method="ar", max_new_tokens=12, chat=False)
    assert r.token_ids == plain.token_ids and r.method == "pld+recycle"


def test_view_carries_the_verifiers_argmax_row_for_row():
    """The argmax the verifier computed (StepOutcome.target_argmax) follows the gathered logits rows."""
    from quickdraft.verify import verify_tree_greedy

    merged, maps = merge_drafts([Draft(tokens=(1, 2, 3)), Draft(tokens=(1, 5), parents=(0, 0))], budget=8)
    logits = coded_logits(4)
    verdict = verify_tree_greedy(logits, list(merged.tokens), merged.parents)
    assert verdict.best == tuple(logits.argmax(-1).tolist())
    outcome = StepOutcome(draft=merged, path=verdict.path, tokens=verdict.tokens, target_logits=logits,
                          target_argmax=verdict.best)
    for part, node_of in zip([Draft(tokens=(1, 2, 3)), Draft(tokens=(1, 5), parents=(0, 0))], maps):
        view = part_view(outcome, part, node_of)
        assert view.target_argmax is not None
        assert view.argmax == tuple(view.target_logits.argmax(-1).tolist())
