"""The numbers behind the "block-wise attention math" lesson.

One real query vector (a layer, a head, a prompt position) attends to the keys and
values that a real prefill wrote into the paged KV pool. The attention is worked out
three ways from the same numbers, in float32:

- block by block: each logical block's scores are read through the block table, then
  one softmax over every position weights the values;
- contiguously, as if the cache were one array (gathered by slot mapping);
- by online softmax, folding each block's partial result into a running max and
  rescaled sums, as paged-attention kernels do without ever holding all the scores.

All three agree to floating-point tolerance: that is what the lesson shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from kvscope.model.arch import ModelArch
from kvscope.model.loader import LoadedModel
from kvscope.model.probe import ForwardProbe
from kvscope.sampling_params import SamplingParams
from kvscope.scope.inside.common import (
    check_head,
    check_layer,
    is_int,
    lesson_engine,
    resolve_position,
    rounded,
    rounded_all,
    tokenize,
)

MAX_PROMPT_TOKENS = 256
MAX_BLOCK_SIZE = 64
_REQUEST_ID = "attention-math"


@dataclass(slots=True)
class _Prefill:
    """What one real prefill left behind for one layer."""

    queries: torch.Tensor  # [T, heads, head_dim]: the layer's post-RoPE q (float32), a row a token
    block_table: list[int]  # the request's physical blocks, in logical order
    k_cache: torch.Tensor  # [num_blocks, block_size, kv_heads, head_dim]: the layer's pool
    v_cache: torch.Tensor


@dataclass(slots=True)
class _Block:
    """One logical block as the query sees it: positions [start, end) of the context."""

    index: int
    block_id: int
    start: int
    end: int
    keys: torch.Tensor  # [end - start, head_dim] float32, read from the physical block
    values: torch.Tensor
    scores: torch.Tensor | None = None  # [end - start]: q·k × scale
    block_max: float = 0.0
    block_sum_exp: float = 0.0  # Σ exp(score − block_max)
    partial_output: torch.Tensor | None = None  # [head_dim]: the block's own softmax · V


def block_attention_math(loaded: LoadedModel, prompt: str, layer: int, head: int,
                         block_size: int = 16, position: int = -1) -> dict[str, Any]:
    """Prefill `prompt` in a private engine on `loaded`'s weights and work out the
    attention of query `position` (negative counts from the end: -1 = the last prompt
    token) at `layer`/`head` over the paged KV pool. Raises ValueError on bad input."""
    arch = loaded.arch
    _check_layout_args(arch, layer, head, block_size)
    token_ids = tokenize(loaded, prompt, MAX_PROMPT_TOKENS)
    position = resolve_position(position, len(token_ids))
    prefill = _run_prefill(loaded, token_ids, layer, block_size)
    kv_head = head // (arch.num_heads // arch.num_kv_heads)
    query = prefill.queries[position, head].float()
    scale = arch.head_dim ** -0.5
    blocks = _logical_blocks(prefill, kv_head, position + 1, block_size)
    for block in blocks:
        _score_block(block, query, scale)
    weights, blockwise = _one_softmax(blocks)
    online, running = _online_softmax(blocks)
    contiguous = _contiguous_attention(prefill, query, kv_head, position + 1, scale)
    return {
        "tokens": [loaded.tokenizer.decode([t]) for t in token_ids],
        "token_ids": token_ids, "position": position, "layer": layer, "head": head,
        "kv_head": kv_head, "head_dim": arch.head_dim, "scale": rounded(scale),
        "block_size": block_size, "block_table": prefill.block_table,
        "query": rounded_all(query),
        "blocks": [_block_json(b, m, z) for b, (m, z) in zip(blocks, running, strict=True)],
        "weights": rounded_all(weights),
        "output_blockwise": rounded_all(blockwise),
        "output_online": rounded_all(online),
        "output_contiguous": rounded_all(contiguous),
        "max_abs_diff": rounded((blockwise - contiguous).abs().max().item()),
        "max_abs_diff_online": rounded((online - blockwise).abs().max().item()),
    }


# -- input checks ---------------------------------------------------------------------


def _check_layout_args(arch: ModelArch, layer: int, head: int, block_size: int) -> None:
    check_layer(arch, layer)
    check_head(arch, head)
    if not is_int(block_size) or not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(
            f"block_size must be an integer in [1, {MAX_BLOCK_SIZE}]; got {block_size!r}")


# -- the real run -----------------------------------------------------------------------


def _run_prefill(loaded: LoadedModel, token_ids: list[int], layer: int,
                 block_size: int) -> _Prefill:
    """Prefill in a private engine with the query probe on. The shared model is only
    read, so engines in other threads running the same weights are not disturbed.
    Two tokens are asked for so that the block table is still held after the first
    step (the prefill, which samples token one)."""
    engine = lesson_engine(loaded, len(token_ids) + 2, block_size)
    probe = engine.runner.probe = ForwardProbe(_REQUEST_ID, layers={layer})
    params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True, detokenize=False)
    engine.add_request(_REQUEST_ID, token_ids, params)
    engine.step()
    queries = probe.steps[0].layer(layer)["q"]
    if queries.shape[0] != len(token_ids):
        raise RuntimeError(f"the prefill step ran {queries.shape[0]} of {len(token_ids)} tokens")
    table = engine.kv.block_ids(_REQUEST_ID)
    engine.abort_request(_REQUEST_ID)  # freed blocks keep their contents; we only read
    k_cache, v_cache = engine.runner.kv_caches[layer]
    return _Prefill(queries, table, k_cache, v_cache)


# -- the math ------------------------------------------------------------------------


def _logical_blocks(prefill: _Prefill, kv_head: int, length: int,
                    block_size: int) -> list[_Block]:
    """The blocks covering positions [0, length), each read from its physical block."""
    blocks = []
    for index, start in enumerate(range(0, length, block_size)):
        end = min(start + block_size, length)
        block_id = prefill.block_table[index]
        keys = prefill.k_cache[block_id, :end - start, kv_head].float()
        values = prefill.v_cache[block_id, :end - start, kv_head].float()
        blocks.append(_Block(index, block_id, start, end, keys, values))
    return blocks


def _score_block(block: _Block, query: torch.Tensor, scale: float) -> None:
    scores = block.keys @ query * scale
    block_max = scores.max()
    exp = torch.exp(scores - block_max)
    block.scores = scores
    block.block_max = block_max.item()
    block.block_sum_exp = exp.sum().item()
    block.partial_output = exp @ block.values / exp.sum()


def _one_softmax(blocks: list[_Block]) -> tuple[torch.Tensor, torch.Tensor]:
    """One softmax over every position's score, then Σ weight × value block by block."""
    weights = torch.softmax(torch.cat([b.scores for b in blocks]), dim=0)
    output = torch.stack([weights[b.start:b.end] @ b.values for b in blocks]).sum(0)
    return weights, output


