"""The pure parts of ``auto``'s choice (quickdraft/selection.py), against slow references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from quickdraft.drafters.pld import find_continuation
from quickdraft.selection import (
    AcceptanceStats, LatencyModel, best_size, match_bucket, match_length, node_features, path_scores, plausible,
    resolve,
)
from quickdraft.tree import children, depths
from quickdraft.verify import verify_tree_greedy


# ------------------------------------------------------------------ match length


def slow_match_length(tokens: list[int], max_n: int = 3, cap: int = 32) -> tuple[int, int]:
    """(match length, start of the continuation) by pld's rule, with plain loops."""
    total = len(tokens)
    for n in range(min(max_n, total - 1), 0, -1):
        for i in range(total - n - 1, -1, -1):  # most recent occurrence first, ending before the suffix
            if tokens[i: i + n] == tokens[total - n:]:
                length = n
                while length < cap and i - (length - n) - 1 >= 0 and \
                        tokens[i - (length - n) - 1] == tokens[total - length - 1]:
                    length += 1
                return length, i + n
    return 0, -1


def test_match_length_agrees_with_a_slow_reference_and_with_pld():
    rng = np.random.default_rng(0)
    for trial in range(300):
        vocab = int(rng.integers(2, 6))
        tokens = rng.integers(0, vocab, int(rng.integers(1, 60))).tolist()
        length, start = slow_match_length(tokens, cap=12)
        assert match_length(np.array(tokens), cap=12) == length
        if length:  # the continuation after that occurrence is what pld copies
            copied = find_continuation(np.array(tokens), min_n=1, max_n=3, k=4).tolist()
            assert copied == tokens[start: start + 4]


def test_match_length_of_copied_text_is_long():
    text = list(range(40))
    assert match_length(np.array(text + text[:20])) == 20
    assert match_length(np.array(text + text[:20]), cap=8) == 8
    assert match_length(np.array([1, 2, 3, 4])) == 0
    assert match_length(np.array([], dtype=np.int64)) == 0


def test_match_buckets_are_ordered_and_cover_everything():
    buckets = [match_bucket(n) for n in range(0, 100)]
    assert buckets[0] == 0 and buckets[1] == 1 and buckets == sorted(buckets) and max(buckets) == 7


# ------------------------------------------------------------------ trees and scores


def random_tree(rng, n: int) -> tuple[int, ...]:
    return tuple(int(rng.integers(0, i + 1)) for i in range(n))


def test_node_features_depth_and_rank():
    depth, rank = node_features((0, 0, 1, 1, 3))  # root: 1, 2; node 1: 3, 4; node 3: 5
    assert depth == depths((0, 0, 1, 1, 3))[1:]
    assert rank == [0, 1, 0, 1, 0]


def test_path_scores_are_monotone_and_siblings_never_sum_past_their_parent():
    rng = np.random.default_rng(1)
    for _ in range(200):
        parents = random_tree(rng, int(rng.integers(1, 25)))
        scores = path_scores(parents, rng.uniform(0, 1, len(parents)))
        full = [1.0, *scores]
        for node, kids in enumerate(children(parents)):
            assert sum(full[k] for k in kids) <= full[node] + 1e-12
            assert all(full[k] <= full[node] for k in kids)


def brute_force_best_rate(scores, parents, latency, draft_s) -> float:
    """The best tokens per second over every subtree (ancestor-closed node set), the empty one included."""
    n = len(parents)
    best = 1.0 / (draft_s + latency[0])
    for size in range(1, min(n, len(latency) - 1) + 1):
        for subset in itertools.combinations(range(1, n + 1), size):
            chosen = set(subset)
            if all(parents[i - 1] == 0 or parents[i - 1] in chosen for i in chosen):
                best = max(best, (1 + sum(scores[i - 1] for i in chosen)) / (draft_s + latency[size]))
    return best


def test_best_size_finds_the_best_subtree():
    rng = np.random.default_rng(2)
    for _ in range(60):
        parents = random_tree(rng, int(rng.integers(1, 9)))
        scores = path_scores(parents, rng.uniform(0, 1, len(parents)))
        base = float(rng.uniform(0.01, 0.05))
        latency = np.maximum.accumulate(base * (1 + rng.uniform(0, 0.3, 10).cumsum() * rng.uniform(0, 1)))
        draft_s = float(rng.uniform(0, 0.01))
        choice = best_size(scores, latency, draft_s=draft_s)
        assert choice.rate == pytest.approx(brute_force_best_rate(scores, parents, latency, draft_s))
        kept = set(choice.nodes)
        assert all(parents[i - 1] == 0 or parents[i - 1] in kept for i in kept), "a tree"


def test_best_size_plain_when_drafting_does_not_pay():
    assert best_size([0.5], [1.0, 2.0]).nodes == ()  # 1.5 tokens for 2 passes
    assert best_size([0.5], [1.0, 1.2]).nodes == (1,)
    assert best_size([0.5], [1.0, 1.2], margin=0.3).nodes == ()  # 1.25x is not 1.3x
    assert best_size([0.5], [1.0, 1.2], draft_s=5.0).nodes == (1,)  # sunk drafting time makes the pass relatively cheap
    assert best_size([], [1.0, 1.2]).nodes == ()
    assert best_size([0.9, 0.9], [1.0, 1.0, 1.0], max_nodes=1).nodes == (1,)


