"""llama.cpp side of benchmarks/cpu_matrix.py: batch-1 decode of a GGUF file with
llama-cpp-python. Runs under the python of a separate venv that has it (it must not
import kvscope):

    .venv-llama/bin/python benchmarks/llama_cpp_peer.py '{"model": "x.gguf", ...}'

The job (JSON on the command line) names the model, threads, context size, the prompt
token ids and the tokens to decode. The result is one stdout line:
`KVSCOPE_LLAMA_RESULT {json}` with the decode rate, measured as throughput.decode_rate
does: (n - 1) / (time for n tokens - time for 1), best of 2, so the prompt cancels out.
"""

from __future__ import annotations

import json
import sys
import time

RESULT_MARKER = "KVSCOPE_LLAMA_RESULT "


def main(job_text: str) -> None:
    import llama_cpp

    job = json.loads(job_text)
    llm = llama_cpp.Llama(model_path=job["model"], n_threads=job["threads"],
                          n_threads_batch=job["threads"], n_ctx=job["n_ctx"], n_batch=512,
                          verbose=False)
    eos = llm.token_eos()

    def generate(n: int) -> list[int]:
        """Greedy, EOS never chosen (as ignore_eos elsewhere), prompt evaluated afresh."""
        llm.reset()
        out: list[int] = []
        for token in llm.generate(job["prompt"], temp=0.0, top_k=1, reset=True,
                                  logits_processor=[lambda ids, logits: _no_eos(logits, eos)]):
            out.append(token)
            if len(out) == n:
                break
        return out

    generate(4)  # warm-up
    best_1 = best_n = float("inf")
    n = job["tokens"]
    for _ in range(2):
        t = time.perf_counter()
        generate(1)
        best_1 = min(best_1, time.perf_counter() - t)
        t = time.perf_counter()
        tokens = generate(n)
        best_n = min(best_n, time.perf_counter() - t)
    delta = best_n - best_1
    print(RESULT_MARKER + json.dumps({
        "version": llama_cpp.__version__, "decode_tok_s": (n - 1) / delta if delta > 0 else None,
        "time_1_s": best_1, "time_n_s": best_n, "tokens": tokens}), flush=True)


def _no_eos(logits, eos: int):
    logits[eos] = -float("inf")
    return logits


if __name__ == "__main__":
    main(sys.argv[1])
