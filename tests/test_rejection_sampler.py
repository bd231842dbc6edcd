"""The speculative verification rule on hand-made distributions: greedy keeps the
target's argmax tokens, and sampled verification reproduces the target distribution
(chi-square at a fixed seed), with the edge cases exact."""

from __future__ import annotations

import torch

from kvscope.sample.rejection import one_hot_draft, verify_greedy, verify_sampled

# chi-square critical value at p = 0.001 for 3 degrees of freedom (4 tokens)
CHI2_CRIT_DF3 = 16.266
TRIALS = 20_000


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    mask = expected > 0
    return float((((counts - expected) ** 2)[mask] / expected[mask]).sum())


def first_token_counts(p: torch.Tensor, q: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Draft from q, verify against p (k = 1): count the first emitted token."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(p.shape[-1])
    target = torch.stack([p, p])
    for _ in range(TRIALS):
        draft = int(torch.multinomial(q, 1, generator=gen))
        token = verify_sampled(target, q[None, :], [draft], gen)[0]
        counts[token] += 1
    return counts


def test_sampled_verification_reproduces_the_target_distribution():
    p = torch.tensor([0.5, 0.2, 0.2, 0.1])
    q = torch.tensor([0.1, 0.6, 0.1, 0.2])
    counts = first_token_counts(p, q)
    assert chi_square(counts, p) < CHI2_CRIT_DF3
    # and it is not trivially passing: q's own frequencies are far from p
    assert chi_square(counts, q) > 100 * CHI2_CRIT_DF3


def test_q_zero_where_p_is_positive_is_reached_through_the_residual():
    p = torch.tensor([0.25, 0.25, 0.25, 0.25])
    q = torch.tensor([0.0, 0.0, 0.5, 0.5])  # tokens 0 and 1 are never drafted
    counts = first_token_counts(p, q, seed=1)
    assert counts[0] > 0 and counts[1] > 0
    assert chi_square(counts, p) < CHI2_CRIT_DF3


def test_p_equal_q_never_rejects():
    p = torch.tensor([0.4, 0.3, 0.2, 0.1])
    gen = torch.Generator().manual_seed(2)
    for _ in range(500):
        drafts = [int(t) for t in torch.multinomial(p, 3, replacement=True, generator=gen)]
        out = verify_sampled(p.repeat(4, 1), p.repeat(3, 1), drafts, gen)
        assert out[:3] == drafts and len(out) == 4  # all accepted, plus a bonus token


def test_all_accepted_adds_the_bonus_token_from_the_last_row():
    target = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert verify_sampled(target, one_hot_draft([1, 2], 3), [1, 2]) == [1, 2, 0]


def test_a_one_hot_draft_is_rejected_with_probability_one_minus_p():
    p = torch.tensor([0.7, 0.3])
    gen = torch.Generator().manual_seed(3)
    rejected = sum(verify_sampled(p.repeat(2, 1), one_hot_draft([0], 2), [0], gen)[0] != 0
                   for _ in range(TRIALS))
    assert abs(rejected / TRIALS - 0.3) < 0.015
    # a rejected one-hot draft is replaced by another token, never by itself
    certain = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    assert verify_sampled(certain, one_hot_draft([0], 2), [0], gen)[0] == 1


def test_greedy_keeps_the_targets_argmax():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 1.0], [0.0, 0.0, 9.0]])
    assert verify_greedy(logits, [1, 0]) == [1, 0, 2]  # both accepted, bonus 2
    assert verify_greedy(logits, [1, 2]) == [1, 0]  # second rejected: the argmax 0
    assert verify_greedy(logits, [2, 0]) == [1]  # first rejected
    assert verify_greedy(logits[:1], []) == [1]  # no draft: one plain token
