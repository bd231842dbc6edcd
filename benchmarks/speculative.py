"""Speculative decoding, greedy, side by side in one run: tokens/s, speedup over the same
model decoding alone, acceptance rate, mean accepted drafts per verifying pass, and
whether every output is token-identical to plain greedy decoding in the same dtype.

- bundled SmolLM2-135M (bf16): alone vs n-gram prompt lookup on input-grounded prompts
  (repeat / rewrite / correct a passage given in the prompt) and vs the early-exit
  self-draft, at batch 1 (prompts one after another) and batch 8;
- the batch-size switch: 32 requests at once, alone vs n-gram with and without
  `disable_by_batch_size`;
- Qwen2.5-Coder-1.5B drafted by Qwen2.5-Coder-0.5B (k = 2, 4, 6) on code-writing and
  chat prompts, batch 1 and 8, when their packages are installed (skipped otherwise).

    .venv/bin/python benchmarks/speculative.py [--max-tokens 96] [--skip-qwen]
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

from kvscope import LLM, SamplingParams
from kvscope.bench.spec_prompts import CHAT_PROMPTS, CODE_PROMPTS, grounded_prompts
from kvscope.model.loader import LoadedModel, load_model
from kvscope.model.packaged import missing_packages

QWEN_TARGET, QWEN_DRAFT = "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"
BATCH_ONE_PROMPTS = 3  # prompts run one after another for the batch-1 rows


def chat_ids(llm: LLM, prompts: list[str]) -> list[list[int]]:
    return [llm.apply_chat_template([{"role": "user", "content": p}]) for p in prompts]


def measure(llm: LLM, prompts: list[list[int]], batch: int, max_tokens: int) -> dict[str, Any]:
    """Greedy outputs of `prompts`, `batch` at a time; wall time and speculation counters."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    llm.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=2))  # warm up
    before = llm.engine.get_stats()
    start = time.perf_counter()
    outputs = []
    for i in range(0, len(prompts), batch):
        outputs += llm.generate(prompts[i:i + batch], params)
    wall = time.perf_counter() - start
    after = llm.engine.get_stats()
    ids = [o.outputs[0].token_ids for o in outputs]
    row = {"wall_s": wall, "output_tokens": sum(map(len, ids)), "token_ids": ids}
    if "spec_num_draft_tokens" in after:
        drafted = after["spec_num_draft_tokens"] - before["spec_num_draft_tokens"]
        accepted = after["spec_num_accepted_tokens"] - before["spec_num_accepted_tokens"]
        rounds = after["spec_num_rounds"] - before["spec_num_rounds"]
        row.update(acceptance=accepted / drafted if drafted else 0.0,
                   mean_accepted=accepted / rounds if rounds else 0.0,
                   skipped_steps=after["spec_num_skipped_large_batch"]
                   - before["spec_num_skipped_large_batch"])
    return row


def compare(rows: dict[str, dict[str, Any]], section: str, make_llm: Any,
            variants: dict[str, dict[str, Any] | None], prompts: list[list[int]],
            batch: int, max_tokens: int) -> None:
    """Run each variant (None = no speculation, the baseline) on the same prompts."""
    selected = prompts[:BATCH_ONE_PROMPTS] if batch == 1 else prompts[:batch]
    base = None
    for name, spec in variants.items():
        llm = make_llm(spec)
        row = measure(llm, selected, batch, max_tokens)
        del llm
        if base is None:
            base = row
        row["speedup"] = (row["output_tokens"] / row["wall_s"]) / (
            base["output_tokens"] / base["wall_s"])
        row["identical"] = sum(a == b for a, b in zip(row["token_ids"], base["token_ids"],
                                                      strict=True))
        row["num_outputs"] = len(row["token_ids"])
        rows[f"{section} | batch {batch} | {name}"] = row
        print(render_row(f"{section} | batch {batch} | {name}", row), flush=True)


