"""The Batching Lab's presets, static against continuous batching, on the bundled model.

Each preset of the lesson page (lessons/batching-lab.html; read from its logic module
with node, so these are exactly the page's runs) goes through the scope's lab run
(`run_lab`) twice, batching="static" then batching="continuous", and one table per
preset puts the figures measured from the events side by side with their ratio:
steps, wall time, output tokens/s, mean and p99 time to first token and end-to-end
latency, slot utilisation (busy slot-steps / (seats × steps)), and the padding a padded
static batch would compute (computed from the prompt and output lengths, not run).

    .venv/bin/python benchmarks/batching_lab.py [--dtype float32] [--save PATH]

The step counts do not depend on the machine; the times do (record the CPU flags
printed with them), and on a shared machine they are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from tensor_parallel import simd_flags  # noqa: E402
from throughput import cpu_name  # noqa: E402

from kvscope.bench.batching import MODES, figures, page_workloads  # noqa: E402
from kvscope.model.loader import load_model  # noqa: E402
from kvscope.scope.lab import LabRunRequest, run_lab  # noqa: E402
from kvscope.scope.lab_limits import LabBudget, LabLimits  # noqa: E402

LIMITS = LabLimits(timeout_s=600, yield_to_serving=False)

ROWS = [("steps", "steps", "{:.0f}"), ("wall time (s)", "wall", "{:.2f}"),
        ("output tokens/s", "tok_per_s", "{:.1f}"),
        ("TTFT mean (ms)", "ttft_mean", "{:.1f}"), ("TTFT p99 (ms)", "ttft_p99", "{:.1f}"),
        ("end-to-end mean (ms)", "e2e_mean", "{:.1f}"),
        ("end-to-end p99 (ms)", "e2e_p99", "{:.1f}"),
        ("slot utilisation (%)", "utilisation", "{:.1f}")]
SCALE = {"ttft_mean": 1000, "ttft_p99": 1000, "e2e_mean": 1000, "e2e_p99": 1000,
         "utilisation": 100}


def table(label: str, s: dict[str, Any], c: dict[str, Any]) -> list[str]:
    lines = [f"## {label}: {len(s['run'].reqs)} requests, {s['seats']} seats",
             f"{'':24} {'static':>10} {'continuous':>11} {'cont/static':>12}"]
    for name, key, fmt in ROWS:
        k = SCALE.get(key, 1)
        lines.append(f"{name:24} {fmt.format(k * s[key]):>10} {fmt.format(k * c[key]):>11} "
                     f"{c[key] / s[key]:>11.2f}×")
    pad = s["padding"]
    lines.append(f"padding (computed)       {pad['total']} tokens: {pad['prompt']} prompt + "
                 f"{pad['decode']} decode, {100 * pad['total'] / pad['computed']:.1f}% of the "
                 f"{pad['computed']} a padded static batcher computes")
    lines.append(f"static batches           {s['batches']}; engine: "
                 f"{s['engine_idle_slot_steps']} idle of {s['engine_slot_steps']} seat-steps")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--save", type=Path, help="write every figure as JSON here")
    args = parser.parse_args()
    loaded = load_model(None, getattr(torch, args.dtype))
    print(f"CPU: {cpu_name()}; flags {' '.join(simd_flags())}; torch threads "
          f"{torch.get_num_threads()}; dtype {args.dtype}\n")
    saved: dict[str, Any] = {}
    for name, workload in page_workloads().items():
        results, outputs = {}, {}
        for mode in MODES:
            data = run_lab(loaded, LabRunRequest(**workload["bodies"][mode]), LabBudget(LIMITS))
            results[mode], outputs[mode] = figures(data, mode), data["outputs"]
        same = all(a["token_ids"] == b["token_ids"] for a, b in zip(
            outputs["static"], outputs["continuous"], strict=True))
        print("\n".join(table(workload["label"], results["static"], results["continuous"])))
        print(f"same greedy tokens       {'yes' if same else 'NO'}\n")
        saved[name] = {mode: {k: v for k, v in f.items() if k != "run"}
                       for mode, f in results.items()}
    if args.save:
        args.save.write_text(json.dumps({"cpu": cpu_name(), "flags": simd_flags(),
                                         "dtype": args.dtype, "presets": saved}, indent=1))


if __name__ == "__main__":
    main()
