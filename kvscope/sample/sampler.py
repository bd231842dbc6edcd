"""Turn logits into tokens for a whole batch at once.

Greedy rows take the argmax. Random rows are sampled with the exponential race
(argmax of p / E with E ~ Exp(1), which picks token i with probability p_i), so
a request with a seed draws its noise from its own generator and gets the same
tokens whatever else is in the batch. Top-k, top-p and min-p are applied in
sorted order, only for the rows that ask for them, after the masks, logit bias and
penalties of logits_processors.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kvscope.outputs import Logprob
from kvscope.request import Request
from kvscope.sample.logits_processors import apply_logits_processors
from kvscope.sampling_params import SamplingParams


@dataclass(slots=True)
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[dict[int, Logprob] | None]  # per row; None where not requested
    sampled_logprobs: list[float | None]


class Sampler:
    def __init__(self, seed: int, eos_token_ids: Sequence[int]) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.eos_token_ids = list(eos_token_ids)
        self._generators: dict[str, torch.Generator] = {}

    def forget(self, request_id: str) -> None:
        self._generators.pop(request_id, None)

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor, requests: Sequence[Request]) -> SamplerOutput:
        raw_logprobs = self.raw_logprobs(logits, requests)
        self.process(logits, requests)
        tokens = logits.argmax(dim=-1)
        random_rows = [i for i, r in enumerate(requests) if not r.sampling_params.is_greedy]
        if random_rows:
            rows = torch.tensor(random_rows)
            tokens[rows] = self._sample_random(logits[rows], [requests[i] for i in random_rows])
        token_list = tokens.tolist()
        logprobs, sampled = self.logprobs(raw_logprobs, token_list, requests)
        return SamplerOutput(token_list, logprobs, sampled)

    def raw_logprobs(self, logits: torch.Tensor,
                     requests: Sequence[Request]) -> torch.Tensor | None:
        """log_softmax of the model's logits, where any row wants logprobs."""
        if any(_wants_logprob(r.sampling_params) for r in requests):
            return torch.log_softmax(logits, dim=-1)
        return None

    def process(self, logits: torch.Tensor, requests: Sequence[Request]) -> None:
        """The min_tokens mask, then masks, bias and penalties, in place; the argmax
        of a row is then its greedy token."""
        self._mask_before_min_tokens(logits, requests)
        apply_logits_processors(logits, requests)

    def probabilities(self, logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
        """The distribution random sampling draws from, for processed logits rows of
        one request: temperature, then top-k, top-p and min-p."""
        logits = logits / params.temperature
        if not (params.top_k > 0 or params.top_p < 1 or params.min_p > 0):
            return torch.softmax(logits, dim=-1)
        sorted_probs, order = _filtered_sorted_probs(logits, [params] * logits.shape[0])
        probs = torch.zeros_like(sorted_probs).scatter_(1, order, sorted_probs)
        return probs / probs.sum(dim=-1, keepdim=True)

    def generator_for(self, request: Request) -> torch.Generator:
        """The request's own generator when it has a seed, else the engine's."""
        seed = request.sampling_params.seed
        if seed is None:
            return self.generator
        gen = self._generators.get(request.request_id)
        if gen is None:
            gen = self._generators[request.request_id] = torch.Generator().manual_seed(seed)
        return gen

    def _mask_before_min_tokens(self, logits: torch.Tensor, requests: Sequence[Request]) -> None:
        for row, request in enumerate(requests):
            params = request.sampling_params
            if request.num_output_tokens < params.min_tokens:
                banned = list(params.stop_token_ids or [])
                if not params.ignore_eos:
                    banned += self.eos_token_ids
                if banned:
                    logits[row, banned] = float("-inf")

    def _sample_random(self, logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
        params = [r.sampling_params for r in requests]
        temperature = torch.tensor([p.temperature for p in params], dtype=logits.dtype)
        logits = logits / temperature[:, None]
        noise = self._exponential_noise(logits.shape, requests)
        needs_filter = [p.top_k > 0 or p.top_p < 1 or p.min_p > 0 for p in params]
        filtered = [i for i, flag in enumerate(needs_filter) if flag]
        plain = [i for i, flag in enumerate(needs_filter) if not flag]
        out = torch.empty(len(params), dtype=torch.long)
        if plain:
            rows = torch.tensor(plain)
            probs = torch.softmax(logits[rows], dim=-1)
            out[rows] = (probs / noise[rows]).argmax(dim=-1)
        if filtered:
            rows = torch.tensor(filtered)
            out[rows] = _sample_filtered(logits[rows], noise[rows], [params[i] for i in filtered])
        return out

    def _exponential_noise(self, shape: torch.Size, requests: list[Request]) -> torch.Tensor:
        noise = torch.empty(shape).exponential_(generator=self.generator)
        for row, request in enumerate(requests):
            if request.sampling_params.seed is not None:
                noise[row].exponential_(generator=self.generator_for(request))
        return noise

    def logprobs(self, raw: torch.Tensor | None, tokens: list[int],
                  requests: Sequence[Request]
                  ) -> tuple[list[dict[int, Logprob] | None], list[float | None]]:
        result: list[dict[int, Logprob] | None] = [None] * len(tokens)
        sampled: list[float | None] = [None] * len(tokens)
        if raw is None:
            return result, sampled
        for row, request in enumerate(requests):
            wanted = request.sampling_params.logprobs
            if wanted is None:
                if _wants_logprob(request.sampling_params):
                    sampled[row] = raw[row, tokens[row]].item()
                continue
            token = tokens[row]
            value = raw[row, token]
            entry = {token: Logprob(value.item(), int((raw[row] > value).sum()) + 1)}
            if wanted:
                top_values, top_ids = raw[row].topk(wanted)
                for rank, (v, t) in enumerate(zip(top_values.tolist(), top_ids.tolist(),
                                                  strict=True), start=1):
                    entry.setdefault(t, Logprob(v, rank))
            result[row] = entry
            sampled[row] = value.item()
        return result, sampled


def _wants_logprob(params: SamplingParams) -> bool:
    """Logprobs asked for, or best_of sequences to rank by cumulative log-probability."""
    return params.logprobs is not None or params.num_sequences > params.n


def _sample_filtered(logits: torch.Tensor, noise: torch.Tensor, params: list) -> torch.Tensor:
    """Top-k, then top-p, then min-p, in descending order of probability."""
    probs, order = _filtered_sorted_probs(logits, params)
    # noise is indexed by token id; reorder it into sorted order so a request's draw
    # does not depend on which path sampled it
    choice = (probs / noise.gather(1, order)).argmax(dim=-1)
    return order.gather(1, choice[:, None]).squeeze(1)


def _filtered_sorted_probs(logits: torch.Tensor, params: list
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's probabilities in descending order after top-k, top-p and min-p (not
    renormalised), and the token order they are in."""
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    top_k = torch.tensor([p.top_k or vocab for p in params])
    ranks = torch.arange(vocab)
    sorted_logits = sorted_logits.masked_fill(ranks[None, :] >= top_k[:, None], float("-inf"))
    probs = torch.softmax(sorted_logits, dim=-1)
    top_p = torch.tensor([p.top_p for p in params], dtype=probs.dtype)
    mass_before = probs.cumsum(dim=-1) - probs
    probs = probs.masked_fill(mass_before > top_p[:, None], 0.0)
    min_p = torch.tensor([p.min_p for p in params], dtype=probs.dtype)
    probs = probs.masked_fill(probs < min_p[:, None] * probs[:, :1], 0.0)
    return probs, order


def prompt_logprobs(logits: torch.Tensor, targets: list[int],
                    num_top: int) -> list[dict[int, Logprob]]:
    """For each row, the raw log-probability and rank of the token that followed
    (`targets[row]`), plus the `num_top` most likely tokens."""
    raw = torch.log_softmax(logits.float(), dim=-1)
    target = torch.tensor(targets, dtype=torch.long)[:, None]
    values = raw.gather(1, target)
    ranks = ((raw > values).sum(dim=-1) + 1).tolist()
    entries = [{t: Logprob(v, rank)}
               for t, v, rank in zip(targets, values[:, 0].tolist(), ranks, strict=True)]
    if num_top:
        top_values, top_ids = raw.topk(num_top, dim=-1)
        for entry, vs, ts in zip(entries, top_values.tolist(), top_ids.tolist(), strict=True):
            for rank, (v, t) in enumerate(zip(vs, ts, strict=True), start=1):
                entry.setdefault(t, Logprob(v, rank))
    return entries
