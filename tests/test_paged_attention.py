"""Paged attention equals dense attention.

The reference is plain torch SDPA over each request's contiguous K/V (the whole
context laid out in position order), with GQA expanded by repeating each KV head
and a mask that lets a query at position p see keys 0..p. The paged side reads the
same K/V through shuffled, non-contiguous block tables over a pool whose unused
slots hold large garbage values, so any read outside a request's context shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from kvscope.attention import cpu_backend
from kvscope.attention.cpu_backend import paged_attention
from kvscope.attention.metadata import AttentionMetadata, PrefillChunk
from kvscope.kernels.build import cpu_kernels
from kvscope.model.arch import ModelArch
from kvscope.model.llama import LlamaModel
from kvscope.request import Request
from kvscope.runner.model_runner import ModelRunner
from kvscope.sampling_params import SamplingParams
from kvscope.sched.output import ScheduledTokens
from kvscope.sched.scheduler import ScheduledRequest

HEADS, KV_HEADS, HEAD_DIM = 6, 2, 32  # 3 query heads share each KV head
NUM_BLOCKS = 48
GARBAGE_SCALE = 50.0

TOLERANCE = {
    torch.float32: {"atol": 2e-5, "rtol": 2e-5},
    torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2},
}


@pytest.fixture(params=["default", "torch"])
def decode_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Decodes and prefill chunks run through the compiled kernels when they build
    ("default"), and through the pure-torch fallback ("torch"): both must equal dense
    attention."""
    if request.param == "torch":
        monkeypatch.setattr(cpu_backend, "cpu_kernels", lambda: None)
    return request.param


@dataclass(slots=True)
class Piece:
    """One request's share of the step: positions [start, start + num_tokens)."""

    start: int
    num_tokens: int

    @property
    def context(self) -> int:
        return self.start + self.num_tokens

    @property
    def is_decode(self) -> bool:
        return self.num_tokens == 1 and self.start > 0


@dataclass(slots=True)
class Case:
    pieces: list[Piece]  # decodes first, then prefill chunks (the flat batch order)
    tables: list[list[int]]  # block table of each piece
    keys: list[torch.Tensor]  # [context, kv_heads, d] the full K of each request
    values: list[torch.Tensor]
    queries: list[torch.Tensor]  # [num_tokens, heads, d] queries of the step's tokens
    k_cache: torch.Tensor  # [num_blocks, block_size, kv_heads, d], history written in
    v_cache: torch.Tensor


def mixed_pieces(bs: int) -> list[Piece]:
    """Decodes whose context ends mid-block, fills a block exactly, or opens a new
    block; prefill chunks from 0 (partial and whole blocks) and continuing chunks
    that start on and off a block boundary and span several blocks."""
    decodes = [Piece(1, 1), Piece(bs - 1, 1), Piece(bs, 1), Piece(2 * bs - 1, 1),
               Piece(2 * bs + 5, 1)]
    prefills = [Piece(0, bs + 7), Piece(0, bs), Piece(bs, 9), Piece(bs + 5, 2 * bs + 3),
                Piece(3, 2)]
    return decodes + prefills


def block_tables(pieces: list[Piece], bs: int, gen: torch.Generator) -> list[list[int]]:
    """Hand out blocks from a shuffled pool, so tables are random and non-contiguous."""
    order = torch.randperm(NUM_BLOCKS, generator=gen).tolist()
    tables = []
    for piece in pieces:
        need = math.ceil(piece.context / bs)
        assert need <= len(order), "the pool is too small for this case"
        tables.append(order[:need])
        order = order[need:]
    return tables


