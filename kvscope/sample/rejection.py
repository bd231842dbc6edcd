"""Verification of speculative tokens: the target model keeps the output it would have
produced alone.

A proposer drafts k tokens x_1..x_k with probabilities q_i; one forward pass of the
target gives p_1..p_{k+1} (p_i at the position of x_i, p_{k+1} after the last).

- Greedy: accept x_i while it is the target's argmax; at the first disagreement emit
  the target's argmax instead and stop. If all k agree, the argmax of p_{k+1} is a bonus
  token. Output = the target's own greedy tokens, however good the drafts were.
- Sampling (speculative sampling as in Leviathan et al. and Chen et al.): accept x_i with
  probability min(1, p_i(x_i) / q_i(x_i)); on rejection draw from the residual
  max(0, p_i - q_i), normalised, and stop; if all are accepted draw a bonus token from
  p_{k+1}. Every emitted token is then distributed exactly as under p alone.

A draft with q_i(x_i) = 0 cannot come from sampling q; a deterministic proposer (n-gram
lookup) is described by a one-hot q, which this covers. Should it happen anyway the
ratio counts as infinite (accept). When p_i = q_i there is no rejection, so the empty
residual is never sampled; if rounding empties it regardless, p_i is used.

This module is the rule alone, tested on hand-made distributions; the engine applies
it in `engine/speculation.py`.
"""

from __future__ import annotations

import torch


def verify_greedy(target_logits: torch.Tensor, draft_tokens: list[int]) -> list[int]:
    """`target_logits` [k + 1, vocab]; returns the accepted drafts plus one token of the
    target's (a correction or the bonus): between 1 and k + 1 tokens."""
    return accept_greedy(target_logits.argmax(dim=-1).tolist(), draft_tokens)


def accept_greedy(choices: list[int], draft_tokens: list[int]) -> list[int]:
    """`choices` the target's greedy token at each of the k + 1 positions."""
    out = []
    for i, token in enumerate(draft_tokens):
        if choices[i] != token:
            out.append(choices[i])
            return out
        out.append(token)
    out.append(choices[len(draft_tokens)])
    return out


def verify_sampled(target_probs: torch.Tensor, draft_probs: torch.Tensor,
                   draft_tokens: list[int], generator: torch.Generator | None = None
                   ) -> list[int]:
    """`target_probs` [k + 1, vocab], `draft_probs` [k, vocab] (rows sum to 1); returns
    the accepted drafts and one more token: a resample from the residual at the first
    rejection, or the bonus token from the last target row."""
    out = []
    for i, token in enumerate(draft_tokens):
        p, q = target_probs[i], draft_probs[i]
        if _accepts(float(p[token]), float(q[token]), generator):
            out.append(token)
            continue
        out.append(_sample(_residual(p, q), generator))
        return out
    out.append(_sample(target_probs[len(draft_tokens)], generator))
    return out


def one_hot_draft(tokens: list[int], vocab: int) -> torch.Tensor:
    """The q of a deterministic proposer: all mass on each drafted token."""
    q = torch.zeros(len(tokens), vocab)
    q[torch.arange(len(tokens)), torch.tensor(tokens, dtype=torch.long)] = 1.0
    return q


def _accepts(p: float, q: float, generator: torch.Generator | None) -> bool:
    if q <= 0.0:
        return True
    u = float(torch.rand((), generator=generator))
    return u < min(1.0, p / q)


def _residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    residual = (p - q).clamp_min(0.0)
    total = residual.sum()
    return residual / total if total > 0 else p


def _sample(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    return int(torch.multinomial(probs, 1, generator=generator))