def _online_softmax(blocks: list[_Block]
                    ) -> tuple[torch.Tensor, list[tuple[float, float]]]:
    """Fold the blocks' (max, sum of exp, partial output) in one pass: when the running
    max grows, what was summed so far is rescaled by exp(old max − new max). Returns
    the output and the running (max, sum of exp) after each block."""
    run_max, run_sum = -math.inf, 0.0
    output = torch.zeros_like(blocks[0].partial_output)
    running = []
    for block in blocks:
        new_max = max(run_max, block.block_max)
        old_weight = run_sum * math.exp(run_max - new_max)
        block_weight = block.block_sum_exp * math.exp(block.block_max - new_max)
        run_sum = old_weight + block_weight
        output = (output * old_weight + block.partial_output * block_weight) / run_sum
        run_max = new_max
        running.append((run_max, run_sum))
    return output, running


def _contiguous_attention(prefill: _Prefill, query: torch.Tensor, kv_head: int,
                          length: int, scale: float) -> torch.Tensor:
    """softmax(q Kᵀ × scale) V with K and V gathered into one array by slot mapping."""
    _, block_size, kv_heads, head_dim = prefill.k_cache.shape
    positions = torch.arange(length)
    table = torch.tensor(prefill.block_table, dtype=torch.long)
    slots = table[positions // block_size] * block_size + positions % block_size
    keys = prefill.k_cache.reshape(-1, kv_heads, head_dim)[slots, kv_head].float()
    values = prefill.v_cache.reshape(-1, kv_heads, head_dim)[slots, kv_head].float()
    return torch.softmax(keys @ query * scale, dim=0) @ values


# -- JSON ----------------------------------------------------------------------------


def _block_json(block: _Block, running_max: float, running_sum_exp: float) -> dict[str, Any]:
    return {
        "index": block.index, "block_id": block.block_id, "start": block.start,
        "end": block.end, "scores": rounded_all(block.scores),
        "block_max": rounded(block.block_max), "block_sum_exp": rounded(block.block_sum_exp),
        "partial_output": rounded_all(block.partial_output),
        "running_max": rounded(running_max), "running_sum_exp": rounded(running_sum_exp),
    }
