"""The row-invariant linear kernels beside the library GEMMs, by weight format and rows.

`small_gemm` (bf16 weights: AVX512-BF16 dot products where the CPU has them, else
float32 FMAs on the widened weights), `q8_linear` and `q4_linear` (8- and 4-bit weights
in groups of 32, widened in registers) and `q4_linear_i8` (4-bit weights on int8
activations, integer dot products) give each row the same bits whatever the number
of rows in the call, which speculative verification (1 + k rows per request) needs to
match plain greedy decoding. This table shows their time per call beside oneDNN's bf16
GEMM on a pre-packed weight (`_linear_pointwise`, as `kvscope.model.layers.linear` calls
it where the CPU multiplies bf16 natively) and torch's float32 `F.linear`, for the
bundled model's shapes (SmolLM2-135M) and Qwen2.5-1.5B's.

    .venv/bin/python benchmarks/row_invariant_linear.py            # weights from memory
    .venv/bin/python benchmarks/row_invariant_linear.py --warm     # weights in cache

By default each call reads a different copy of the weight, cycling through enough copies
to overflow the last-level cache, as a layer's weights come from memory in a forward pass
through a whole model; `--warm` reuses one copy. Each figure is the median over --reps
timed batches of calls, the kernels alternating. The table goes to stdout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without an install
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kvscope.kernels.build import cpu_kernels  # noqa: E402
from kvscope.model.quant import interleave, quantize  # noqa: E402

# (name, N out, K in)
SHAPES = [
    ("smollm2 qkv", 960, 576),
    ("smollm2 o", 576, 576),
    ("smollm2 gate_up", 3072, 576),
    ("smollm2 down", 576, 1536),
    ("smollm2 lm_head", 49152, 576),
    ("qwen2.5-1.5b qkv", 2048, 1536),
    ("qwen2.5-1.5b o", 1536, 1536),
    ("qwen2.5-1.5b gate_up", 17920, 1536),
    ("qwen2.5-1.5b down", 1536, 8960),
]
ROWS = [1, 2, 4, 5, 8, 16, 32, 64]
COLD_BYTES = 96 << 20  # more than the last-level cache of the machines this runs on


def _time_us(fn: Callable[[int], object], calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - start) / calls * 1e6


def _kernels_under_test(kernels, x: torch.Tensor, copies: dict[str, list[Any]]
                        ) -> dict[str, Callable[[int], object]]:
    """One call per format; call i reads weight copy i (mod the number of copies)."""
    x16 = x.bfloat16()

    def pick(name: str, i: int) -> Any:
        return copies[name][i % len(copies[name])]

    calls: dict[str, Callable[[int], object]] = {
        "fp32 F.linear": lambda i: F.linear(x, pick("fp32", i)),
        "bf16 small_gemm": lambda i: kernels.small_gemm(x16, pick("bf16", i), None),
        "q8": lambda i: kernels.q8_linear(x, *pick("q8", i), None),
        "q4": lambda i: kernels.q4_linear(x, *pick("q4", i), 0.0, None),
        "q4 int8 act": lambda i: kernels.q4_linear_i8(x, *pick("q4x16", i), 0.0, None),
    }
    if copies["onednn"]:
        calls["bf16 oneDNN"] = lambda i: torch.ops.mkldnn._linear_pointwise(
            x16, pick("onednn", i), None, "none", [], "")
    return calls


def _weight_copies(w: torch.Tensor, cold: bool) -> dict[str, list[Any]]:
    """Each format's copies of `w`: enough to overflow the cache unless warm."""
    q8, q4 = quantize(w, "q8"), quantize(w, "q4")
    q4x16 = interleave(q4)  # the int8 kernel's order
    forms: dict[str, Any] = {"fp32": w, "bf16": w.bfloat16(), "q8": (q8.q, q8.scales),
                             "q4": (q4.q, q4.scales, q4.offsets),
                             "q4x16": (q4x16.q, q4x16.scales, q4x16.offsets)}
    try:
        forms["onednn"] = torch.ops.mkldnn._reorder_linear_weight(w.bfloat16(), 64)
    except (RuntimeError, AttributeError):
        forms["onednn"] = None
    out: dict[str, list[Any]] = {}
    for name, form in forms.items():
        if form is None:
            out[name] = []
            continue
        parts = form if isinstance(form, tuple) else (form,)
        nbytes = sum(p.nbytes for p in parts)
        n = 1 if not cold else max(2, -(-COLD_BYTES // nbytes))
        clones = [tuple(p.clone() for p in parts) for _ in range(n - 1)]
        out[name] = [form] + [c if isinstance(form, tuple) else c[0] for c in clones]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--target-ms", type=float, default=20.0,
                        help="rough length of one timed batch of calls")
    parser.add_argument("--warm", action="store_true", help="one weight copy, kept in cache")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--shapes", default=None, help="comma-separated substrings of names")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    kernels = cpu_kernels()
    if kernels is None:
        sys.exit("the C++ kernels are unavailable here")
    shapes = SHAPES
    if args.shapes:
        wanted = args.shapes.split(",")
        shapes = [s for s in SHAPES if any(w in s[0] for w in wanted)]

    gen = torch.Generator().manual_seed(0)
    print(f"kernels {kernels.isa()}, threads={torch.get_num_threads()}, "
          f"weights={'cache' if args.warm else 'memory'}, median of {args.reps}; "
          "us per call, and the ratio to fp32 F.linear")
    names = ["fp32 F.linear", "bf16 small_gemm", "bf16 oneDNN", "q8", "q4", "q4 int8 act"]
    print(f"{'shape':<22} {'N x K':>12} {'M':>3} " + "".join(f"{n:>17}" for n in names))
    with torch.inference_mode():
        for name, n, k in shapes:
            w = torch.randn(n, k, generator=gen) * k ** -0.5
            copies = _weight_copies(w, cold=not args.warm)
            for m in ROWS:
                x = torch.randn(m, k, generator=gen)
                calls = _kernels_under_test(kernels, x, copies)
                per_batch = max(len(c) for c in copies.values())
                probe = min(_time_us(f, per_batch) for f in calls.values())
                count = max(per_batch, int(args.target_ms * 1e3 / max(probe, 1.0)))
                times: dict[str, list[float]] = {c: [] for c in calls}
                for _ in range(args.reps):
                    for c, f in calls.items():
                        times[c].append(_time_us(f, count))
                med = {c: statistics.median(t) for c, t in times.items()}
                base = med["fp32 F.linear"]
                cells = "".join(f"{med[c]:>9.1f} ({base / med[c]:4.2f}x)" if c in med
                                else f"{'-':>17}" for c in names)
                print(f"{name:<22} {f'{n}x{k}':>12} {m:>3} {cells}", flush=True)


if __name__ == "__main__":
    main()
