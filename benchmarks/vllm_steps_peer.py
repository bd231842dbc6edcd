"""vLLM side of benchmarks/prefix_cache.py: runs under the python of a separate venv
with vLLM's CPU build (it must not import kvscope), drives vLLM's LLMEngine with the
same step loop as kvscope (benchmarks/steploop.py), prints one result line:

    python benchmarks/vllm_steps_peer.py JOB.json  →  KVSCOPE_VLLM_RESULT {json}

JOB.json: model dir, dtype, max_model_len, enable_prefix_caching, token-id prompts,
output_len, and a warm-up prompt.
"""

from __future__ import annotations

import json
import os
import sys

from steploop import run_steps

RESULT_MARKER = "KVSCOPE_VLLM_RESULT "


def main(job_path: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import vllm
    from vllm import LLM, SamplingParams

    with open(job_path) as f:
        job = json.load(f)
    llm = LLM(model=job["model"], dtype=job["dtype"], max_model_len=job["max_model_len"],
              enable_prefix_caching=job["enable_prefix_caching"], seed=0)
    engine = llm.llm_engine
    params = SamplingParams(max_tokens=job["output_len"], ignore_eos=True, temperature=0)
    llm.generate([{"prompt_token_ids": job["warmup"]}], params, use_tqdm=False)
    llm.reset_prefix_cache()

    def add(request_id: str, prompt: list[int]) -> None:
        engine.add_request(request_id, {"prompt_token_ids": prompt}, params)

    result = run_steps(add, engine.step, engine.has_unfinished_requests, job["prompts"])
    result["version"] = vllm.__version__
    print(RESULT_MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: vllm_steps_peer.py JOB.json")
    main(sys.argv[1])
