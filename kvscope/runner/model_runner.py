"""Runs one scheduled step as one flat forward pass. Holds tensors, no policy.

It turns a SchedulerOutput into token ids, positions, a slot mapping and block
tables (small index tensors built once per step), runs the model over all tokens
together, and returns logits only for the rows that sample (and, for requests
that ask for prompt_logprobs, for the rows of their prompt chunk).
"""

from __future__ import annotations

import time

import torch

from kvscope.attention.metadata import AttentionMetadata, PrefillChunk
from kvscope.model.layers.rotary import rope_tables
from kvscope.model.llama import LlamaModel
from kvscope.model.probe import ForwardProbe
from kvscope.sched.output import (
    ModelRunnerOutput,
    PromptLogits,
    ScheduledTokens,
    SchedulerOutput,
)


class ModelRunner:
    def __init__(self, model: LlamaModel, num_blocks: int, block_size: int,
                 max_model_len: int, dtype: torch.dtype, num_swap_blocks: int = 0) -> None:
        arch = model.arch
        self.model = model
        self.block_size = block_size
        # one pool for the layers this model holds (all of them, or a pipeline stage's)
        num_layers = len(model.layers)
        shape = (num_layers, 2, num_blocks, block_size, arch.num_kv_heads, arch.head_dim)
        self.kv_pool = torch.zeros(shape, dtype=dtype)
        self.kv_caches = [(self.kv_pool[i, 0], self.kv_pool[i, 1]) for i in range(num_layers)]
        # swap space for preemption by swap: the same layout, indexed by swap slot
        swap_shape = (*shape[:2], num_swap_blocks, *shape[3:])
        self.swap_pool = torch.zeros(swap_shape, dtype=dtype) if num_swap_blocks else None
        cos, sin = rope_tables(arch.head_dim, max_model_len, arch.rope_theta)
        self.cos, self.sin = cos.to(dtype), sin.to(dtype)
        # set to look inside the forward pass of one request, step after step
        # (model/probe.py); None, the default, costs one check per capture point
        self.probe: ForwardProbe | None = None
        self.num_steps = 0
        self.last_prepare_s = 0.0  # the last step's time building its index tensors

    def execute(self, out: SchedulerOutput) -> ModelRunnerOutput:
        result = self.execute_stage(out)
        assert isinstance(result, ModelRunnerOutput)
        return result

    def execute_stage(self, out: SchedulerOutput,
                      carried: tuple[torch.Tensor, torch.Tensor] | None = None,
                      last: bool = True) -> ModelRunnerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One step through the layers this model holds. `carried`: the previous
        pipeline stage's (hidden, residual), None where this model embeds the tokens.
        Not `last`: returns this stage's (hidden, residual) for the next stage."""
        self.apply_swaps(out)
        if not out.scheduled:  # a step that only copies blocks
            return self._nothing_computed(last)
        ordered = sorted(out.scheduled, key=lambda s: not s.is_decode)
        started = time.perf_counter()
        input_ids, meta, sample_rows, sampled = self._prepare(ordered)
        self.last_prepare_s = time.perf_counter() - started
        with torch.inference_mode():
            x, residual = (self.model.embed(input_ids, meta), None) if carried is None \
                else carried
            x, residual = self.model.run_layers(x, residual, meta, self.kv_caches)
            if not last:
                self.num_steps += 1
                return x, residual
            hidden = self.model.final_norm(x, residual, meta)
            # decode rows come first and all sample
            logits = self.model.compute_logits(hidden[sample_rows], meta.num_decodes)
            prompt_logits = [PromptLogits(item.request_id, item.start,
                                          self.model.compute_logits(hidden[begin:end]))
                             for item, begin, end in _prompt_logprob_rows(ordered)]
        sampled_ids = [s.request_id for s in sampled]
        if meta.probe is not None:
            self._end_probe(meta.probe, logits, sampled)
        self.num_steps += 1
        return ModelRunnerOutput(logits, sampled_ids, prompt_logits)

    def _nothing_computed(self, last: bool
                          ) -> ModelRunnerOutput | tuple[torch.Tensor, torch.Tensor]:
        self.num_steps += 1
        if not last:
            empty = torch.empty(0, self.model.arch.hidden_size, dtype=self.kv_pool.dtype)
            return empty, empty.clone()
        return ModelRunnerOutput(torch.empty(0, self.model.arch.vocab_size), [])

    def _begin_probe(self, meta: AttentionMetadata, ordered: list[ScheduledTokens]) -> None:
        """Point the step's metadata at the probe when the step computes its request."""
        probe = self.probe
        if probe is None:
            return
        row = 0
        for item in ordered:
            if item.request_id == probe.request_id:
                probe.begin_step(self.num_steps, row, item.num_tokens, item.start,
                                 item.block_ids)
                meta.probe = probe
                return
            row += item.num_tokens

    @staticmethod
    def _end_probe(probe: ForwardProbe, logits: torch.Tensor,
                   sampled: list[ScheduledTokens]) -> None:
        """Keep the logits row the request's next token is drawn from: the last of its
        sampling rows (a verification chunk has one row per draft, plus one)."""
        row = 0
        for item in sampled:
            row += item.num_sample_rows
            if item.request_id == probe.request_id:
                probe.record_logits(logits[row - 1])
        probe.end_step()

    def forward_decode_rows(self, token_ids: list[int], positions: list[int],
                            block_tables: list[list[int]], num_layers: int) -> torch.Tensor:
        """Logits of single-token rows, each at its position attending to its table,
        after only the first `num_layers` layers (an early-exit draft). Their K/V go
        into those layers' slots, which the full model overwrites when it verifies."""
        bs = self.block_size
        width = max(len(t) for t in block_tables)
        padded = [t + [0] * (width - len(t)) for t in block_tables]
        slots = [t[p // bs] * bs + p % bs for t, p in zip(block_tables, positions, strict=True)]
        position_tensor = torch.tensor(positions, dtype=torch.long)
        meta = AttentionMetadata(slot_mapping=torch.tensor(slots, dtype=torch.long),
                                 cos=self.cos[position_tensor], sin=self.sin[position_tensor])
        set_decode_rows(meta, padded, [p + 1 for p in positions])
        with torch.inference_mode():
            hidden = self.model(torch.tensor(token_ids, dtype=torch.long), meta,
                                self.kv_caches, num_layers)
            return self.model.compute_logits(hidden, meta.num_decodes)

    def apply_swaps(self, out: SchedulerOutput) -> None:
        """Copy swapped-out blocks to their slots, then swapped-in slots to their new
        blocks, then shared blocks to their copy-on-write copies, before the forward
        pass may overwrite the blocks just freed."""
        if out.swap_out:
            assert self.swap_pool is not None
            blocks, slots = (torch.tensor(c) for c in zip(*out.swap_out, strict=True))
            self.swap_pool.index_copy_(2, slots, self.kv_pool.index_select(2, blocks))
        if out.swap_in:
            assert self.swap_pool is not None
            slots, blocks = (torch.tensor(c) for c in zip(*out.swap_in, strict=True))
            self.kv_pool.index_copy_(2, blocks, self.swap_pool.index_select(2, slots))
        if out.block_copies:  # copy-on-write: a shared block's private copy
            src, dst = (torch.tensor(c) for c in zip(*out.block_copies, strict=True))
            self.kv_pool.index_copy_(2, dst, self.kv_pool.index_select(2, src))

    def _prepare(self, ordered: list[ScheduledTokens]
                 ) -> tuple[torch.Tensor, AttentionMetadata, torch.Tensor, list[ScheduledTokens]]:
        bs = self.block_size
        token_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        sample_rows: list[int] = []
        sampled: list[ScheduledTokens] = []
        for item in ordered:
            begin, n = item.start, item.num_tokens
            token_ids.extend(item.token_ids)
            pos = range(begin, begin + n)
            positions.extend(pos)
            table = item.block_ids
            slots.extend(table[p // bs] * bs + p % bs for p in pos)
            if item.samples:
                end = len(token_ids)
                sample_rows.extend(range(end - item.num_sample_rows, end))
                sampled.append(item)
        position_tensor = torch.tensor(positions, dtype=torch.long)
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long),
            cos=self.cos[position_tensor],
            sin=self.sin[position_tensor],
        )
        self._begin_probe(meta, ordered)
        self._decode_metadata(meta, [s for s in ordered if s.is_decode])
        self._prefill_metadata(meta, [s for s in ordered if not s.is_decode])
        return (torch.tensor(token_ids, dtype=torch.long), meta,
                torch.tensor(sample_rows, dtype=torch.long), sampled)

    def _decode_metadata(self, meta: AttentionMetadata, decodes: list[ScheduledTokens]) -> None:
        """Each decode row attends to its own context. A chunk with drafts gives one
        row per token, each seeing one more position of the same table: verification
        then computes every row exactly as a plain decode step would, so greedy
        output with speculation equals output without, in bf16 too."""
        if not decodes:
            return
        width = max(len(d.block_ids) for d in decodes)
        tables: list[list[int]] = []
        context_lens: list[int] = []
        for d in decodes:
            padded = d.block_ids + [0] * (width - len(d.block_ids))
            for i in range(d.num_tokens):
                tables.append(padded)
                context_lens.append(d.start + 1 + i)
        set_decode_rows(meta, tables, context_lens)

    def _prefill_metadata(self, meta: AttentionMetadata,
                          prefills: list[ScheduledTokens]) -> None:
        row = meta.num_decodes
        for item in prefills:
            n, start = item.num_tokens, item.start
            mask = None
            if start > 0:
                query_pos = torch.arange(start, start + n)
                mask = torch.arange(start + n)[None, :] <= query_pos[:, None]
            meta.prefills.append(PrefillChunk(
                begin=row, end=row + n, start_pos=start,
                block_table=torch.tensor(item.block_ids, dtype=torch.long), mask=mask))
            row += n


def set_decode_rows(meta: AttentionMetadata, block_tables: list[list[int]],
                    context_lens: list[int]) -> None:
    """Describe the first rows of the batch as decode queries (equal-width tables)."""
    meta.num_decodes = len(context_lens)
    meta.decode_block_tables = torch.tensor(block_tables, dtype=torch.long)
    meta.decode_context_lens = torch.tensor(context_lens, dtype=torch.long)


def _prompt_logprob_rows(ordered: list[ScheduledTokens]
                         ) -> list[tuple[ScheduledTokens, int, int]]:
    """(item, first row, end row) of the flat batch whose logits give prompt logprobs:
    the rows of prompt positions that are followed by another prompt token."""
    spans = []
    row = 0
    for item in ordered:
        if item.num_prompt_logit_rows:
            spans.append((item, row, row + item.num_prompt_logit_rows))
        row += item.num_tokens
    return spans
