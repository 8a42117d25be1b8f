import numpy as np

from quickdraft.drafters import DraftContext, PromptLookup, find_continuation


def fc(tokens, **kw):
    return find_continuation(np.array(tokens, dtype=np.int64), **kw).tolist()


def test_longest_n_wins_over_a_more_recent_shorter_match():
    # suffix [1, 2]: the bigram match at 0 beats the more recent unigram match of 2 at 5
    tokens = [1, 2, 7, 8, 9, 2, 5, 1, 2]
    assert fc(tokens, min_n=1, max_n=2, k=3) == [7, 8, 9]


def test_most_recent_match_wins_among_equal_lengths():
    tokens = [4, 5, 1, 4, 5, 2, 4, 5]
    assert fc(tokens, min_n=1, max_n=2, k=1) == [2]


def test_no_match_proposes_nothing():
    assert fc([1, 2, 3, 4], min_n=1, max_n=3, k=5) == []
    assert fc([9], min_n=1, max_n=3, k=5) == []
    assert fc([], min_n=1, max_n=3, k=5) == []


def test_min_n_is_respected():
    assert fc([1, 2, 3, 9, 3], min_n=2, max_n=3, k=2) == []
    assert fc([1, 2, 3, 9, 3], min_n=1, max_n=3, k=2) == [9, 3]


def test_continuation_is_capped_at_k_and_at_the_end_of_the_context():
    tokens = [1, 2, 3, 4, 5, 6, 1, 2]
    assert fc(tokens, min_n=1, max_n=2, k=2) == [3, 4]
    assert fc(tokens, min_n=1, max_n=2, k=100) == [3, 4, 5, 6, 1, 2]
    assert fc(tokens, min_n=1, max_n=2, k=0) == []


def test_repetition_overlapping_the_suffix():
    assert fc([7, 7, 7], min_n=1, max_n=2, k=4) == [7]


def test_drafter_caps_k_at_the_budget():
    drafter = PromptLookup(min_n=1, max_n=2, k=8)
    context = DraftContext(tokens=np.array([1, 2, 3, 4, 5, 6, 1, 2]), prompt_len=8, budget=3)
    assert drafter.propose(context).tokens == (3, 4, 5)
    context = DraftContext(tokens=np.array([1, 2, 3, 4, 5, 6, 1, 2]), prompt_len=8, budget=0)
    assert drafter.propose(context).tokens == ()


def test_reference_matches_brute_force():
    """The vectorised matcher against an obviously-correct loop, on random arrays."""
    rng = np.random.default_rng(0)

    def brute(tokens, min_n, max_n, k):
        t = list(tokens)
        for n in range(max_n, min_n - 1, -1):
            if n >= len(t):
                continue
            suffix = t[-n:]
            for i in range(len(t) - n - 1, -1, -1):
                if t[i:i + n] == suffix:
                    return t[i + n:i + n + k]
        return []

    for _ in range(300):
        tokens = rng.integers(0, 4, size=rng.integers(0, 30))
        assert fc(tokens, min_n=1, max_n=3, k=4) == brute(tokens, 1, 3, 4)
