"""Speculative decoding inside the engine step: propose, schedule, verify.

1. Propose: before the step is scheduled, every running request in decode whose
   sampling allows it gets up to `num_speculative_tokens` draft tokens from the
   proposer (fewer near max_tokens or max_model_len; none when the batch has
   `disable_by_batch_size` requests or more). They wait on the request
   (`spec_token_ids`).
2. Schedule: the scheduler gives a decode's drafts KV slots from what the step leaves
   over, tokens and blocks, so drafts never delay or preempt anyone.
3. Verify: the same forward pass as every other request computes the known token and
   the drafts; each of their rows is a decode query with one more position of
   context, computed exactly as a plain decode step would compute it. Greedy requests
   keep drafts while they equal the target's argmax; sampled ones use the rejection
   rule of `sample/rejection.py`, so the output is distributed as the target's alone.
4. Roll back: the request's computed tokens end after the accepted drafts; blocks past
   them are given back (`Scheduler.update_from_output`).

Drafting is left out where the next token's distribution depends on the tokens
before it in ways the rows do not see: penalties, bad_words and min_tokens still to
reach. Requests with n > 1 and beams are not drafted for either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kvscope.config import ConfigError
from kvscope.executor.base import Executor
from kvscope.kv.kv_manager import KVCacheManager
from kvscope.model.loader import LoadedModel, load_model
from kvscope.outputs import Logprob
from kvscope.request import Request
from kvscope.sample.logits_processors import has_penalty
from kvscope.sample.rejection import accept_greedy, one_hot_draft, verify_sampled
from kvscope.sample.sampler import Sampler
from kvscope.sched.scheduler import ScheduledRequest
from kvscope.speculative.config import SpeculativeConfig
from kvscope.speculative.draft_model import DraftModelProposer
from kvscope.speculative.metrics import SpecStats
from kvscope.speculative.ngram import NgramProposer
from kvscope.speculative.proposer import Draft, Proposer
from kvscope.speculative.self_draft import SelfDraftProposer


@dataclass(slots=True)
class Verified:
    """What one request gets from a verifying pass: the accepted drafts, then the
    target's own token; with their logprobs where asked for."""

    token_ids: list[int]
    logprobs: list[dict[int, Logprob] | None]
    sampled_logprobs: list[float | None]


class Speculator:
    def __init__(self, config: SpeculativeConfig, proposer: Proposer, sampler: Sampler,
                 max_model_len: int) -> None:
        self.config = config
        self.proposer = proposer
        self.sampler = sampler
        self.max_model_len = max_model_len
        self.stats = SpecStats(config.num_speculative_tokens)
        self._active = True
        self._drafts: dict[str, Draft] = {}

    def begin_step(self, num_running: int) -> None:
        """Turn drafting off for this step when the batch is large."""
        limit = self.config.disable_by_batch_size
        self._active = limit is None or num_running < limit
        if not self._active:
            self.stats.num_skipped_large_batch += 1

    def lookahead(self, request: Request) -> int:
        """Draft slots to reserve for a request about to decode one token."""
        if not self._active or not draftable(request):
            return 0
        k = min(self.config.num_speculative_tokens, self.max_model_len - request.num_tokens)
        max_tokens = request.sampling_params.max_tokens
        if max_tokens is not None:  # the step emits at most k + 1 tokens
            k = min(k, max_tokens - request.num_output_tokens - 1)
        return max(k, 0)

    def propose(self, requests: Sequence[Request]) -> None:
        """Put draft tokens on the requests that may have them this step."""
        limits = [self.lookahead(request) for request in requests]
        chosen = [i for i, k in enumerate(limits) if k > 0]
        if not chosen:
            return
        drafts = self.proposer.propose([requests[i] for i in chosen],
                                       [limits[i] for i in chosen])
        for i, draft in zip(chosen, drafts, strict=True):
            requests[i].spec_token_ids = list(draft.token_ids)
            if draft.token_ids:
                self._drafts[requests[i].request_id] = draft

    def verify(self, item: ScheduledRequest, logits: torch.Tensor) -> Verified:
        """`logits` [1 + drafts, vocab]: the rows of the known token and the drafts."""
        request = item.request
        drafts = item.draft_token_ids
        draft = self._drafts.pop(request.request_id)
        requests = [request] * logits.shape[0]
        raw = self.sampler.raw_logprobs(logits, requests)
        self.sampler.process(logits, requests)
        params = request.sampling_params
        if params.is_greedy:
            tokens = accept_greedy(logits.argmax(dim=-1).tolist(), drafts)
        else:
            target = self.sampler.probabilities(logits, params)
            q = (draft.probs[:len(drafts)] if draft.probs is not None  # the scheduled ones
                 else one_hot_draft(drafts, logits.shape[-1]))
            tokens = verify_sampled(target, q, drafts, self.sampler.generator_for(request))
        used = len(tokens)
        logprobs, sampled = self.sampler.logprobs(None if raw is None else raw[:used], tokens,
                                                  requests[:used])
        self.stats.record(len(drafts), used - 1, used)
        request.num_draft_tokens += len(drafts)
        request.num_accepted_tokens += used - 1
        return Verified(tokens, logprobs, sampled)

    def forget(self, request_id: str) -> None:
        self._drafts.pop(request_id, None)
        self.proposer.forget(request_id)


def draftable(request: Request) -> bool:
    """In decode, with sampling that treats every verified row alike."""
    params = request.sampling_params
    return (request.num_computed_tokens == request.num_tokens - 1
            and request.num_computed_tokens > 0
            and request.num_output_tokens >= params.min_tokens
            and not params.bad_words_token_ids and not has_penalty(params))


def make_proposer(config: SpeculativeConfig, loaded: LoadedModel, dtype: torch.dtype,
                  executor: Executor, kv: KVCacheManager, sampler: Sampler, max_model_len: int,
                  seed: int, draft_loaded: LoadedModel | None = None) -> Proposer:
    """The proposer `config` names: n-gram lookup, the early-exit self-draft (through
    the executor, so it runs on tensor-parallel workers too), or a draft model
    (`draft_loaded` reuses one in memory)."""
    if config.method == "ngram":
        return NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max)
    if config.method == "self_draft":
        num_layers = loaded.arch.num_layers
        draft_layers = config.draft_layers or num_layers // 2
        if draft_layers >= num_layers:
            raise ConfigError(f"speculative_config draft_layers must be below the model's "
                              f"{num_layers} layers; got {draft_layers}")
        return SelfDraftProposer(executor, kv, draft_layers, sampler, seed)
    assert config.model is not None
    draft = draft_loaded or load_model(config.model, dtype)
    return DraftModelProposer(draft, loaded.arch.vocab_size, config.draft_kv_cache_memory,
                              kv.block_size, max_model_len, sampler, seed)
