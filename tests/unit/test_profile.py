"""Hardware-aware node budgets: the pure choice on synthetic profiles, the profile cache, the adaptive budget."""

import json
import math
import random

import pytest

from quickdraft.profile import LatencyProfile, load_or_measure, measure_latency, profile_key
from quickdraft.sizing import (
    CANDIDATES, AdaptiveNodeBudget, accepted_within, choose_node_budget, node_budget, prior_expected_accepted,
)

# Shapes like the ones measured on this CPU (docs: ../shared/MODELS.md), in seconds per verify pass.
BF16 = LatencyProfile(key=None, nodes=(0, 4, 8, 16, 32, 64), seconds=(0.021, 0.022, 0.023, 0.027, 0.035, 0.050))
FP32 = LatencyProfile(key=None, nodes=(0, 4, 8, 16, 32, 64), seconds=(0.288, 0.528, 0.510, 0.694, 0.935, 1.500))
PRIOR = [prior_expected_accepted(n) for n in range(65)]


def test_cheap_wide_verification_gets_a_bigger_tree():
    wide = choose_node_budget(BF16.latency, PRIOR)
    narrow = choose_node_budget(FP32.latency, PRIOR)
    assert wide > narrow
    assert wide == 12 and narrow == 8


def test_the_choice_maximises_tokens_per_second():
    expected = [min(n, 5) * 0.4 for n in range(65)]
    best = choose_node_budget(BF16.latency, expected)
    rates = {n: (1 + expected[n]) / BF16.latency(n) for n in CANDIDATES}
    assert rates[best] == max(rates.values())


def test_flat_latency_takes_the_largest_and_ties_take_the_smallest():
    flat = lambda n: 1.0  # noqa: E731
    assert choose_node_budget(flat, PRIOR) == 64
    assert choose_node_budget(flat, [0.0] * 65) == 1  # nothing is ever accepted: all equal, smallest wins


def test_every_node_costing_a_pass_makes_one_node_best():
    assert choose_node_budget(lambda n: 1.0 + n, PRIOR) == 1


def test_candidates_without_estimates_are_skipped():
    assert choose_node_budget(lambda n: 1.0, [0, 1, 2, 3, 4], candidates=(2, 4, 8, 16)) == 4
    with pytest.raises(ValueError):
        choose_node_budget(lambda n: 1.0, [0, 1], candidates=(4, 8))


def test_profile_interpolates_and_extrapolates():
    p = LatencyProfile(key=None, nodes=(0, 8, 16), seconds=(1.0, 2.0, 4.0))
    assert p.latency(0) == 1.0 and p.latency(4) == pytest.approx(1.5) and p.latency(12) == pytest.approx(3.0)
    assert p.latency(32) == pytest.approx(8.0)  # the last slope continues
    dip = LatencyProfile(key=None, nodes=(0, 8, 16), seconds=(2.0, 1.0, 3.0))
    assert dip.fitted == (1.5, 1.5, 3.0)  # a bigger pass never costs less: noise is pooled away
    assert dip.latency(4) == 1.5 and dip.latency(12) == pytest.approx(2.25)


def test_profile_json_round_trip_and_version_check():
    p = LatencyProfile(key=None, nodes=(0, 1), seconds=(0.5, 0.6), quiet=False)
    assert LatencyProfile.from_json(json.loads(json.dumps(p.to_json()))) == p
    with pytest.raises(ValueError):
        LatencyProfile.from_json({**p.to_json(), "version": 0})


def test_accepted_within_counts_the_path_prefix_inside_the_cut():
    assert [accepted_within((1, 3, 6), m) for m in range(8)] == [0, 1, 1, 2, 2, 2, 3, 3]
    assert accepted_within((), 10) == 0


def test_adaptive_budget_grows_when_deep_trees_pay_off():
    budget = AdaptiveNodeBudget(BF16.latency)
    for _ in range(200):
        n = budget.next_budget()
        budget.record(n, path=tuple(range(1, min(n, 12) + 1)))  # the first 12 nodes are always right
    assert budget.choice() == 12  # the smallest candidate holding them all


def test_adaptive_budget_shrinks_when_nothing_is_accepted():
    budget = AdaptiveNodeBudget(FP32.latency)
    start = budget.choice()
    for _ in range(200):
        budget.record(budget.next_budget(), path=())
    assert budget.choice() == 1 < start


def test_adaptive_budget_estimate_never_falls_as_the_tree_grows():
    # Steps of many budgets and stretches (a draft's first m nodes hold its first m - 1, so what m
    # nodes accept cannot fall as m grows; the estimate must not either)
    rng = random.Random(0)
    budget = AdaptiveNodeBudget(BF16.latency)
    for _ in range(400):
        n = rng.choice(CANDIDATES)
        easy = rng.random() < 0.3
        path = tuple(sorted(rng.sample(range(1, n + 1), min(n, rng.randint(0, 8 if easy else 2)))))
        budget.record(n, path=path)
    expected = budget.expected
    assert all(b >= a for a, b in zip(expected, expected[1:]))
    assert expected[1] > 0 and expected[-1] > expected[1]


