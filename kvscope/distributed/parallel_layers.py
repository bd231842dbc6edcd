"""A rank's share of a Llama-family model, built from the unsharded one.

Column-parallel layers (q/k/v, gate/up) keep the output rows of their rank's heads or
neurons and need no communication; row-parallel layers (o_proj, down_proj) keep the
matching input columns, so each rank computes a partial sum and one all-reduce adds
them: two all-reduces per layer. The embedding is split by vocabulary (each rank looks
up the ids in its range, zeros elsewhere, one all-reduce), and so is the LM head (each
rank's logits columns, gathered). Norms are replicated.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kvscope.distributed.group import TPGroup
from kvscope.distributed.partition import Partition, Range, RankShard
from kvscope.model.layers.linear import Linear
from kvscope.model.llama import LlamaModel


class RowParallelLinear(Linear):
    """A linear over this rank's input columns, summed over the ranks. With `watch` set
    (the scope's lesson) it keeps its last call's last row: this rank's input slice,
    its partial sum, and the all-reduced sum, with the time of each part."""

    WATCHED_DIMS = 8  # the leading output dimensions kept

    def __init__(self, weight: torch.Tensor, group: TPGroup, name: str = "") -> None:
        super().__init__(weight.shape[1], weight.shape[0])
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.group = group
        self.name = name
        self.watch = False
        self.watched: dict[str, Any] | None = None

    def forward(self, x: torch.Tensor, num_decode_rows: int = 0) -> torch.Tensor:
        if not self.watch:
            return self.group.all_reduce(super().forward(x, num_decode_rows))
        start = time.perf_counter()
        partial = super().forward(x, num_decode_rows)
        matmul_s = time.perf_counter() - start
        kept = partial[-1, :self.WATCHED_DIMS].float().tolist()
        start = time.perf_counter()
        out = self.group.all_reduce(partial)
        self.watched = {"input_columns": x.shape[-1], "input_head": x[-1, :4].float().tolist(),
                        "partial": kept, "reduced": out[-1, :self.WATCHED_DIMS].float().tolist(),
                        "matmul_ms": matmul_s * 1e3,
                        "all_reduce_ms": (time.perf_counter() - start) * 1e3}
        return out


class VocabParallelEmbedding(nn.Module):
    """The embedding rows of this rank's vocabulary range; other ids give zeros, and
    the all-reduce fills each row from the rank that holds it."""

    def __init__(self, weight: torch.Tensor, vocab: Range, group: TPGroup) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.vocab = vocab
        self.group = group

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        outside = (input_ids < self.vocab.start) | (input_ids >= self.vocab.stop)
        local = (input_ids - self.vocab.start).masked_fill(outside, 0)
        rows = F.embedding(local, self.weight)
        rows.masked_fill_(outside[:, None], 0)
        return self.group.all_reduce(rows)


class ParallelLMHead(Linear):
    """The logits of this rank's vocabulary range, gathered from every rank."""

    def __init__(self, weight: torch.Tensor, vocab_sizes: list[int], group: TPGroup) -> None:
        super().__init__(weight.shape[1], weight.shape[0])
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.vocab_sizes = vocab_sizes
        self.group = group

    def forward(self, x: torch.Tensor, num_decode_rows: int = 0) -> torch.Tensor:
        local = super().forward(x, num_decode_rows)
        return self.group.all_gather_last_dim(local, self.vocab_sizes)


def shard_model(full: LlamaModel, plan: Partition, rank: int, group: TPGroup) -> LlamaModel:
    """Rank `rank`'s share of `full` (whose weights it copies, so `full` can be freed)."""
    shard = plan.shards[rank]
    arch = full.arch
    local_arch = dataclasses.replace(arch, num_heads=shard.q_heads.size,
                                     num_kv_heads=shard.kv_heads.size,
                                     intermediate_size=shard.intermediate.size)
    model = LlamaModel(local_arch)
    model.arch = dataclasses.replace(local_arch, vocab_size=arch.vocab_size)
    state = _shard_state(full, shard, arch.head_dim)
    model.load_state_dict(state, strict=False, assign=True)
    vocab_weight = _rows(full.embed_tokens.weight, shard.vocab)
    model.embed_tokens = VocabParallelEmbedding(vocab_weight, shard.vocab, group)
    for ours, theirs in zip(model.layers, full.layers, strict=True):
        ours.self_attn.o_proj = RowParallelLinear(
            _columns(theirs.self_attn.o_proj.weight, _heads(shard.q_heads, arch.head_dim)),
            group, "o_proj")
        ours.mlp.down_proj = RowParallelLinear(
            _columns(theirs.mlp.down_proj.weight, shard.intermediate), group, "down_proj")
    assert full.lm_head is not None
    model.lm_head = ParallelLMHead(_rows(full.lm_head.weight, shard.vocab),
                                   [s.vocab.size for s in plan.shards], group)
    for module in model.modules():
        if isinstance(module, Linear):
            module.pack()
    return model.eval()


def _shard_state(full: LlamaModel, shard: RankShard, head_dim: int) -> dict[str, torch.Tensor]:
    """The column-parallel weights (fused q/k/v and gate/up) and the norms of a rank."""
    arch = full.arch
    q_rows = _heads(shard.q_heads, head_dim)
    k_rows = _offset(_heads(shard.kv_heads, head_dim), arch.num_heads * head_dim)
    v_rows = _offset(k_rows, arch.num_kv_heads * head_dim)
    gate, up = shard.intermediate, _offset(shard.intermediate, arch.intermediate_size)
    state: dict[str, torch.Tensor] = {"norm.weight": full.norm.weight.detach().clone()}
    for i, layer in enumerate(full.layers):
        prefix = f"layers.{i}."
        attn = layer.self_attn
        state[prefix + "self_attn.qkv_proj.weight"] = _rows(attn.qkv_proj.weight,
                                                            q_rows, k_rows, v_rows)
        if attn.qkv_proj.bias is not None:
            state[prefix + "self_attn.qkv_proj.bias"] = _rows(attn.qkv_proj.bias,
                                                              q_rows, k_rows, v_rows)
        state[prefix + "mlp.gate_up_proj.weight"] = _rows(layer.mlp.gate_up_proj.weight,
                                                          gate, up)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            state[prefix + norm + ".weight"] = getattr(layer, norm).weight.detach().clone()
    return state


def _heads(heads: Range, head_dim: int) -> Range:
    return Range(heads.start * head_dim, heads.stop * head_dim)


def _offset(r: Range, by: int) -> Range:
    return Range(r.start + by, r.stop + by)


def _rows(tensor: torch.Tensor, *ranges: Range) -> torch.Tensor:
    return torch.cat([tensor.detach()[r.as_slice()] for r in ranges]).contiguous()


def _columns(tensor: torch.Tensor, r: Range) -> torch.Tensor:
    return tensor.detach()[:, r.as_slice()].contiguous()
