"""Per-request edits of the logits before sampling, in the order vLLM applies them:
masks (allowed_token_ids, bad_words), logit_bias, then the repetition, frequency and
presence penalties. (The min_tokens mask lives in the sampler, which knows the EOS
ids; temperature and top-k/p/min-p follow in the sampler too.)

Each step touches only the rows that ask for it (the penalties only the tokens those
rows have seen), so a batch that uses none of these options pays one pass over its
requests. The pure functions below take plain tensors and lists, so they can be tested
on hand-made logits.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from kvscope.request import Request
from kvscope.sampling_params import SamplingParams

NEG_INF = float("-inf")


def needs_processing(params: SamplingParams) -> bool:
    return bool(params.allowed_token_ids or params.bad_words_token_ids or params.logit_bias
                or params.repetition_penalty != 1.0 or params.frequency_penalty
                or params.presence_penalty)


def apply_logits_processors(logits: torch.Tensor, requests: Sequence[Request]) -> None:
    """Apply every request's masks, bias and penalties to its row of `logits`, in place."""
    rows = [row for row, r in enumerate(requests) if needs_processing(r.sampling_params)]
    if not rows:
        return
    chosen = [requests[row] for row in rows]
    params = [r.sampling_params for r in chosen]
    allowed = [(row, p.allowed_token_ids) for row, p in zip(rows, params, strict=True)
               if p.allowed_token_ids]
    if allowed:
        mask_to_allowed(logits, [row for row, _ in allowed], [ids for _, ids in allowed])
    banned = [(row, t) for row, r in zip(rows, chosen, strict=True)
              for t in banned_tokens(r.sampling_params.bad_words_token_ids,
                                     r.output_token_ids)]
    if banned:
        logits[[row for row, _ in banned], [t for _, t in banned]] = NEG_INF
    biased = [(row, p.logit_bias) for row, p in zip(rows, params, strict=True) if p.logit_bias]
    if biased:
        add_logit_bias(logits, [row for row, _ in biased], [b for _, b in biased])
    penalised = [i for i, p in enumerate(params) if has_penalty(p)]
    if penalised:
        _penalise(logits, [rows[i] for i in penalised], [chosen[i] for i in penalised])


def has_penalty(params: SamplingParams) -> bool:
    return bool(params.repetition_penalty != 1.0 or params.frequency_penalty
                or params.presence_penalty)


def _penalise(logits: torch.Tensor, rows: list[int], requests: list[Request]) -> None:
    """Penalties touch only the (row, token) pairs a request has seen, so they cost
    O(tokens seen), never O(rows * vocab)."""
    index = torch.tensor(rows)
    params = [r.sampling_params for r in requests]
    if any(p.repetition_penalty != 1.0 for p in params):
        local, tokens, _ = token_counts([r.all_token_ids for r in requests])
        penalty = torch.tensor([p.repetition_penalty for p in params], dtype=logits.dtype)
        at = (index[local], tokens)
        logits[at] = repetition_penalty(logits[at], penalty[local])
    if any(p.frequency_penalty or p.presence_penalty for p in params):
        local, tokens, counts = token_counts([r.output_token_ids for r in requests])
        frequency = torch.tensor([p.frequency_penalty for p in params], dtype=logits.dtype)
        presence = torch.tensor([p.presence_penalty for p in params], dtype=logits.dtype)
        at = (index[local], tokens)
        logits[at] = frequency_presence_penalty(logits[at], counts, frequency[local],
                                                presence[local])


def token_counts(token_lists: Sequence[Sequence[int]]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(list index, token id, count) for every distinct token of every list: a sparse
    count table, built with one `unique` over (list, token) keys."""
    lengths = torch.tensor([len(tokens) for tokens in token_lists])
    ids = torch.tensor(list(itertools.chain.from_iterable(token_lists)), dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(token_lists)), lengths)
    width = int(ids.max()) + 1 if len(ids) else 1
    keys, counts = (owner * width + ids).unique(return_counts=True)
    return keys // width, keys % width, counts


def repetition_penalty(logits: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """CTRL's penalty on the logits of seen tokens: a positive logit is divided by the
    penalty and a negative one multiplied, so a penalty > 1 always makes them less
    likely."""
    return torch.where(logits > 0, logits / penalty, logits * penalty)


def frequency_presence_penalty(logits: torch.Tensor, counts: torch.Tensor,
                               frequency: torch.Tensor, presence: torch.Tensor
                               ) -> torch.Tensor:
    """OpenAI's penalties on the logits of tokens seen `counts` (> 0) times in the
    output: logit -= frequency * count + presence."""
    return logits - frequency * counts - presence


def add_logit_bias(logits: torch.Tensor, rows: list[int],
                   biases: list[dict[int, float]]) -> None:
    """Add each row's {token id: bias} to its logits, in place."""
    flat = [(row, token, value) for row, bias in zip(rows, biases, strict=True)
            for token, value in bias.items()]
    row_ids, token_ids, values = zip(*flat, strict=True)
    logits.index_put_((torch.tensor(row_ids), torch.tensor(token_ids)),
                      torch.tensor(values, dtype=logits.dtype), accumulate=True)


def mask_to_allowed(logits: torch.Tensor, rows: list[int], allowed: list[list[int]]) -> None:
    """Set every logit of each row outside its allowed ids to -inf, in place."""
    for row, ids in zip(rows, allowed, strict=True):
        kept = logits[row, ids]
        logits[row] = NEG_INF
        logits[row, ids] = kept


def banned_tokens(sequences: Sequence[Sequence[int]], output: Sequence[int]) -> list[int]:
    """The tokens that would complete a banned sequence now: its last token, when the
    rest of the sequence equals the end of the output so far (always, for a sequence of
    one token)."""
    banned = []
    for sequence in sequences:
        need = len(sequence) - 1
        if need == 0 or (len(output) >= need and list(output[-need:]) == list(sequence[:-1])):
            banned.append(sequence[-1])
    return banned
