"""Tensor-parallel sharding on random weights: how heads, neurons and the vocabulary
split (even, replicated and uneven KV groups), and that every sharded layer equals its
unsharded twin: column-parallel outputs concatenate to the full ones, row-parallel
partial sums and embedding lookups add up to them, LM-head columns concatenate.

Each rank's shard is built in this process with a one-rank group, so a row-parallel
layer returns its partial sum unreduced and the test adds the partials (what the
all-reduce does across processes; tests/test_tensor_parallel.py runs the real one)."""

from __future__ import annotations

import pytest
import torch

from kvscope.distributed.group import TPGroup
from kvscope.distributed.parallel_layers import shard_model
from kvscope.distributed.partition import Partition, PartitionError, Range, partition
from kvscope.model.arch import ModelArch
from kvscope.model.llama import LlamaModel

HEAD_DIM = 8


def tiny_arch(heads: int, kv_heads: int, intermediate: int = 36, vocab: int = 101,
              bias: bool = False) -> ModelArch:
    return ModelArch(architecture="llama", vocab_size=vocab, hidden_size=48,
                     intermediate_size=intermediate, num_layers=2, num_heads=heads,
                     num_kv_heads=kv_heads, head_dim=HEAD_DIM, rope_theta=10000.0,
                     rms_norm_eps=1e-6, max_position_embeddings=64, tie_word_embeddings=True,
                     attention_bias=bias, bos_token_id=None, eos_token_ids=())


def random_model(arch: ModelArch, seed: int = 0) -> LlamaModel:
    generator = torch.Generator().manual_seed(seed)
    model = LlamaModel(arch)
    q, kv = arch.num_heads * HEAD_DIM, arch.num_kv_heads * HEAD_DIM
    weights = {"model.embed_tokens.weight": (arch.vocab_size, arch.hidden_size),
               "model.norm.weight": (arch.hidden_size,)}
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        weights |= {p + "self_attn.q_proj.weight": (q, arch.hidden_size),
                    p + "self_attn.k_proj.weight": (kv, arch.hidden_size),
                    p + "self_attn.v_proj.weight": (kv, arch.hidden_size),
                    p + "self_attn.o_proj.weight": (arch.hidden_size, q),
                    p + "mlp.gate_proj.weight": (arch.intermediate_size, arch.hidden_size),
                    p + "mlp.up_proj.weight": (arch.intermediate_size, arch.hidden_size),
                    p + "mlp.down_proj.weight": (arch.hidden_size, arch.intermediate_size),
                    p + "input_layernorm.weight": (arch.hidden_size,),
                    p + "post_attention_layernorm.weight": (arch.hidden_size,)}
        if arch.attention_bias:
            weights |= {p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                        p + "self_attn.v_proj.bias": (kv,)}
    model.load_hf_weights({name: torch.randn(shape, generator=generator)
                           for name, shape in weights.items()}, torch.float32)
    return model.eval()


def test_the_bundled_model_splits_unevenly_by_kv_group_at_tp2():
    plan = partition(num_heads=9, num_kv_heads=3, intermediate_size=1536, vocab_size=49152,
                     tp=2)
    assert plan.kind == "uneven"
    assert [(s.q_heads, s.kv_heads) for s in plan.shards] == [
        (Range(0, 6), Range(0, 2)), (Range(6, 9), Range(2, 3))]
    assert [s.intermediate for s in plan.shards] == [Range(0, 768), Range(768, 1536)]
    assert [s.vocab for s in plan.shards] == [Range(0, 24576), Range(24576, 49152)]


@pytest.mark.parametrize(("heads", "kv", "tp", "kind", "q", "kvh"), [
    (14, 2, 2, "even", [(0, 7), (7, 14)], [(0, 1), (1, 2)]),
    (8, 2, 4, "replicated", [(0, 2), (2, 4), (4, 6), (6, 8)], [(0, 1), (0, 1), (1, 2), (1, 2)]),
    (12, 4, 3, "uneven", [(0, 6), (6, 9), (9, 12)], [(0, 2), (2, 3), (3, 4)]),
    (9, 3, 3, "even", [(0, 3), (3, 6), (6, 9)], [(0, 1), (1, 2), (2, 3)]),
    (9, 3, 1, "single", [(0, 9)], [(0, 3)]),
])
def test_head_partitions(heads, kv, tp, kind, q, kvh):
    plan = partition(heads, kv, 64, 100, tp)
    assert plan.kind == kind
    assert [(s.q_heads.start, s.q_heads.stop) for s in plan.shards] == q
    assert [(s.kv_heads.start, s.kv_heads.stop) for s in plan.shards] == kvh


