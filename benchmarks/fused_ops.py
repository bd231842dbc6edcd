"""The fused element-wise kernels (RoPE, add+RMSNorm, RMSNorm, SiLU-and-mul) beside
their torch twins, on SmolLM2-135M's shapes at decode and prefill row counts.

Each kernel replaces a few torch ops that each pass over memory; the torch twin is what
runs without the kernels (`kvscope.model.layers`: `apply_rope`, `rms_norm_torch`,
`F.silu(gate) * up`). RoPE rotates the 9 query and 3 KV heads of a fused q/k/v row (head
dim 64) in place; the norms run over the 576-wide hidden state; SiLU-and-mul over the
3072-wide gate/up projection. A model step runs RoPE once and the norms twice per layer
(30 layers). "same bits" says whether the kernel's output equals the twin's exactly
(RoPE in bf16 must; the norms sum in another order than torch's reduction).

    .venv/bin/python benchmarks/fused_ops.py

Each figure is the minimum over --reps timed calls, the paths alternating. The table goes
to stdout.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without an install
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.prefill_attention import fastest, kernel_bench_setup  # noqa: E402
from kvscope.model.layers.norm import rms_norm_torch  # noqa: E402
from kvscope.model.layers.rotary import apply_rope, rope_tables  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, HIDDEN, INTERMEDIATE = 9, 3, 64, 576, 1536
ROWS = (1, 64, 2048)
Call = Callable[[], torch.Tensor]
Ops = dict[str, tuple[Call, Call]]  # name → (kernel, torch twin)


def rope_pair(rows: int, dtype: torch.dtype, kernels: Any,
              gen: torch.Generator) -> tuple[Call, Call]:
    rotated = HEADS + KV_HEADS
    width = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    cos, sin = rope_tables(HEAD_DIM, 4096, 100000.0)
    positions = torch.randint(0, 4096, (rows,), generator=gen)
    cos, sin = cos[positions].to(dtype), sin[positions].to(dtype)
    qkv = torch.randn(rows, width, generator=gen).to(dtype)

    def kernel() -> torch.Tensor:
        out = qkv.clone()
        kernels.rope_inplace(out, cos, sin, rotated, HEAD_DIM)
        return out

    def twin() -> torch.Tensor:
        out = qkv.clone()
        qk = out[:, :rotated * HEAD_DIM].view(rows, rotated, HEAD_DIM)
        qk.copy_(apply_rope(qk, cos.unsqueeze(1), sin.unsqueeze(1)))
        return out

    return kernel, twin


def build_ops(rows: int, dtype: torch.dtype, kernels: Any) -> Ops:
    """name → (kernel call, torch twin call), each returning its output."""
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, HIDDEN, generator=gen).to(dtype)
    residual = torch.randn(rows, HIDDEN, generator=gen).to(dtype)
    weight = (torch.rand(HIDDEN, generator=gen) + 0.5).to(dtype)
    gate_up = (torch.randn(rows, 2 * INTERMEDIATE, generator=gen) * 4).to(dtype)

    def add_norm_twin() -> torch.Tensor:
        return rms_norm_torch(residual + x, weight, 1e-5)

    return {
        "rope": rope_pair(rows, dtype, kernels, gen),
        "add+rms_norm": (lambda: kernels.add_rms_norm(x, residual.clone(), weight, 1e-5),
                         add_norm_twin),
        "rms_norm": (lambda: kernels.rms_norm(x, weight, 1e-5),
                     lambda: rms_norm_torch(x, weight, 1e-5)),
        "silu_and_mul": (lambda: kernels.silu_and_mul(gate_up),
                         lambda: F.silu(gate_up[:, :INTERMEDIATE]) * gate_up[:, INTERMEDIATE:]),
    }


def main() -> None:
    args, kernels = kernel_bench_setup(__doc__.split("\n\n")[0], reps=50)
    print(f"fused element-wise kernels, SmolLM2-135M shapes, {args.threads} threads, "
          f"min of {args.reps}; kernels {kernels.isa()}")
    header = (f"{'op':<14} {'rows':>5} {'dtype':<9} {'torch ms':>9} {'kernel ms':>10} "
              f"{'vs torch':>9} {'same bits':>10}")
    print(header)
    print("-" * len(header))
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for rows in ROWS:
            for name, (kernel, twin) in build_ops(rows, dtype, kernels).items():
                same = torch.equal(kernel(), twin())
                ms = fastest({"torch": twin, "kernel": kernel}, args.reps)
                print(f"{name:<14} {rows:>5} {dtype_name:<9} {ms['torch']:>9.3f} "
                      f"{ms['kernel']:>10.3f} {ms['torch'] / ms['kernel']:>8.2f}x "
                      f"{'yes' if same else 'no':>10}", flush=True)


if __name__ == "__main__":
    main()
