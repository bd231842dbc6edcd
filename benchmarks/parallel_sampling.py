"""Sharing KV across sequences: parallel sampling (n = 1, 4, 8) and beam search (width 4)
against the same number of independent requests on the same prompt, side by side in
one run: peak KV blocks in use, and output tokens per second.

One prompt of `--prompt-len` tokens (real text shipped with kvscope), `--output-len`
tokens per sequence (sampled at temperature 0.8 with seeds, EOS ignored; beam search
runs to the length limit). "independent" adds the sequences as separate requests with
the prefix cache off (nothing shared: the memory a server without sharing needs) and
with it on (full prompt blocks shared through the cache, the last partial block and
the prefill of the uncached tail repeated).

    .venv/bin/python benchmarks/parallel_sampling.py [--prompt-len 512 --output-len 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

import kvscope.bench
from kvscope import LLM, SamplingParams
from kvscope.model.loader import load_model
from kvscope.sampling_params import BeamSearchParams


def prompt_ids(llm: LLM, length: int) -> list[int]:
    text = (Path(kvscope.bench.__file__).parent / "data" / "computing_history.txt").read_text()
    ids = llm.tokenizer.encode(text)
    return (ids * (length // len(ids) + 1))[:length]


def drive(llm: LLM, add: Any) -> dict[str, Any]:
    """Add the work with `add(engine)`, step to the end; peak blocks, tokens, time."""
    engine = llm.engine
    llm.reset_prefix_cache()
    before = engine.num_generated_tokens
    start = time.perf_counter()
    add(engine)
    peak = 0
    outputs = []
    while engine.has_unfinished_requests():
        outputs += [o for o in engine.step() if o.finished]
        peak = max(peak, engine.kv.pool.num_used_blocks)
    wall = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    assert engine.kv.num_free_blocks == engine.num_blocks
    return {"peak_blocks": peak, "wall_s": wall, "output_tokens": tokens,
            "generated_by_engine": engine.num_generated_tokens - before}


def sampling(n: int, seed: int, output_len: int) -> SamplingParams:
    return SamplingParams(n=n, temperature=0.8, seed=seed, max_tokens=output_len,
                          ignore_eos=True)


def run(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    loaded = load_model(None, torch.bfloat16)
    shared = LLM(dtype="bfloat16", loaded=loaded, max_model_len=2048)
    plain = LLM(dtype="bfloat16", loaded=loaded, max_model_len=2048,
                enable_prefix_caching=False)
    prompt = prompt_ids(shared, args.prompt_len)
    rows: dict[str, dict[str, Any]] = {}
    for n in (1, 4, 8):
        rows[f"n={n}, shared blocks"] = drive(
            shared, lambda e, n=n: e.add_request("p", prompt, sampling(n, 0, args.output_len)))
        for name, llm in (("no cache", plain), ("prefix cache", shared)):
            rows[f"n={n}, {n} independent ({name})"] = drive(llm, lambda e, n=n: [
                e.add_request(f"r{i}", prompt, sampling(1, i, args.output_len))
                for i in range(n)])
    beam = BeamSearchParams(beam_width=4, max_tokens=args.output_len, ignore_eos=True)
    rows["beam width 4, shared blocks"] = drive(
        shared, lambda e: e.add_beam_request("b", prompt, beam))
    for name, llm in (("no cache", plain), ("prefix cache", shared)):
        rows[f"beam width 4 vs 4 independent ({name})"] = drive(llm, lambda e: [
            e.add_request(f"r{i}", prompt, sampling(1, i, args.output_len)) for i in range(4)])
    return rows


def render(rows: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"{args.prompt_len}-token prompt, {args.output_len} output tokens per sequence "
             "(bf16, 2 threads)",
             f"{'run':<44}{'peak blocks':>12}{'vs no-cache':>12}{'wall s':>8}{'out tok/s':>11}"]
    for name, row in rows.items():
        group = name.split(",")[0] if name.startswith("n=") else "beam"
        base = next(r for k, r in rows.items() if "no cache" in k and
                    (k.split(",")[0] == group if group != "beam" else k.startswith("beam")))
        lines.append(f"{name:<44}{row['peak_blocks']:>12}"
                     f"{row['peak_blocks'] / base['peak_blocks']:>11.0%} "
                     f"{row['wall_s']:>8.2f}{row['output_tokens'] / row['wall_s']:>11.1f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--save", type=Path)
    args = p.parse_args()
    torch.set_num_threads(2)
    rows = run(args)
    print(render(rows, args))
    if args.save:
        args.save.write_text(json.dumps({"rows": rows, "args": {
            k: str(v) for k, v in vars(args).items()}}, indent=2))


if __name__ == "__main__":
    main()
