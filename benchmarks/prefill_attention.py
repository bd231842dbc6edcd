"""Prefill attention of one layer: the C++ kernel beside the torch (SDPA) fallback.

Both run `kvscope.attention.cpu_backend.paged_attention` on the same step: the same
paged KV pool, shuffled block tables, metadata laid out as the model runner lays it
out (decodes first, then prefill chunks), SmolLM2-135M's attention shape (9 query
heads, 3 KV heads, head dim 64, blocks of 16). One call is one layer of one step; the
model has 30 layers. The fallback is the torch path that runs without the kernels:
one SDPA call per chunk, with a gather and a position mask for a chunk that continues
a prompt (decodes go through their own kernel on both sides). Both sides include
writing the step's K/V into the pool.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/prefill_attention.py

Each figure is the minimum over --reps timed calls, the two paths alternating, so
other work on the machine inflates both alike and the minimum stays near the
undisturbed time. The table goes to stdout.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without an install
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from kvscope.attention import cpu_backend  # noqa: E402
from kvscope.attention.metadata import AttentionMetadata, PrefillChunk  # noqa: E402
from kvscope.kernels.build import cpu_kernels  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 9, 3, 64, 16
LAYERS = 30


@dataclass(frozen=True)
class Shape:
    name: str
    chunks: tuple[tuple[int, int], ...]  # (start position, tokens) of each prefill chunk
    decodes: tuple[int, ...] = ()  # context length of each decode in front

    @property
    def tokens(self) -> int:
        return len(self.decodes) + sum(n for _, n in self.chunks)


SHAPES = [
    Shape("4 x 512 from 0", ((0, 512),) * 4),
    Shape("16 x 128 from 0", ((0, 128),) * 16),
    Shape("256 at 1024", ((1024, 256),)),
    Shape("2 x 1024 at 1024", ((1024, 1024),) * 2),
    Shape("mixed: 6 chunks", ((0, 500), (300, 200), (0, 20), (0, 77), (1000, 251), (0, 1000))),
    Shape("mixed + 32 decodes", ((0, 400), (512, 300), (0, 64), (128, 200), (0, 20), (900, 100)),
          decodes=tuple(range(100, 900, 25))),
]


def build_step(shape: Shape, dtype: torch.dtype, seed: int = 0):
    """q, k, v of the step's rows, the layer's KV pool with each request's history
    written in, and metadata as ModelRunner builds it."""
    gen = torch.Generator().manual_seed(seed)
    pieces = [(ctx - 1, 1) for ctx in shape.decodes] + list(shape.chunks)
    blocks = sum(math.ceil((start + n) / BLOCK) for start, n in pieces) + 1
    k_cache = torch.randn(blocks, BLOCK, KV_HEADS, HEAD_DIM, generator=gen).to(dtype)
    v_cache = torch.randn(blocks, BLOCK, KV_HEADS, HEAD_DIM, generator=gen).to(dtype)
    order = torch.randperm(blocks, generator=gen).tolist()
    tables, slots = [], []
    for start, n in pieces:
        need = math.ceil((start + n) / BLOCK)
        tables.append(order[:need])
        order = order[need:]
        slots += [tables[-1][p // BLOCK] * BLOCK + p % BLOCK for p in range(start, start + n)]
    rows = shape.tokens
    qkv = torch.randn(rows, (HEADS + 2 * KV_HEADS) * HEAD_DIM, generator=gen).to(dtype)
    q, k, v = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
    meta = AttentionMetadata(slot_mapping=torch.tensor(slots), cos=torch.empty(0),
                             sin=torch.empty(0))
    if shape.decodes:
        num = len(shape.decodes)
        width = max(len(t) for t in tables[:num])
        meta.num_decodes = num
        meta.decode_block_tables = torch.tensor([t + [0] * (width - len(t))
                                                 for t in tables[:num]])
        meta.decode_context_lens = torch.tensor(shape.decodes)
    row = len(shape.decodes)
    for (start, n), table in zip(shape.chunks, tables[len(shape.decodes):], strict=True):
        mask = None
        if start > 0:
            mask = torch.arange(start + n)[None, :] <= torch.arange(start, start + n)[:, None]
        meta.prefills.append(PrefillChunk(begin=row, end=row + n, start_pos=start,
                                          block_table=torch.tensor(table), mask=mask))
        row += n
    return (q.view(rows, HEADS, HEAD_DIM), k.view(rows, KV_HEADS, HEAD_DIM),
            v.view(rows, KV_HEADS, HEAD_DIM), k_cache, v_cache, meta)


def flops(shape: Shape) -> float:
    """Multiply-adds of QK^T and PV over the visible keys, x2."""
    visible = sum(start * n + n * (n + 1) / 2 for start, n in shape.chunks) + sum(shape.decodes)
    return 4 * HEADS * HEAD_DIM * visible


def fastest(calls: dict[str, Callable[[], torch.Tensor]], reps: int) -> dict[str, float]:
    best = dict.fromkeys(calls, math.inf)
    for call in calls.values():  # warm-up
        call()
    for _ in range(reps):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: seconds * 1e3 for name, seconds in best.items()}


def kernel_bench_setup(description: str, reps: int) -> tuple[argparse.Namespace, Any]:
    """The attention benchmarks' arguments (--reps, --threads, --dtypes), torch's thread
    count set from them, and the kernel module (exits where there is none)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--reps", type=int, default=reps, help="timed calls per path")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", default="bfloat16,float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernels = cpu_kernels()
    if kernels is None:
        sys.exit("the C++ kernels are not available (no compiler, or KVSCOPE_NO_KERNELS=1)")
    return args, kernels


def main() -> None:
    args, _ = kernel_bench_setup(__doc__.split("\n\n")[0], reps=15)
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("note: OMP_WAIT_POLICY=PASSIVE is recommended", file=sys.stderr)

    def sdpa_path(q, k, v, k_cache, v_cache, meta) -> Callable[[], torch.Tensor]:
        """What paged_attention ran before the prefill kernel: decodes by their kernel,
        one SDPA call per prefill chunk."""
        def call() -> torch.Tensor:
            cpu_backend.write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
            return cpu_backend._prefills_torch(q, k, v, k_cache, v_cache, meta)
        return call

    def kernel_path(q, k, v, k_cache, v_cache, meta) -> Callable[[], torch.Tensor]:
        return lambda: cpu_backend.paged_attention(q, k, v, k_cache, v_cache, meta)

    print(f"prefill attention, one layer ({HEADS} heads, {KV_HEADS} KV heads, head dim "
          f"{HEAD_DIM}, blocks of {BLOCK}), {args.threads} threads, min of {args.reps}")
    header = (f"{'step':<20} {'dtype':<9} {'tokens':>6} {'SDPA ms':>9} {'kernel ms':>10} "
              f"{'speedup':>8} {'kernel GFLOP/s':>15} {'max |diff|':>11}")
    print(header)
    print("-" * len(header))
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for shape in SHAPES:
            step = build_step(shape, dtype)
            calls = {"sdpa": sdpa_path(*step), "kernel": kernel_path(*step)}
            diff = (calls["sdpa"]().float() - calls["kernel"]().float()).abs().max().item()
            ms = fastest(calls, args.reps)
            print(f"{shape.name:<20} {dtype_name:<9} {shape.tokens:>6} {ms['sdpa']:>9.2f} "
                  f"{ms['kernel']:>10.2f} {ms['sdpa'] / ms['kernel']:>7.2f}x "
                  f"{flops(shape) / ms['kernel'] / 1e6:>15.0f} {diff:>11.1e}", flush=True)


if __name__ == "__main__":
    main()