def test_adaptive_budget_estimates_what_the_first_m_nodes_accepted():
    # with (almost) no prior, the estimate for m nodes is the mean of what the first m nodes accepted
    budget = AdaptiveNodeBudget(lambda n: 1.0, candidates=(1, 2, 4), prior_weight=1e-9)
    for path in [(1, 3), (), (1, 3), ()]:  # nodes 1 and 3 accepted (node 2 a rejected sibling), then nothing
        budget.record(4, path=path)
    assert [round(x, 6) for x in budget.expected] == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert [sum(accepted_within(p, m) for p in [(1, 3), ()]) / 2 for m in range(5)] == [0.0, 0.5, 0.5, 1.0, 1.0]


def test_adaptive_budget_probes_one_size_up():
    budget = AdaptiveNodeBudget(lambda n: 1.0 + n, probe_every=4)  # steep: the choice is 1
    sizes = []
    for _ in range(8):
        sizes.append(budget.next_budget())
        budget.record(sizes[-1], path=())
    assert sizes == [1, 1, 1, 2, 1, 1, 1, 2]


def test_node_budget_without_a_model_is_the_default():
    assert node_budget(None, default=7) == 7


def test_profile_cache_is_read_back_and_keyed(tiny_engine, tmp_path):
    target = tiny_engine.target
    key = profile_key(target)
    stored = LatencyProfile(key=key, nodes=(0, 64), seconds=(1.0, 1.0))
    (tmp_path / key.filename()).write_text(json.dumps(stored.to_json()))
    assert load_or_measure(target, directory=tmp_path) == stored  # a cached, quiet profile is used as is
    # a file whose key does not match (another machine, say) is measured again and replaced
    other = LatencyProfile(key=key.__class__(**{**key.__dict__, "machine": "elsewhere"}), nodes=(0, 64),
                           seconds=(1.0, 1.0))
    (tmp_path / key.filename()).write_text(json.dumps(other.to_json()))
    measured = load_or_measure(target, directory=tmp_path)
    assert measured.key == key and measured.nodes == (0, 1, 2, 4, 8, 16, 32, 64)
    assert LatencyProfile.from_json(json.loads((tmp_path / key.filename()).read_text())) == measured


def test_measure_latency_times_every_size(tiny_engine):
    p = measure_latency(tiny_engine.target, nodes=(0, 3, 9), budget_s=0.0)
    assert p.nodes == (0, 3, 9) and all(s > 0 and math.isfinite(s) for s in p.seconds)
    room = tiny_engine.target.max_context - 9 - 2  # the long context fits the model's window with the largest tree
    assert p.context == 128 and p.long_context == min(1024, room) and all(s > 0 for s in p.long_seconds)


def test_latency_grows_linearly_with_the_context():
    p = LatencyProfile(key=None, nodes=(0, 8, 16), seconds=(1.0, 2.0, 3.0), context=100, long_context=200,
                       long_seconds=(2.0, 4.0, 3.5))  # a noisy dip at 16 nodes is smoothed out
    assert p.per_token == pytest.approx((0.01, 0.0175, 0.0175))  # slopes never fall with the size
    assert p.latency(8) == p.latency(8, context=100) == 2.0
    assert p.latency(8, context=300) == pytest.approx(5.5) and p.latency(4, context=150) == pytest.approx(2.1875)
    assert p.latency(16, context=0) == p.latency(16) == 3.0  # shorter contexts: the measured time
    assert LatencyProfile.from_json(json.loads(json.dumps(p.to_json()))) == p
    flat = LatencyProfile(key=None, nodes=(0, 8), seconds=(1.0, 2.0))  # one context measured: it does not matter
    assert flat.latency(8, context=5000) == 2.0


def test_adaptive_budget_shrinks_trees_after_long_contexts():
    p = LatencyProfile(key=None, nodes=(0, 4, 8, 16, 32, 64), seconds=(0.021, 0.022, 0.023, 0.027, 0.035, 0.050),
                       context=128, long_context=1024, long_seconds=(0.030, 0.032, 0.036, 0.048, 0.075, 0.130))
    budget = AdaptiveNodeBudget(p.latency)
    assert budget.choice(context=4000) < budget.choice(context=128) == budget.choice()


def test_profile_command_measures_once_and_prints_the_table(tiny_dir, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from quickdraft.cli import main

    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path))
    args = ["profile", "--model", str(tiny_dir), "--dtype", "float32"]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("draft nodes   ms/pass   x plain"))
    assert lines[header - 2].startswith(tiny_dir.name + " (float32, ")
    assert lines[header - 1].startswith("after 128 cached tokens, and after ")
    assert [line.split()[0] for line in lines[header + 1: header + 9]] == ["0", "1", "2", "4", "8", "16", "32", "64"]
    assert lines[-1].startswith("node budget before acceptance statistics: ")
    saved = list((tmp_path / "profiles").glob("*.json"))
    assert len(saved) == 1
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and list((tmp_path / "profiles").glob("*.json")) == saved