@pytest.mark.parametrize(("heads", "kv", "tp", "message"), [
    (9, 3, 4, "9 query heads and 3 KV heads: tensor_parallel_size 4"),
    (14, 2, 4, "14 query heads and 2 KV heads: tensor_parallel_size 4"),
    (9, 3, 0, "at least 1"),
])
def test_a_split_that_cannot_be_made_names_the_head_counts(heads, kv, tp, message):
    with pytest.raises(PartitionError, match=message):
        partition(heads, kv, 64, 100, tp)


def rank_models(full: LlamaModel, tp: int) -> tuple[list[LlamaModel], Partition]:
    arch = full.arch
    plan = partition(arch.num_heads, arch.num_kv_heads, arch.intermediate_size,
                     arch.vocab_size, tp)
    return [shard_model(full, plan, rank, TPGroup.single()) for rank in range(tp)], plan


ARCHS = {"even": (12, 4, 2), "uneven-tp2": (9, 3, 2), "uneven-tp3": (12, 4, 3),
         "replicated": (12, 2, 4), "even-tp3-bias": (9, 3, 3)}


@pytest.mark.parametrize("name", list(ARCHS))
def test_every_sharded_layer_equals_its_unsharded_twin(name):
    heads, kv, tp = ARCHS[name]
    arch = tiny_arch(heads, kv, bias=name.endswith("bias"))
    full = random_model(arch)
    ranks, plan = rank_models(full, tp)
    x = torch.randn(5, arch.hidden_size, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([0, 7, 50, 51, 100, 33])
    # embedding: every id comes from exactly one rank
    assert torch.allclose(sum(m.embed_tokens(ids) for m in ranks), full.embed_tokens(ids))
    # LM head: each rank's logit columns, in vocabulary order
    logits = torch.cat([m.lm_head(x) for m in ranks], dim=-1)
    assert logits.shape == (5, arch.vocab_size)
    assert torch.allclose(logits, full.lm_head(x), atol=1e-5)
    for layer_index in range(arch.num_layers):
        theirs = full.layers[layer_index]
        q_full, k_full, v_full = theirs.self_attn.qkv_proj(x).split(
            [heads * HEAD_DIM, kv * HEAD_DIM, kv * HEAD_DIM], dim=-1)
        attn_in = torch.randn(5, heads * HEAD_DIM, generator=torch.Generator().manual_seed(2))
        mlp_in = torch.randn(5, arch.intermediate_size,
                             generator=torch.Generator().manual_seed(3))
        o_partials, down_partials, gates, ups = [], [], [], []
        for shard, model in zip(plan.shards, ranks, strict=True):
            ours = model.layers[layer_index]
            nq, nkv = shard.q_heads.size * HEAD_DIM, shard.kv_heads.size * HEAD_DIM
            q, k, v = ours.self_attn.qkv_proj(x).split([nq, nkv, nkv], dim=-1)
            cols = slice(shard.q_heads.start * HEAD_DIM, shard.q_heads.stop * HEAD_DIM)
            kv_cols = slice(shard.kv_heads.start * HEAD_DIM, shard.kv_heads.stop * HEAD_DIM)
            assert torch.allclose(q, q_full[:, cols], atol=1e-5)
            assert torch.allclose(k, k_full[:, kv_cols], atol=1e-5)
            assert torch.allclose(v, v_full[:, kv_cols], atol=1e-5)
            o_partials.append(ours.self_attn.o_proj(attn_in[:, cols]))
            gate, up = ours.mlp.gate_up_proj(x).chunk(2, dim=-1)
            gates.append(gate)
            ups.append(up)
            down_partials.append(ours.mlp.down_proj(mlp_in[:, shard.intermediate.as_slice()]))
        assert torch.allclose(sum(o_partials), theirs.self_attn.o_proj(attn_in), atol=1e-4)
        gate_full, up_full = theirs.mlp.gate_up_proj(x).chunk(2, dim=-1)
        assert torch.allclose(torch.cat(gates, dim=-1), gate_full, atol=1e-5)
        assert torch.allclose(torch.cat(ups, dim=-1), up_full, atol=1e-5)
        assert torch.allclose(sum(down_partials), theirs.mlp.down_proj(mlp_in), atol=1e-4)
