"""The goodput planner (SmartSpec) on synthetic statistics, and the llama.cpp pass shapes it prices."""

from __future__ import annotations

import pytest

from quickdraft.backends.llamacpp_batch import PassCost, ubatch_sizes
from quickdraft.goodput import AcceptanceRate, expected_committed, plan_drafts


def linear(fixed: float, per_row: float):
    return lambda rows: fixed + per_row * sum(rows)


def test_a_request_with_zero_acceptance_gets_no_draft_under_load():
    ks = plan_drafts([0.9, 0.0, 0.8, 0.0], [6, 6, 6, 6], linear(0.030, 0.002))
    assert ks[1] == 0 and ks[3] == 0
    assert ks[0] > 0 and ks[2] > 0


def test_alone_drafting_is_chosen_where_it_pays():
    assert plan_drafts([0.8], [8], linear(0.010, 0.001))[0] > 0
    assert plan_drafts([0.05], [8], linear(0.010, 0.001)) == (0,)


def test_the_budget_follows_the_cost_curve():
    rates, offered = [0.7] * 6, [8] * 6
    cheap = plan_drafts(rates, offered, linear(0.050, 0.0005))  # rows almost free: long drafts
    dear = plan_drafts(rates, offered, linear(0.005, 0.007))  # a row costs more than a plain step's share
    assert sum(cheap) > sum(dear) and sum(dear) == 0
    # speculation shrinks as the batch grows
    sizes = [sum(plan_drafts([0.7] * n, [8] * n, linear(0.010, 0.004))) / n for n in (1, 2, 4, 8, 16)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]


def test_the_plan_is_the_best_of_every_uniform_choice():
    """Brute force over all plans on a small case: the planner's value is at least as good as any uniform
    length for the best m requests, and never worse than plain steps."""
    import itertools

    rates, offered, cost = [0.9, 0.5, 0.2], [3, 2, 3], linear(0.010, 0.004)

    def value(ks):
        return sum(expected_committed(r, k) for r, k in zip(rates, ks)) / cost(tuple(1 + k for k in ks))

    best = plan_drafts(rates, offered, cost)
    assert all(k <= o for k, o in zip(best, offered))
    every = max(value(ks) for ks in itertools.product(*(range(o + 1) for o in offered)))
    assert value(best) >= 0.97 * every and value(best) >= value((0, 0, 0))


def test_an_infinite_cost_is_never_chosen():
    inf = float("inf")
    ks = plan_drafts([1.0, 1.0], [8, 8], lambda rows: inf if sum(rows) > 4 else 0.01 + 0.0001 * sum(rows))
    assert sum(ks) + 2 <= 4


def test_acceptance_rate_tracks_recent_steps():
    rate = AcceptanceRate()
    assert rate.value == 0.5
    for _ in range(30):
        rate.record(4, 4)
    assert rate.value > 0.9
    for _ in range(30):
        rate.record(4, 0)
    assert rate.value < 0.2
    rate.record(0, 0)  # a plain step says nothing
    with pytest.raises(ValueError):
        plan_drafts([0.5], [1, 2], linear(1, 1))


def test_ubatch_sizes_mirror_llama_cpp_split_equal():
    assert ubatch_sizes([(0, 1), (1, 1), (2, 1)], 512) == [3]
    assert ubatch_sizes([(0, 3), (1, 1), (2, 3)], 512) == [3, 2, 2]  # the plain request ends the first run
    assert ubatch_sizes([(0, 2), (1, 2)], 3) == [2, 2]  # at most n_ubatch rows
    assert ubatch_sizes([], 512) == []


def test_pass_cost_learns_a_slower_machine():
    cost = PassCost(0.004, 0.006, n_ubatch=512)
    rows = [(0, 1), (1, 1)]
    assert cost(rows) == pytest.approx(0.016)
    assert cost([(0, 1), (2, 1)]) == pytest.approx(0.020)  # two ubatches: the fixed part twice
    for _ in range(100):
        cost.record(rows, 0.032)
    assert cost(rows) == pytest.approx(0.032, rel=0.05)
