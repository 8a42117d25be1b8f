import pytest
import torch

from quickdraft.sampling import SamplingParams, target_probs
from quickdraft.verify import residual_distribution, verify_greedy, verify_sampling, verify_tree_greedy


def onehot_logits(best):
    return torch.eye(10)[best] * 5.0


def test_all_accepted_gets_the_bonus_token():
    v = verify_greedy(onehot_logits([1, 2, 3, 4]), [1, 2, 3])
    assert v.tokens == (1, 2, 3, 4) and v.path == (1, 2, 3) and v.accepted == 3


def test_first_rejected_emits_the_target_token():
    v = verify_greedy(onehot_logits([1, 2, 3, 4]), [9, 2, 3])
    assert v.tokens == (1,) and v.path == ()


def test_partial_acceptance():
    v = verify_greedy(onehot_logits([1, 2, 3, 4]), [1, 2, 0])
    assert v.tokens == (1, 2, 3) and v.path == (1, 2)


def test_empty_draft_is_one_plain_step():
    assert verify_greedy(onehot_logits([6]), []).tokens == (6,)


def test_tree_greedy_follows_the_matching_branch():
    # root -> {1:"5", 2:"1"}; node 2 -> {3:"2", 4:"7"}; node 3 -> {5:"3"}
    parents = (0, 0, 2, 2, 3)
    tokens = [5, 1, 2, 7, 3]
    logits = onehot_logits([1, 0, 2, 3, 0, 4])  # argmax at nodes 0..5
    v = verify_tree_greedy(logits, tokens, parents)
    assert v.path == (2, 3, 5) and v.tokens == (1, 2, 3, 4)


def test_tree_greedy_on_a_chain_equals_chain_greedy():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        logits = torch.randn(5, 6, generator=g)
        best = logits.argmax(-1).tolist()
        draft = [best[0], best[1] if torch.rand(1, generator=g) < 0.7 else 0, best[2], best[3]]
        assert verify_tree_greedy(logits, draft, (0, 1, 2, 3)) == verify_greedy(logits, draft)


def test_residual_of_a_deterministic_draft_removes_the_token():
    target = torch.tensor([0.5, 0.3, 0.2])
    assert torch.allclose(residual_distribution(target, None, 0), torch.tensor([0.0, 0.6, 0.4]))


# --- statistical test of speculative sampling ------------------------------------------

VOCAB = 5
TARGET = torch.tensor([[0.40, 0.25, 0.15, 0.15, 0.05], [0.1, 0.2, 0.3, 0.2, 0.2], [0.3, 0.3, 0.2, 0.1, 0.1]])
DRAFT = torch.tensor([[0.10, 0.50, 0.10, 0.20, 0.10], [0.25, 0.25, 0.25, 0.125, 0.125]])


def run_chain_sampling(verifier, trials, seed):
    """Sample drafts from DRAFT, verify; return counts of the first emitted token and of (t0, t1) pairs."""
    g = torch.Generator().manual_seed(seed)
    first = torch.zeros(VOCAB)
    pairs = torch.zeros(VOCAB, VOCAB)
    for _ in range(trials):
        draft = [int(torch.multinomial(DRAFT[i], 1, generator=g)) for i in range(2)]
        tokens = verifier(TARGET, draft, DRAFT, g).tokens
        first[tokens[0]] += 1
        if len(tokens) >= 2:
            pairs[tokens[0], tokens[1]] += 1
    return first, pairs



def chi2_stat(counts, probs):
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


# chi-square critical value for 4 degrees of freedom at p = 0.001
CRIT_4DOF = 18.47


def test_speculative_sampling_matches_the_target_distribution():
    first, _ = run_chain_sampling(verify_sampling, trials=20000, seed=1)
    assert chi2_stat(first, TARGET[0]) < CRIT_4DOF


def test_second_token_follows_the_target_given_the_first():
    """Tokens after an accepted draft token follow the target row of that position."""
    g = torch.Generator().manual_seed(2)
    counts = torch.zeros(VOCAB)
    for _ in range(20000):
        draft = [1, int(torch.multinomial(DRAFT[1], 1, generator=g))]
        tokens = verify_sampling(TARGET, draft, DRAFT, g).tokens
        if tokens[0] == 1 and len(tokens) >= 2:
            counts[tokens[1]] += 1
    assert chi2_stat(counts, TARGET[1]) < CRIT_4DOF


def test_deterministic_draft_matches_the_target_distribution():
    g = torch.Generator().manual_seed(3)
    counts = torch.zeros(VOCAB)
    for _ in range(20000):
        counts[verify_sampling(TARGET, [1, 2], None, g).tokens[0]] += 1
    assert chi2_stat(counts, TARGET[0]) < CRIT_4DOF


def test_negative_control_a_wrong_residual_is_caught():
    """Sampling the recovered token from the target (not the residual) biases the output; the test sees it."""

    def wrong(target, draft, draft_probs, g):
        for i, token in enumerate(draft):
            if torch.rand((), generator=g) * draft_probs[i, token] < target[i, token]:
                continue
            from quickdraft.verify import Verdict
            return Verdict(path=tuple(range(1, i + 1)), tokens=tuple(draft[:i]) + (int(torch.multinomial(target[i], 1, generator=g)),))
        from quickdraft.verify import Verdict
        return Verdict(path=(1, 2), tokens=tuple(draft) + (0,))

    first, _ = run_chain_sampling(wrong, trials=20000, seed=1)
    assert chi2_stat(first, TARGET[0]) > CRIT_4DOF


def test_sampling_params_shape_the_distribution():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    p = target_probs(logits, SamplingParams(temperature=1.0, top_p=0.7))
    assert p[0, 2:].sum() == 0 and p[0, :2].sum() == pytest.approx(1.0)
    p = target_probs(logits, SamplingParams(temperature=1.0, top_k=1))
    assert p[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    hot = target_probs(logits, SamplingParams(temperature=10.0))
    cold = target_probs(logits, SamplingParams(temperature=0.1))
    assert hot[0, 0] < cold[0, 0]


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(temperature=float("nan")), dict(top_p=0),
                                     dict(top_p=1.5), dict(top_k=-2)])
def test_bad_sampling_params_raise(kwargs):
    from quickdraft import QuickdraftError

    with pytest.raises(QuickdraftError):
        SamplingParams(**kwargs)


def test_argmax_rows_equals_argmax_on_bfloat16_ties_and_nan():
    """Greedy verification reads argmax through max() (faster in bfloat16 on CPU): the same index, the
    first on a tie, a NaN's if any."""
    from quickdraft.sampling import argmax_rows

    gen = torch.Generator().manual_seed(0)
    for trial in range(50):
        rows = int(torch.randint(1, 12, (), generator=gen))
        logits = torch.randint(0, 4, (rows, 1000), generator=gen).to(torch.bfloat16)  # many ties
        if trial % 5 == 0:
            logits[0, 17] = float("nan")
        assert argmax_rows(logits) == logits.argmax(-1).tolist()
