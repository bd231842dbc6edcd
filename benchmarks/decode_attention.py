"""Decode attention of one layer: the C++ kernel beside the torch fallback and the
memory floor.

Each step is a batch of single-token decodes over a paged KV pool with shuffled block
tables, SmolLM2-135M's attention shape (9 query heads, 3 KV heads, head dim 64, blocks
of 16); one call is one layer of one step (the model has 30). The torch fallback is
what runs without the kernels (a gather of every context, then two einsums). The
floor is the time to stream the K/V bytes the step reads at the copy bandwidth this
run measures (`cpu_matrix.memory_bandwidth`): a decode step cannot read its cache
faster than that from memory, so "of floor" says how close the kernel is to the
machine's limit. A step whose K/V fits in the last-level cache (the small shapes: the
same pool is read on every call) can pass 100%; in a model the cache of the other 29
layers has evicted it, so the large shapes are the ones to read.

    .venv/bin/python benchmarks/decode_attention.py

Each figure is the minimum over --reps timed calls, the paths alternating, so other
work on the machine inflates both alike. The table goes to stdout.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without an install
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from benchmarks.cpu_matrix import memory_bandwidth  # noqa: E402
from benchmarks.prefill_attention import fastest, kernel_bench_setup  # noqa: E402
from kvscope.attention import cpu_backend  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 9, 3, 64, 16


@dataclass(frozen=True)
class Shape:
    name: str
    contexts: tuple[int, ...]  # context length of each decode


SHAPES = [
    Shape("1 x 128", (128,)),
    Shape("1 x 2048", (2048,)),
    Shape("16 x 512", (512,) * 16),
    Shape("64 x 32..640", tuple(range(32, 672, 10))),
    Shape("64 x 1024", (1024,) * 64),
]


def build_step(shape: Shape, dtype: torch.dtype, seed: int = 0):
    """q of the step, the layer's pool with each request's history, block tables and
    context lengths as the model runner passes them."""
    gen = torch.Generator().manual_seed(seed)
    needs = [math.ceil(ctx / BLOCK) for ctx in shape.contexts]
    blocks = sum(needs) + 1
    k_cache = torch.randn(blocks, BLOCK, KV_HEADS, HEAD_DIM, generator=gen).to(dtype)
    v_cache = torch.randn(blocks, BLOCK, KV_HEADS, HEAD_DIM, generator=gen).to(dtype)
    order = torch.randperm(blocks, generator=gen).tolist()
    width = max(needs)
    tables = []
    for need in needs:
        tables.append(order[:need] + [0] * (width - need))
        order = order[need:]
    q = torch.randn(len(shape.contexts), HEADS, HEAD_DIM, generator=gen).to(dtype)
    return q, k_cache, v_cache, torch.tensor(tables), torch.tensor(shape.contexts)


def kv_bytes(shape: Shape, dtype: torch.dtype) -> int:
    """K and V bytes the step reads: every cached token's row of every KV head."""
    return 2 * sum(shape.contexts) * KV_HEADS * HEAD_DIM * dtype.itemsize


def main() -> None:
    args, kernel = kernel_bench_setup(__doc__.split("\n\n")[0], reps=30)
    bandwidth = memory_bandwidth()
    print(f"decode attention, one layer ({HEADS} heads, {KV_HEADS} KV heads, head dim "
          f"{HEAD_DIM}, blocks of {BLOCK}), {args.threads} threads, min of {args.reps}; "
          f"kernels {kernel.isa()}, copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    header = (f"{'step':<14} {'dtype':<9} {'KV MB':>6} {'torch ms':>9} {'kernel ms':>10} "
              f"{'floor ms':>9} {'vs torch':>9} {'of floor':>9} {'kernel GB/s':>12} "
              f"{'max |diff|':>11}")
    print(header)
    print("-" * len(header))
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for shape in SHAPES:
            step = build_step(shape, dtype)
            calls = {"torch": lambda s=step: cpu_backend.decode_attention_torch(*s),
                     "kernel": lambda s=step: cpu_backend.decode_attention(*s)}
            diff = (calls["torch"]().float() - calls["kernel"]().float()).abs().max().item()
            ms = fastest(calls, args.reps)
            size = kv_bytes(shape, dtype)
            floor = 1e3 * size / bandwidth
            print(f"{shape.name:<14} {dtype_name:<9} {size / 1e6:>6.1f} {ms['torch']:>9.3f} "
                  f"{ms['kernel']:>10.3f} {floor:>9.3f} {ms['torch'] / ms['kernel']:>8.2f}x "
                  f"{100 * floor / ms['kernel']:>8.0f}% {size / ms['kernel'] / 1e6:>12.1f} "
                  f"{diff:>11.1e}", flush=True)


if __name__ == "__main__":
    main()
