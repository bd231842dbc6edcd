"""Memory-pressure benchmark: preemption by recompute vs by swap, side by side in one run.

32 requests (prompts cut from the CPython Language Reference text, lengths uniform in
[128, 384], seed 0), 128 greedy output tokens each, EOS ignored, all added at t = 0.
The KV pool holds about a quarter of what the workload needs at its peak (the sum of
prompt + output over all requests), so the scheduler must preempt. Prefix caching is
off so that recompute really recomputes.

    .venv/bin/python benchmarks/memory_pressure.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402
from steploop import run_steps  # noqa: E402
from throughput import FULL, corpus_text, make_prompts  # noqa: E402

from kvscope import LLM, SamplingParams  # noqa: E402
from kvscope.model.loader import load_model  # noqa: E402


def workload(tokenizer: Any, args: argparse.Namespace) -> list[list[int]]:
    """Windows of the tokenized corpus, cut as throughput.py cuts them."""
    sizes = dataclasses.replace(FULL, num_requests=args.num_requests,
                                min_prompt=args.min_prompt, max_prompt=args.max_prompt)
    return make_prompts(tokenizer.encode(corpus_text()), sizes, args.seed)


def run(llm: LLM, prompts: list[list[int]], output_len: int) -> dict[str, Any]:
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    llm.generate(prompts[0][:32], SamplingParams(max_tokens=4))  # warm-up
    before = engine.get_stats()
    result = run_steps(lambda rid, p: engine.add_request(rid, p, params), engine.step,
                       engine.has_unfinished_requests, prompts)
    after = engine.get_stats()
    for key in ("num_preemptions", "num_swap_outs", "num_swap_fallbacks",
                "num_computed_tokens"):
        result[key] = after[key] - before[key]
    result["num_blocks"] = engine.num_blocks
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-requests", type=int, default=32)
    p.add_argument("--min-prompt", type=int, default=128)
    p.add_argument("--max-prompt", type=int, default=384)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--pool-fraction", type=float, default=0.25)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", type=Path)
    args = p.parse_args()
    torch.set_num_threads(2)
    dtype = getattr(torch, args.dtype)
    loaded = load_model(None, dtype)
    prompts = workload(loaded.tokenizer, args)
    demand = sum(len(x) + args.output_len for x in prompts)
    max_model_len = args.max_prompt + args.output_len
    bytes_per_token = loaded.arch.kv_bytes_per_token(dtype.itemsize)
    one_request = -(-max_model_len // 16) * 16  # the pool must hold one whole request's blocks
    budget = max(int(demand * args.pool_fraction), one_request) * bytes_per_token
    rows = {}
    for mode in ("recompute", "swap"):
        print(f"running {mode}...", file=sys.stderr, flush=True)
        llm = LLM(dtype=args.dtype, loaded=loaded, max_model_len=max_model_len,
                  kv_cache_memory=budget, enable_prefix_caching=False, preemption_mode=mode,
                  swap_space=demand * bytes_per_token)
        rows[mode] = run(llm, prompts, args.output_len)
        del llm
    same = rows["recompute"]["outputs"] == rows["swap"]["outputs"]
    processed = sum(len(x) + args.output_len - 1 for x in prompts)
    print(f"{len(prompts)} requests, demand {demand} token slots, pool "
          f"{rows['swap']['num_blocks']} blocks ({budget // bytes_per_token} slots, "
          f"{budget / demand / bytes_per_token:.0%} of demand); outputs equal: {same}")
    print(f"{'mode':<11}{'wall s':>8}{'out tok/s':>11}{'vs recompute':>14}{'preempt':>9}"
          f"{'swap out':>10}{'fallback':>10}{'tokens run':>12}{'extra run':>11}")
    base = rows["recompute"]["output_tokens"] / rows["recompute"]["wall_s"]
    for mode, row in rows.items():
        tput = row["output_tokens"] / row["wall_s"]
        extra = row["num_computed_tokens"] - processed
        print(f"{mode:<11}{row['wall_s']:>8.1f}{tput:>11.1f}{tput / base:>13.2f}x"
              f"{row['num_preemptions']:>9}{row['num_swap_outs']:>10}"
              f"{row['num_swap_fallbacks']:>10}{row['num_computed_tokens']:>12}{extra:>11}")
    if args.save:
        for row in rows.values():
            row.pop("outputs", None)
            row.pop("ttft_s", None)
        args.save.write_text(json.dumps({"rows": rows, "demand": demand}, indent=2))


if __name__ == "__main__":
    main()