def slot(table: list[int], position: int, bs: int) -> int:
    return table[position // bs] * bs + position % bs


def make_case(pieces: list[Piece], bs: int, dtype: torch.dtype, seed: int) -> Case:
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    tables = block_tables(pieces, bs, gen)
    pool_shape = (NUM_BLOCKS, bs, KV_HEADS, HEAD_DIM)
    k_cache = randn(*pool_shape, scale=GARBAGE_SCALE)
    v_cache = randn(*pool_shape, scale=GARBAGE_SCALE)
    keys, values, queries = [], [], []
    for piece, table in zip(pieces, tables, strict=True):
        k = randn(piece.context, KV_HEADS, HEAD_DIM)
        v = randn(piece.context, KV_HEADS, HEAD_DIM)
        for p in range(piece.start):  # what earlier steps already wrote
            k_cache.view(-1, KV_HEADS, HEAD_DIM)[slot(table, p, bs)] = k[p]
            v_cache.view(-1, KV_HEADS, HEAD_DIM)[slot(table, p, bs)] = v[p]
        keys.append(k)
        values.append(v)
        queries.append(randn(piece.num_tokens, HEADS, HEAD_DIM))
    return Case(pieces, tables, keys, values, queries, k_cache, v_cache)


def step_inputs(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The flat q [T, H, d] and the step's new k/v [T, kvh, d]."""
    q = torch.cat(case.queries)
    k = torch.cat([k[p.start:] for p, k in zip(case.pieces, case.keys, strict=True)])
    v = torch.cat([v[p.start:] for p, v in zip(case.pieces, case.values, strict=True)])
    return q, k, v


def hand_metadata(case: Case, bs: int) -> AttentionMetadata:
    """The metadata contract written out directly: slots per row, decode tables padded
    (with blocks of other requests, which the context lengths must hide), one chunk
    per prefill with a position mask when it does not start at 0."""
    slots = [slot(t, pos, bs) for p, t in zip(case.pieces, case.tables, strict=True)
             for pos in range(p.start, p.context)]
    total = len(slots)
    meta = AttentionMetadata(slot_mapping=torch.tensor(slots),
                             cos=torch.zeros(total, 1, HEAD_DIM),
                             sin=torch.zeros(total, 1, HEAD_DIM))
    decodes = [(p, t) for p, t in zip(case.pieces, case.tables, strict=True) if p.is_decode]
    if decodes:
        width = max(len(t) for _, t in decodes)
        filler = case.tables[-1]  # a foreign table: padding must be masked away
        rows = [t + [filler[i % len(filler)] for i in range(width - len(t))] for _, t in decodes]
        meta.num_decodes = len(decodes)
        meta.decode_block_tables = torch.tensor(rows)
        meta.decode_context_lens = torch.tensor([p.context for p, _ in decodes])
    row = len(decodes)
    for piece, table in zip(case.pieces, case.tables, strict=True):
        if piece.is_decode:
            continue
        mask = None
        if piece.start > 0:
            query_pos = torch.arange(piece.start, piece.context)
            mask = torch.arange(piece.context)[None, :] <= query_pos[:, None]
        meta.prefills.append(PrefillChunk(begin=row, end=row + piece.num_tokens,
                                          start_pos=piece.start,
                                          block_table=torch.tensor(table), mask=mask))
        row += piece.num_tokens
    return meta


def dense_attention(case: Case) -> torch.Tensor:
    """SDPA over contiguous K/V in float64: GQA expanded, causal by position."""
    group = HEADS // KV_HEADS
    outs = []
    for piece, q, k, v in zip(case.pieces, case.queries, case.keys, case.values, strict=True):
        keys = k.double().repeat_interleave(group, dim=1).transpose(0, 1)  # [H, ctx, d]
        values = v.double().repeat_interleave(group, dim=1).transpose(0, 1)
        query_pos = torch.arange(piece.start, piece.context)
        mask = torch.arange(piece.context)[None, :] <= query_pos[:, None]  # [n, ctx]
        out = F.scaled_dot_product_attention(q.double().transpose(0, 1), keys, values,
                                             attn_mask=mask)
        outs.append(out.transpose(0, 1))  # [n, H, d]
    return torch.cat(outs)


def reordered(case: Case, order: list[int]) -> Case:
    def pick(items: list) -> list:
        return [items[i] for i in order]

    return Case(pick(case.pieces), pick(case.tables), pick(case.keys), pick(case.values),
                pick(case.queries), case.k_cache, case.v_cache)


def sorted_for_flat_batch(pieces: list[Piece]) -> list[Piece]:
    return sorted(pieces, key=lambda p: not p.is_decode)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("block_size", [16, 8])
def test_mixed_batch_matches_dense_attention(block_size: int, dtype: torch.dtype,
                                            decode_backend: str) -> None:
    case = make_case(mixed_pieces(block_size), block_size, dtype, seed=block_size)
    q, k, v = step_inputs(case)
    meta = hand_metadata(case, block_size)
    assert meta.num_decodes == 5 and len(meta.prefills) == 5

    out = paged_attention(q, k, v, case.k_cache, case.v_cache, meta)

    assert out.shape == (q.shape[0], HEADS, HEAD_DIM)
    assert out.dtype == dtype
    expected = dense_attention(case)
    torch.testing.assert_close(out.double(), expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("pieces", [
    [Piece(1, 1), Piece(15, 1), Piece(16, 1), Piece(40, 1)],  # decodes only
    [Piece(0, 33)],  # one prefill from 0
    [Piece(16, 16), Piece(20, 7)],  # continuing chunks only
], ids=["decodes", "fresh-prefill", "continuing-chunks"])
def test_single_kind_batches_match_dense_attention(pieces: list[Piece],
                                                   decode_backend: str) -> None:
    case = make_case(pieces, 16, torch.float32, seed=len(pieces))
    q, k, v = step_inputs(case)
    out = paged_attention(q, k, v, case.k_cache, case.v_cache, hand_metadata(case, 16))
    torch.testing.assert_close(out.double(), dense_attention(case), **TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_new_kv_lands_in_exactly_the_mapped_slots(dtype: torch.dtype) -> None:
    bs = 16
    case = make_case(mixed_pieces(bs), bs, dtype, seed=7)
    q, k, v = step_inputs(case)
    meta = hand_metadata(case, bs)
    k_before, v_before = case.k_cache.clone(), case.v_cache.clone()

    paged_attention(q, k, v, case.k_cache, case.v_cache, meta)

    row = 0
    written = torch.zeros(NUM_BLOCKS, bs, dtype=torch.bool)
    for piece, table in zip(case.pieces, case.tables, strict=True):
        for pos in range(piece.start, piece.context):
            block, offset = table[pos // bs], pos % bs
            assert meta.slot_mapping[row].item() == block * bs + offset
            assert torch.equal(case.k_cache[block, offset], k[row])
            assert torch.equal(case.v_cache[block, offset], v[row])
            written[block, offset] = True
            row += 1
    assert row == q.shape[0]
    # every other slot of the pool is untouched
    assert torch.equal(case.k_cache[~written], k_before[~written])
    assert torch.equal(case.v_cache[~written], v_before[~written])


# -- the same check, with the metadata built by the real ModelRunner -----------------

def tiny_runner(block_size: int, dtype: torch.dtype) -> ModelRunner:
    arch = ModelArch(architecture="llama", vocab_size=64, hidden_size=HEADS * HEAD_DIM,
                     intermediate_size=64, num_layers=1, num_heads=HEADS, num_kv_heads=KV_HEADS,
                     head_dim=HEAD_DIM, rope_theta=10000.0, rms_norm_eps=1e-6,
                     max_position_embeddings=512, tie_word_embeddings=True,
                     attention_bias=False, bos_token_id=None, eos_token_ids=())
    return ModelRunner(LlamaModel(arch), NUM_BLOCKS, block_size, 512, dtype)


def scheduled(pieces: list[Piece], tables: list[list[int]]) -> list[ScheduledTokens]:
    """The step's chunks as the scheduler hands them to the runner; a prefill chunk that
    stops short of the prompt's end belongs to a longer prompt (and does not sample)."""
    items = []
    for i, (piece, table) in enumerate(zip(pieces, tables, strict=True)):
        known = piece.context + (0 if piece.is_decode or i % 2 else 4)
        request = Request(f"r{i}", list(range(known)), SamplingParams(max_tokens=4))
        items.append(ScheduledRequest(request, piece.start, piece.num_tokens,
                                      list(table)).tokens())
    return items


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_runner_metadata_matches_dense_attention(dtype: torch.dtype,
                                                decode_backend: str) -> None:
    bs = 16
    pieces = sorted_for_flat_batch(mixed_pieces(bs))
    case = make_case(pieces, bs, dtype, seed=11)
    items = scheduled(pieces, case.tables)
    runner = tiny_runner(bs, dtype)
    k_cache, v_cache = runner.kv_caches[0]
    k_cache.copy_(case.k_cache)
    v_cache.copy_(case.v_cache)
    shuffled = [items[i] for i in torch.randperm(len(items), generator=torch.Generator()
                                                 .manual_seed(3)).tolist()]
    ordered = sorted(shuffled, key=lambda s: not s.is_decode)  # as ModelRunner.execute does
    case = reordered(case, [items.index(s) for s in ordered])

    input_ids, meta, sample_rows, sampled = runner._prepare(ordered)

    expected_slots = [slot(t, pos, bs) for p, t in zip(case.pieces, case.tables, strict=True)
                      for pos in range(p.start, p.context)]
    assert meta.slot_mapping.tolist() == expected_slots
    assert input_ids.tolist() == [tok for p in case.pieces for tok in range(p.start, p.context)]
    ends = torch.tensor([p.num_tokens for p in case.pieces]).cumsum(0) - 1
    want_rows = [int(e) for e, s in zip(ends, ordered, strict=True) if s.samples]
    assert sample_rows.tolist() == want_rows
    assert [s.request_id for s in sampled] == [s.request_id for s in ordered if s.samples]
    assert meta.num_decodes == sum(p.is_decode for p in pieces)

    q, k, v = step_inputs(case)
    out = paged_attention(q, k, v, k_cache, v_cache, meta)

    assert out.shape == (q.shape[0], HEADS, HEAD_DIM)
    torch.testing.assert_close(out.double(), dense_attention(case), **TOLERANCE[dtype])


# -- the prefill kernel inside the engine --------------------------------------------

ENGINE_PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "Photosynthesis is the process by which green plants use sunlight to make food from "
    "carbon dioxide and water. During this process, the plant releases oxygen into the air. "
    "The green pigment that captures the light is called",
    "A recipe for pancakes: mix two cups of flour, two eggs, a cup and a half of milk, a "
    "spoon of sugar and a pinch of salt. Heat a pan with a little butter, pour in a ladle of "
    "batter, and cook until bubbles form on the surface. Then flip the pancake and cook the "
    "other side for another minute. Serve warm with maple syrup, fresh berries or a spoon of",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
]


class CountingKernels:
    """The compiled module, counting calls of the prefill kernel."""

    def __init__(self, module) -> None:
        self.module = module
        self.prefill_calls = 0

    def paged_prefill_attention(self, *args):
        self.prefill_calls += 1
        return self.module.paged_prefill_attention(*args)

    def __getattr__(self, name: str):
        return getattr(self.module, name)


@pytest.mark.skipif(cpu_kernels() is None, reason="C++ kernels could not be built here")
@pytest.mark.parametrize("max_batched", [2048, 24], ids=["whole-prompts", "chunked"])
def test_engine_greedy_tokens_same_with_torch_attention(make_llm, max_batched: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 greedy decoding gives the same tokens whether attention runs through the
    kernels or the torch fallback; with a small token budget, long prompts are prefilled
    in chunks that start mid-context while other requests decode."""
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    counting = CountingKernels(cpu_kernels())
    monkeypatch.setattr(cpu_backend, "cpu_kernels", lambda: counting)
    with_kernels = make_llm(max_num_batched_tokens=max_batched).generate(ENGINE_PROMPTS, greedy)
    assert counting.prefill_calls > 0
    monkeypatch.setattr(cpu_backend, "cpu_kernels", lambda: None)
    with_torch = make_llm(max_num_batched_tokens=max_batched).generate(ENGINE_PROMPTS, greedy)
    assert ([o.outputs[0].token_ids for o in with_kernels]
            == [o.outputs[0].token_ids for o in with_torch])