def bundled(rows: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    loaded = load_model(None, torch.bfloat16)

    def make(spec: dict[str, Any] | None) -> LLM:
        return LLM(dtype="bfloat16", loaded=loaded, max_model_len=2048, speculative_config=spec)

    prompts = chat_ids(make(None), grounded_prompts(32))
    ngram = {"method": "ngram", "prompt_lookup_max": 3}
    layers = loaded.arch.num_layers
    variants: dict[str, dict[str, Any] | None] = {
        "alone": None,
        "ngram k=2": {**ngram, "num_speculative_tokens": 2},
        "ngram k=4": {**ngram, "num_speculative_tokens": 4},
        f"self-draft {layers // 2}/{layers} layers k=2": {
            "method": "self_draft", "num_speculative_tokens": 2, "draft_layers": layers // 2},
        f"self-draft {3 * layers // 4}/{layers} layers k=2": {
            "method": "self_draft", "num_speculative_tokens": 2,
            "draft_layers": 3 * layers // 4},
    }
    for batch in (1, 8):
        compare(rows, "SmolLM2-135M grounded", make, variants, prompts, batch, args.max_tokens)
    switch = {**ngram, "num_speculative_tokens": 4}
    compare(rows, "SmolLM2-135M grounded", make, {
        "alone": None, "ngram k=4, no switch": switch,
        "ngram k=4, disable_by_batch_size=16": {**switch, "disable_by_batch_size": 16},
    }, prompts, 32, args.max_tokens)


def qwen(rows: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    missing = missing_packages(QWEN_TARGET) + missing_packages(QWEN_DRAFT)
    if missing:
        print(f"Qwen pair skipped: {len(missing)} packages missing ({missing[0]}, ...)")
        return
    target = load_model(QWEN_TARGET, torch.bfloat16)
    draft: LoadedModel = load_model(QWEN_DRAFT, torch.bfloat16)

    def make(spec: dict[str, Any] | None) -> LLM:
        return LLM(dtype="bfloat16", loaded=target, draft_loaded=draft, max_model_len=2048,
                   speculative_config=spec)

    variants: dict[str, dict[str, Any] | None] = {"alone": None}
    for k in (2, 4, 6):
        variants[f"0.5B draft k={k}"] = {"method": "draft_model", "model": QWEN_DRAFT,
                                         "num_speculative_tokens": k}
    for section, texts in (("Qwen-1.5B code", CODE_PROMPTS), ("Qwen-1.5B chat", CHAT_PROMPTS)):
        prompts = chat_ids(make(None), texts)
        for batch in (1, 8):
            compare(rows, section, make, variants, prompts, batch, args.qwen_max_tokens)


def render_row(name: str, row: dict[str, Any]) -> str:
    rate = row["output_tokens"] / row["wall_s"]
    acceptance = f"{row['acceptance']:.0%}" if "acceptance" in row else "-"
    accepted = f"{row['mean_accepted']:.2f}" if "mean_accepted" in row else "-"
    return (f"{name:<66}{rate:>9.1f}{row['speedup']:>8.2f}x{acceptance:>8}{accepted:>9}"
            f"{row['identical']:>6}/{row['num_outputs']}")


HEADER = f"{'model / prompts | batch | proposer':<66}{'tok/s':>9}{'speedup':>9}{'accept':>8}" \
         f"{'acc len':>9}{'same as alone':>14}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--qwen-max-tokens", type=int, default=64)
    p.add_argument("--skip-qwen", action="store_true")
    p.add_argument("--skip-bundled", action="store_true")
    p.add_argument("--save", type=Path)
    args = p.parse_args()
    torch.set_num_threads(2)
    print("greedy, bf16, 2 threads; speedup = tok/s over the same model alone, same prompts")
    print(HEADER)
    rows: dict[str, dict[str, Any]] = {}
    if not args.skip_bundled:
        bundled(rows, args)
    if not args.skip_qwen:
        qwen(rows, args)
    if args.save:
        for row in rows.values():
            row.pop("token_ids")
        args.save.write_text(json.dumps({"rows": rows, "args": {
            k: str(v) for k, v in vars(args).items()}}, indent=2))


if __name__ == "__main__":
    main()
