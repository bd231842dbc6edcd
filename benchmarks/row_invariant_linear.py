"""bf16 linear layers: the C++ `small_gemm` beside oneDNN on a pre-packed weight, by rows.

`small_gemm` gives each row the same bits whatever the number of rows in the call, which
speculative verification (1 + k rows per request) needs to match plain greedy decoding;
this table shows what that costs against oneDNN (`pack_weight` + `_linear_pointwise`, as
`kvscope.model.layers.linear` calls it) for the bundled model's shapes (SmolLM2-135M) and
Qwen2.5-1.5B's.

    .venv/bin/python benchmarks/row_invariant_linear.py            # weights from memory
    .venv/bin/python benchmarks/row_invariant_linear.py --warm     # weights in cache

By default each call reads a different copy of the weight, cycling through enough copies
to overflow the last-level cache, as a layer's weights come from memory in a forward pass
through a whole model; `--warm` reuses one copy. Each figure is the median over --reps
timed batches of calls, the two kernels alternating. The table goes to stdout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without an install
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from kvscope.kernels.build import cpu_kernels  # noqa: E402
from kvscope.model.layers.linear import pack_weight  # noqa: E402

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


def _kernels_under_test(kernels, x: torch.Tensor, weights: list[torch.Tensor],
                        packed: list[torch.Tensor]) -> tuple[Callable[[int], object], ...]:
    """small_gemm and oneDNN on x; call i reads weight copy i (mod the number of copies)."""

    def small(i: int) -> object:
        return kernels.small_gemm(x, weights[i % len(weights)], None)

    def onednn(i: int) -> object:
        return torch.ops.mkldnn._linear_pointwise(x, packed[i % len(packed)], None, "none", [],
                                                  "")

    return small, onednn


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
    if kernels is None or not kernels.small_gemm_supported():
        sys.exit("small_gemm unavailable (no C++ kernels or no AVX512-BF16)")
    shapes = SHAPES
    if args.shapes:
        wanted = args.shapes.split(",")
        shapes = [s for s in SHAPES if any(w in s[0] for w in wanted)]

    gen = torch.Generator().manual_seed(0)
    print(f"threads={torch.get_num_threads()} weights={'cache' if args.warm else 'memory'} "
          f"median of {args.reps}")
    header = f"{'shape':<22} {'N x K':>12} {'M':>3} {'small_gemm us':>14} {'oneDNN us':>10} "
    print(header + f"{'small/oneDNN':>13}")
    with torch.inference_mode():
        for name, n, k in shapes:
            w0 = (torch.randn(n, k, generator=gen) * k ** -0.5).bfloat16()
            copies = 1 if args.warm else max(2, -(-COLD_BYTES // w0.nbytes))
            weights = [w0] + [w0.clone() for _ in range(copies - 1)]
            packed = [pack_weight(w) for w in weights]
            if any(p is None for p in packed):
                sys.exit("oneDNN weight packing unavailable")
            for m in ROWS:
                x = torch.randn(m, k, generator=gen).bfloat16()
                assert torch.equal(kernels.small_gemm(x, w0, None)[m - 1],
                                   kernels.small_gemm(x[m - 1:], w0, None)[0])
                small, onednn = _kernels_under_test(kernels, x, weights, packed)
                # calls per timed batch: enough for --target-ms, and every copy once
                probe = min(_time_us(small, copies), _time_us(onednn, copies))
                calls = max(copies, int(args.target_ms * 1e3 / max(probe, 1.0)))
                calls = -(-calls // copies) * copies
                t_small, t_dnn = [], []
                for _ in range(args.reps):
                    t_small.append(_time_us(small, calls))
                    t_dnn.append(_time_us(onednn, calls))
                a, b = statistics.median(t_small), statistics.median(t_dnn)
                print(f"{name:<22} {f'{n}x{k}':>12} {m:>3} {a:>14.1f} {b:>10.1f} {a / b:>13.2f}",
                      flush=True)


if __name__ == "__main__":
    main()
