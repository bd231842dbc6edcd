"""Where the prefill-vs-decode lesson places a prefill step and a decode step on this
machine's measured roofline, for the bundled model as served by default (quantized
weights) and dense in float32, side by side in one run.

    .venv/bin/python benchmarks/roofline_points.py [--max-tokens 16] [--save PATH]

The prompt is the lesson page's default paragraph. Each configuration runs twice and
keeps the second run (the first warms the kernels and measures the roofline).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from kvscope.model.loader import load_model
from kvscope.scope.inside.phases import PhasesRequest, phases_lesson

PAGE = Path(__file__).resolve().parent.parent / "kvscope/scope/static/lessons/prefill-decode.html"
CONFIGS = {"default (GGUF q4/q8, int8 activations)": "auto", "dense float32": "none"}


def page_prompt() -> str:
    html = PAGE.read_text()
    start = html.index('<textarea id="prompt"')
    return html[html.index(">", start) + 1:html.index("</textarea>", start)]


def run(quantization: str, max_tokens: int) -> dict[str, Any]:
    loaded = load_model(None, torch.float32, quantization=quantization)
    body = PhasesRequest(prompt=page_prompt(), max_tokens=max_tokens)
    phases_lesson(loaded, body)
    return phases_lesson(loaded, body)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--save", type=Path)
    args = p.parse_args()
    results = {name: run(q, args.max_tokens) for name, q in CONFIGS.items()}
    machine = next(iter(results.values()))["machine"]
    print(f"this machine: {machine['cpu']}; peak {machine['peak_gflops']} GFLOP/s, "
          f"bandwidth {machine['bandwidth_gbs']} GB/s, ridge {machine['ridge']} FLOP/byte")
    print(f"{'weights':<40}{'step':<9}{'tokens':>7}{'ms':>9}{'FLOP/B':>9}{'GFLOP/s':>9}"
          f"{'GB/s':>8}{'% peak':>8}")
    for name, r in results.items():
        decodes = [s for s in r["steps"] if s["phase"] == "decode"]
        median = sorted(decodes, key=lambda s: s["time_ms"])[len(decodes) // 2]
        for label, s in (("prefill", r["steps"][0]), ("decode", median)):
            share = 100 * s["gflops_per_s"] / r["machine"]["peak_gflops"]
            print(f"{name:<40}{label:<9}{s['num_tokens']:>7}{s['time_ms']:>9.1f}"
                  f"{s['intensity']:>9.2f}{s['gflops_per_s']:>9.1f}{s['gb_per_s']:>8.1f}"
                  f"{share:>7.1f}%")
    if args.save:
        args.save.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
