"""Prefix-caching benchmark: a shared-prefix workload with the cache on and off (and vLLM
CPU with its prefix cache on the same token ids), side by side in one run.

32 requests share a 384-token prefix (the start of the Python Language Reference text
that ships with CPython, as in throughput.py) and each adds its own 32-token suffix
(a seeded random window of the same text); each generates 64 tokens greedily, EOS
ignored. All requests are added at t = 0 and the engine is stepped until done, so the
time to first token includes queueing behind earlier prefills: that is where the
cache pays. A cold cache can hit at most 31 × 384 of 32 × 416 prompt tokens (89.4%):
the first request computes the prefix. The "warm" row runs the same workload a second
time on the same engine, so every prompt is cached but for its last, partial block (at
most 400/416 = 96.2%).

    .venv/bin/python benchmarks/prefix_cache.py
    .venv/bin/python benchmarks/prefix_cache.py --vllm /root/venvs/vllm/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402
from steploop import run_steps  # noqa: E402
from throughput import corpus_text, default_hf_dir, export_hf_dir  # noqa: E402

from kvscope import LLM, SamplingParams  # noqa: E402
from kvscope.model.loader import load_model  # noqa: E402

RESULT_MARKER = "KVSCOPE_VLLM_RESULT "


def workload(tokenizer: Any, args: argparse.Namespace) -> list[list[int]]:
    corpus = tokenizer.encode(corpus_text())
    prefix = corpus[:args.prefix_len]
    rng = random.Random(args.seed)
    prompts = []
    for _ in range(args.num_requests):
        start = rng.randrange(args.prefix_len, len(corpus) - args.suffix_len)
        prompts.append(prefix + corpus[start:start + args.suffix_len])
    return prompts


def run_kvscope(llm: LLM, prompts: list[list[int]], output_len: int,
                cold: bool = True) -> dict[str, Any]:
    """One pass of the workload; `cold` empties the prefix cache first."""
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    if cold:
        llm.generate(prompts[0][:40], SamplingParams(max_tokens=4))  # warm-up
        llm.reset_prefix_cache()
    before = engine.get_stats()
    result = run_steps(lambda rid, p: engine.add_request(rid, p, params), engine.step,
                       engine.has_unfinished_requests, prompts)
    after = engine.get_stats()
    queried = after["prefix_cache_queries"] - before["prefix_cache_queries"]
    hits = after["prefix_cache_hits"] - before["prefix_cache_hits"]
    result["hit_rate"] = hits / queried if queried else 0.0
    result["computed_tokens"] = after["num_computed_tokens"] - before["num_computed_tokens"]
    return result


def run_vllm(python: str, hf_dir: Path, prompts: list[list[int]], args: argparse.Namespace
             ) -> dict[str, Any]:
    job = {"model": str(hf_dir), "dtype": args.dtype, "max_model_len": 1024,
           "enable_prefix_caching": True, "prompts": prompts, "output_len": args.output_len,
           "warmup": prompts[0][:40]}
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "0-1", "OMP_NUM_THREADS": "2",
           "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_NO_USAGE_STATS": "1"}
    env.pop("PYTHONPATH", None)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    try:
        proc = subprocess.run([python, str(HERE / "vllm_steps_peer.py"), f.name], env=env,
                              text=True, stdout=subprocess.PIPE, timeout=1800, check=False)
    finally:
        os.unlink(f.name)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
    if not lines:
        raise RuntimeError(f"the vLLM run failed (exit {proc.returncode})")
    return json.loads(lines[-1][len(RESULT_MARKER):])


def render(rows: dict[str, dict[str, Any]], prompts: list[list[int]]) -> str:
    base = rows["kvscope, cache off"]
    per_request = base["output_tokens"] // len(prompts)
    lines = [f"{len(prompts)} requests, {len(prompts[0])}-token prompts sharing a "
             f"{len(prompts[0]) - 32}-token prefix, {per_request} output tokens each",
             f"{'engine':<28}{'wall s':>8}{'out tok/s':>11}{'mean TTFT ms':>14}"
             f"{'TTFT vs off':>13}{'hit rate':>10}{'tokens run':>12}"]
    for name, row in rows.items():
        tput = row["output_tokens"] / row["wall_s"]
        hit = f"{row['hit_rate']:.1%}" if "hit_rate" in row else "-"
        computed = str(row.get("computed_tokens", "-"))
        lines.append(f"{name:<28}{row['wall_s']:>8.2f}{tput:>11.1f}"
                     f"{row['mean_ttft_s'] * 1000:>14.0f}"
                     f"{base['mean_ttft_s'] / row['mean_ttft_s']:>12.2f}x{hit:>10}{computed:>12}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-requests", type=int, default=32)
    p.add_argument("--prefix-len", type=int, default=384)
    p.add_argument("--suffix-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vllm", metavar="PYTHON", help="python of a venv with vLLM's CPU build")
    p.add_argument("--save", type=Path)
    args = p.parse_args()
    torch.set_num_threads(2)
    loaded = load_model(None, getattr(torch, args.dtype))
    prompts = workload(loaded.tokenizer, args)
    rows = {}
    for name, caching in (("kvscope, cache off", False), ("kvscope, cache on", True)):
        print(f"running {name}...", file=sys.stderr, flush=True)
        llm = LLM(dtype=args.dtype, loaded=loaded, max_model_len=1024,
                  enable_prefix_caching=caching)
        rows[name] = run_kvscope(llm, prompts, args.output_len)
        if caching:  # the same workload again: the prefix is already cached
            rows["kvscope, cache on, warm"] = run_kvscope(llm, prompts, args.output_len, False)
        del llm
    if rows["kvscope, cache on"]["outputs"] != rows["kvscope, cache off"]["outputs"]:
        print("note: outputs differ between cache on and off (bf16 rounding of a different "
              "batch shape can split greedy paths; fp32 tests assert equality)", file=sys.stderr)
    if args.vllm:
        print("running vLLM...", file=sys.stderr, flush=True)
        hf_dir = export_hf_dir(loaded, default_hf_dir(loaded))
        rows["vLLM CPU, cache on"] = run_vllm(args.vllm, hf_dir, prompts, args)
    print(render(rows, prompts))
    if args.save:
        for row in rows.values():
            row.pop("outputs", None)
        args.save.write_text(json.dumps({"rows": rows, "args": {
            k: str(v) for k, v in vars(args).items()}}, indent=2))


if __name__ == "__main__":
    main()
