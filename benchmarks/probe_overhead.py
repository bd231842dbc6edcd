"""What the forward probe (model/probe.py) costs: the engine-core workload with the
engine from before the probe existed, with today's engine and no probe set, and with
the probe recording every layer of one request of the batch, side by side in one run.

Each variant runs in its own process, in rounds (A B C, A B C, ...) so a noisy machine
hits every variant alike; the table shows the best round of each and its ratio to
the engine from before the probe.

The workload is throughput.py's (N requests, prompts of 32..512 tokens cut from the
same text, greedy output tokens with EOS ignored), all added at once to one engine
that steps until they finish.

    .venv/bin/python benchmarks/probe_overhead.py [--rounds 3] [--num-requests 32]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from baseline_tree import ROOT, report, run_worker, worktree

HERE = Path(__file__).resolve().parent
VARIANTS = ("before the probe", "probe off", "probe on one request")
DEFAULT_BASELINE = "a3c2ac5"  # the last commit before the forward probe


def worker(variant: str, num_requests: int, output_len: int, dtype_name: str) -> dict[str, Any]:
    """Run the workload once in this process (kvscope from PYTHONPATH)."""
    import dataclasses
    import time

    import torch

    import kvscope
    from kvscope import SamplingParams
    from kvscope.config import EngineConfig
    from kvscope.engine.llm_engine import LLMEngine
    from kvscope.kernels.build import cpu_kernels
    from kvscope.model.loader import load_model

    sys.path.insert(0, str(HERE))
    from throughput import FULL, corpus_text, make_prompts

    torch.set_num_threads(2)
    cpu_kernels()  # build (or load) the kernels now, not inside the timed run
    dtype = getattr(torch, dtype_name)
    loaded = load_model(None, dtype)
    sizes = dataclasses.replace(FULL, num_requests=num_requests, output_len=output_len)
    prompts = make_prompts(loaded.tokenizer.encode(corpus_text()), sizes, 0)
    engine = LLMEngine(EngineConfig.from_kwargs(dtype=dtype, max_model_len=1024), loaded=loaded)
    if variant == "probe on one request":
        from kvscope.model.probe import ForwardProbe

        engine.runner.probe = ForwardProbe("0")
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        engine.step()
    wall = time.perf_counter() - start
    engine.shutdown()
    return {"variant": variant, "wall_s": wall, "output_tokens": num_requests * output_len,
            "kvscope": str(Path(kvscope.__file__).parent)}


def render(best: dict[str, dict[str, Any]], rounds: int) -> str:
    base = best[VARIANTS[0]]["output_tokens"] / best[VARIANTS[0]]["wall_s"]
    lines = [f"best of {rounds} rounds, {best['probe off']['output_tokens']} output tokens",
             f"{'variant':<22}{'wall s':>8}{'out tok/s':>11}{'vs before':>11}"]
    for name in VARIANTS:
        row = best[name]
        tput = row["output_tokens"] / row["wall_s"]
        lines.append(f"{name:<22}{row['wall_s']:>8.2f}{tput:>11.1f}{tput / base:>10.3f}x")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--num-requests", type=int, default=32)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--baseline", default=DEFAULT_BASELINE, help="git commit before the probe")
    p.add_argument("--save", type=Path)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    sizes = ["--num-requests", str(args.num_requests), "--output-len", str(args.output_len),
             "--dtype", args.dtype]
    if args.worker:
        report(worker(args.worker, args.num_requests, args.output_len, args.dtype))
        return
    script = Path(__file__).resolve()
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with worktree(args.baseline) as baseline:
        for r in range(args.rounds):
            for variant in VARIANTS:
                print(f"round {r + 1}: {variant}...", file=sys.stderr, flush=True)
                before = variant == VARIANTS[0]
                runs[variant].append(run_worker(
                    script, [variant, *sizes], baseline if before else ROOT,
                    f"kvscope-baseline-{args.baseline}" if before else None))
    best = {v: min(rs, key=lambda r: r["wall_s"]) for v, rs in runs.items()}
    print(render(best, args.rounds))
    if args.save:
        args.save.write_text(json.dumps({"runs": runs, "args": vars(args) | {
            "save": str(args.save)}}, indent=2, default=str))


if __name__ == "__main__":
    main()