def test_resolve_matches_greedy_tree_verification():
    """With the target's argmax given by ``future``, resolve's accepted nodes are verify_tree_greedy's path."""
    rng = np.random.default_rng(3)
    vocab = 3
    for _ in range(300):
        parents = random_tree(rng, int(rng.integers(1, 12)))
        tokens = [int(t) for t in rng.integers(0, vocab, len(parents))]
        kids = children(parents)
        tokens = dedupe_siblings(tokens, kids, vocab)
        future = [int(t) for t in rng.integers(0, vocab, 14)]
        # target logits at each node: one-hot on the future token at the node's depth
        depth = depths(parents)
        logits = torch.full((len(parents) + 1, vocab), -5.0)
        for node in range(len(parents) + 1):
            logits[node, future[depth[node]]] = 5.0
        verdict = verify_tree_greedy(logits, tokens, parents)
        decided, done = resolve(tokens, parents, future)
        assert done
        assert [node for node, hit in decided if hit] == list(verdict.path)
        # every decided node's parent is on the accepted path (or the root)
        on_path = {0, *verdict.path}
        assert all(parents[node - 1] in on_path for node, _ in decided)


def dedupe_siblings(tokens, kids, vocab):
    tokens = list(tokens)
    for siblings in kids:
        seen = set()
        for child in siblings:
            while tokens[child - 1] in seen and len(seen) < vocab:
                tokens[child - 1] = (tokens[child - 1] + 1) % vocab
            seen.add(tokens[child - 1])
    return tokens


def test_resolve_waits_for_tokens_it_does_not_have_yet():
    decided, done = resolve((5, 6, 7), (0, 1, 2), [5, 6])
    assert decided == [(1, True), (2, True)] and not done
    decided, done = resolve((5, 6, 7), (0, 1, 2), [5, 6, 7])
    assert decided == [(1, True), (2, True), (3, True)] and done  # a leaf
    assert resolve((5,), (0,), []) == ([], False)


# ------------------------------------------------------------------ state


def test_acceptance_stats_learn_and_forget():
    stats = AcceptanceStats(sources=2, buckets=3, decay=0.9)
    prior = float(stats.estimate(1, 2, [3], [0])[0])
    for _ in range(60):
        stats.update(1, 2, 3, 0, True)
    assert stats.estimate(1, 2, [3], [0])[0] > 0.85  # about 10 updates remembered: (10 + 2 * 0.3) / 12
    assert stats.estimate(0, 2, [3], [0])[0] == pytest.approx(prior)  # other sources and cells untouched
    assert stats.estimate(1, 1, [3], [0])[0] == pytest.approx(prior)
    for _ in range(60):
        stats.update(1, 2, 3, 0, False)
    assert stats.estimate(1, 2, [3], [0])[0] < 0.1  # decayed counts follow a change
    # depths and ranks past the table share the last cell; memory stays fixed
    stats.update(0, 0, 1000, 50, True)
    assert stats.accepted.shape == (2, 3, stats.max_depth, stats.max_rank)


def test_latency_model_learns_scale_and_shape_and_resists_stalls():
    model = LatencyModel(lambda n: 0.02, max_nodes=16)  # a flat (wrong) profile
    for _ in range(50):
        model.record(0, 0.02)
        model.record(16, 0.04)  # 16 nodes really cost twice a plain step
    table = model.table()
    assert table[0] == pytest.approx(0.02, rel=0.05)
    assert table[16] == pytest.approx(0.04, rel=0.1)
    assert all(a <= b for a, b in zip(table, table[1:]))
    model.record(0, 2.0)  # one stall of 100x
    assert model.table()[0] < 0.03
    model.record(99, 1.0)  # sizes past the table are ignored
    model.record(0, 0.0)


def test_latency_model_follows_a_slower_machine():
    model = LatencyModel(lambda n: 0.01 * (1 + n / 32), max_nodes=8)
    for _ in range(200):
        model.record(0, 0.05)
    assert model.table()[0] == pytest.approx(0.05, rel=0.05)
    assert model.table()[8] > model.table()[0]  # unseen sizes follow the global correction


def test_contextual_latency_model_reads_the_prior_at_the_context():
    prior = lambda n, context=None: 0.01 * (1 + n / 16) * (1 + (context or 0) / 1000)  # noqa: E731
    model = LatencyModel(prior, max_nodes=16, contextual=True)
    short, long = model.table(context=100).copy(), model.table(context=2000).copy()
    assert long[16] / long[0] == pytest.approx(short[16] / short[0]) and long[0] > 2.5 * short[0]
    for _ in range(100):  # the machine is twice as slow as profiled, seen after long contexts
        model.record(0, 2 * prior(0, 2000), context=2000)
    assert model.table(context=100)[0] == pytest.approx(2 * prior(0, 100), rel=0.1)  # the correction carries over


def test_plausible_rejects_noise():
    assert plausible(lambda n: 0.021 + 0.0004 * n)
    assert not plausible(lambda n: 0.02 if n != 4 else 0.005)  # faster with more nodes
    assert not plausible(lambda n: 0.02 if n == 0 else 0.08)  # one node = four passes
    assert math.isfinite(LatencyModel(lambda n: 0.02, max_nodes=4).table()[4])


def test_acceptance_stats_borrow_from_the_level_above_until_a_cell_has_evidence():
    stats = AcceptanceStats(sources=1, buckets=1, base=0.3, rank_decay=0.5)
    for depth in range(1, 9):  # a source right all the way down to depth 8
        for _ in range(30):
            stats.update(0, 0, depth, 0, True)
    deep = stats.estimate(0, 0, [9, 20], [0, 0])
    assert (deep > 0.9).all()  # trusted deeper than it was ever seen
    assert stats.estimate(0, 0, [9], [1])[0] == pytest.approx(0.5 * deep[0])  # off the main line: less
    for _ in range(30):
        stats.update(0, 0, 9, 0, False)  # ...until evidence says the text stops there
    assert stats.estimate(0, 0, [9], [0])[0] < 0.2 and stats.estimate(0, 0, [12], [0])[0] < 0.3
