"""Pipeline parallelism on CPU: pp=1 against pp=2 on the same workload, in one run.

The engine-core workload of throughput.py (N requests, prompts cut from one text, greedy
output tokens, EOS ignored; every request added, then steps until done), served by one
process (pp=1, all cores) and by two pipeline stages (pp=2: two worker processes, layers
0-14 and 15-29, the cores split between them, up to two batches in flight). For pp=2 the
engine's step_end events give each stage's compute time per batch, from which come the
batches in flight, each stage's busy share and the bubble fraction (1 − Σ busy /
(stages × span)). Both runs' greedy outputs are compared.

On one machine the two stages share its cores, so pp=2 cannot be faster than pp=1 here:
what pipeline parallelism buys is room for a model too big for one device, and overlap
that hides the stage handoffs. The table shows how much of the stages' time the
pipeline keeps busy and what the handoffs cost, not a GPU speed-up.

    .venv/bin/python benchmarks/pipeline_parallel.py \
        [--save benchmarks/results/pipeline-parallel.json]
    .venv/bin/python benchmarks/pipeline_parallel.py --quick   # smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import throughput as tput  # noqa: E402
import torch  # noqa: E402
from tensor_parallel import simd_flags  # noqa: E402

from kvscope import LLM  # noqa: E402
from kvscope.distributed.pipeline import bubble  # noqa: E402
from kvscope.events import ListSink  # noqa: E402
from kvscope.model.loader import LoadedModel, load_model  # noqa: E402

FULL = tput.Sizes(16, 32, 256, 64, 0, 0, (), 0, 0)
QUICK = tput.Sizes(4, 32, 64, 6, 0, 0, (), 0, 0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    p.add_argument("--num-requests", type=int, help="requests (16; quick: 4)")
    p.add_argument("--output-len", type=int, help="greedy tokens per request (64; quick: 6)")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--kv-cache-memory", type=int, default=256 << 20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", type=Path, help="write every figure as JSON here")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    args.sizes = tput.Sizes(args.num_requests or sizes.num_requests, sizes.min_prompt,
                            sizes.max_prompt, args.output_len or sizes.output_len,
                            0, 0, (), 0, 0)
    return args


def run(pp: int, args: argparse.Namespace, loaded: LoadedModel,
        prompts: list[list[int]]) -> dict[str, Any]:
    sink = ListSink()
    start = time.perf_counter()
    llm = LLM(dtype="float32", loaded=loaded, max_model_len=args.max_model_len,
              kv_cache_memory=args.kv_cache_memory, pipeline_parallel_size=pp, sink=sink)
    try:
        startup = time.perf_counter() - start
        tput.log(f"pp={pp}: engine up in {startup:.1f} s; warm-up")
        tput.kvscope_generate(llm, prompts[0][:32], 4)
        sink.events.clear()
        tput.log(f"pp={pp}: engine-core run")
        result = tput.run_kvscope(llm, prompts, args.sizes.output_len, args.max_model_len)
    finally:
        llm.shutdown()
        del llm
        gc.collect()
    ends = [e for e in sink.events if e.kind == "step_end" and e.batch]
    spans = [(s.stage, s.start, s.end) for e in ends for s in e.stages]
    tokens = args.sizes.num_requests * args.sizes.output_len
    return {"pp": pp, "startup_s": startup, "wall_s": result["wall_s"],
            "output_tok_s": tokens / result["wall_s"], "batches": len(ends),
            "outputs": result["outputs"],
            "mean_in_flight": sum(e.batches_in_flight for e in ends) / len(ends),
            "share_two_in_flight": sum(e.batches_in_flight >= 2 for e in ends) / len(ends),
            "mean_forward_ms": sum(e.forward_ms for e in ends) / len(ends),
            "stage_ms": [1e3 * sum(end - begin for stage, begin, end in spans if stage == k)
                         / len(ends) for k in range(pp)] if pp > 1 else [],
            **({"occupancy": bubble(spans, pp)} if pp > 1 else {})}


def render(results: dict[str, Any]) -> str:
    one, two = results["runs"]
    lines = [f"pipeline parallelism, {results['workload']}; fp32; {results['machine']}",
             f"CPU flags: {' '.join(results['cpu_flags'])}", "",
             f"{'engine':<28}{'wall s':>8}{'out tok/s':>11}{'vs pp=1':>9}{'batches':>9}"
             f"{'in flight':>11}{'bubble':>8}"]
    for r in (one, two):
        occupancy = r.get("occupancy")
        bubble_text = f"{occupancy['bubble_fraction']:.1%}" if occupancy else "-"
        lines.append(f"{'kvscope pp=' + str(r['pp']):<28}{r['wall_s']:>8.2f}"
                     f"{r['output_tok_s']:>11.1f}{r['output_tok_s'] / one['output_tok_s']:>8.2f}x"
                     f"{r['batches']:>9}{r['mean_in_flight']:>11.2f}{bubble_text:>8}")
    occupancy = two["occupancy"]
    lines += ["", f"pp=2: {two['share_two_in_flight']:.0%} of batches started with another "
              f"in flight; per batch, stage 0 computed {two['stage_ms'][0]:.1f} ms and stage 1 "
              f"{two['stage_ms'][1]:.1f} ms (the engine waited {two['mean_forward_ms']:.1f} ms "
              "from submit to logits)",
              f"pp=2: stage busy shares {', '.join(f'{s:.0%}' for s in occupancy['busy_share'])}"
              f" of the {occupancy['span_s']:.2f} s span",
              f"greedy outputs equal: {results['outputs_equal']:.0%} of requests",
              "Both stages share this machine's cores: pp=2 shows the pipeline's overlap and "
              "handoff cost, not a speed-up (see the docstring)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, loaded: LoadedModel | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    loaded = loaded or load_model(None, torch.float32)
    corpus = list(loaded.tokenizer.encode(tput.corpus_text(), add_special_tokens=False))
    prompts = tput.make_prompts(corpus, args.sizes, args.seed)
    runs = [run(pp, args, loaded, prompts) for pp in (1, 2)]
    sizes = args.sizes
    results = {
        "workload": f"{sizes.num_requests} requests, prompts {sizes.min_prompt}-"
                    f"{sizes.max_prompt} tokens, {sizes.output_len} out",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "cpu_flags": simd_flags(), "runs": runs,
        "outputs_equal": sum(a == b for a, b in zip(runs[0]["outputs"], runs[1]["outputs"],
                                                   strict=True)) / len(prompts)}
    print(render(results))
    if args.save:
        saved = {**results, "runs": [{k: v for k, v in r.items() if k != "outputs"}
                                     for r in runs]}
        args.save.write_text(json.dumps(saved, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
