"""Tensor parallelism on CPU: tp=1 against tp=2, where each step's time goes, and what
the step-contract refactor costs at tp=1. One run, one table.

1. The engine-core workload (throughput.py's: N requests, prompts of 32..512 tokens cut
   from the same text, 128 greedy output tokens each, EOS ignored; add every request,
   then step until done) and batch-1 decode (throughput.py's measure), at tp=1 and tp=2,
   same dtype. After every step the engine's `last_timings` (schedule / forward / sample
   / update) and `executor.collective_stats()` (collectives and their seconds on rank 0)
   are read.
2. The engine at `--baseline` (48a5beb, before the step-contract refactor) against the
   working tree, tp=1, same workload, in interleaved rounds (each run in its own process;
   each tree its own checkout, a git worktree for the commit and a snapshot copy of
   kvscope/ for the working tree, with its own kernel cache, built before any timing),
   judged by the best rounds, the median rounds and the step floor (each step's fastest
   round, summed: the rounds run the same schedule, so this drops moments when another
   process took a core).
3. A PROJECTION, computed and not measured, of the same collectives with NCCL on GPUs,
   beside a measured line of gloo alone (two bare processes all-reducing, no model).

    .venv/bin/python benchmarks/tensor_parallel.py [--save benchmarks/results/tensor-parallel.json]
    .venv/bin/python benchmarks/tensor_parallel.py --quick --skip-baseline   # smoke run

The table goes to stdout, progress to stderr. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# kvscope first, from PYTHONPATH in a worker (the tree under test) or this checkout:
# throughput.py would otherwise put this checkout first on sys.path
import kvscope  # noqa: E402

if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import throughput as tput  # noqa: E402
import torch  # noqa: E402

from kvscope import LLM  # noqa: E402
from kvscope.model.loader import LoadedModel, load_model  # noqa: E402

log = tput.log
RESULT_MARKER = "KVSCOPE_TP_BENCH_RESULT "
DEFAULT_BASELINE = "48a5beb"  # the last commit before the step-contract refactor
# the projection's assumptions (NCCL, 2 GPUs on NVLink); options can change them
NCCL_LATENCY_US = 15.0  # per small collective: NCCL's ~10-20 us on NVLink
NCCL_BUS_GBS = 150.0  # effective bus bandwidth for 0.1-10 MB messages


# -- options ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--num-requests", type=int, help="requests in the batch run (64; quick: 6)")
    p.add_argument("--output-len", type=int, help="output tokens per request (128; quick: 8)")
    p.add_argument("--batch1-tokens", type=int,
                   help="new tokens of the batch-1 decode test (128; quick: 8)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads of the engine process (tp=2: half per rank)")
    p.add_argument("--seed", type=int, default=0, help="seed of prompt lengths and offsets")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--rounds", type=int,
                   help="interleaved rounds of part 2 (4, in ABBA order; quick: 1)")
    p.add_argument("--baseline", default=DEFAULT_BASELINE,
                   help="git commit compared with the working tree at tp=1")
    p.add_argument("--skip-baseline", action="store_true",
                   help="skip part 2 (the old commit against the working tree)")
    p.add_argument("--nccl-latency-us", type=float, default=NCCL_LATENCY_US,
                   help="projection: NCCL time per collective before its bytes")
    p.add_argument("--nccl-bus-gbs", type=float, default=NCCL_BUS_GBS,
                   help="projection: NCCL bus bandwidth, GB/s")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    p.add_argument("--save", type=Path, metavar="PATH", help="write all figures as JSON here")
    p.add_argument("--worker", metavar="LABEL", help=argparse.SUPPRESS)
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--gloo-rank", type=int, help=argparse.SUPPRESS)
    p.add_argument("--gloo-init", help=argparse.SUPPRESS)
    p.add_argument("--gloo-sizes", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    base = tput.QUICK if args.quick else tput.FULL
    args.sizes = dataclasses.replace(
        base,
        num_requests=base.num_requests if args.num_requests is None else args.num_requests,
        output_len=base.output_len if args.output_len is None else args.output_len,
        batch1_tokens=base.batch1_tokens if args.batch1_tokens is None else args.batch1_tokens)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 4
    if args.sizes.num_requests < 1 or args.sizes.output_len < 1 or args.rounds < 1:
        p.error("--num-requests, --output-len and --rounds must be >= 1")
    if args.sizes.batch1_tokens < 2:
        p.error("--batch1-tokens must be >= 2")
    if args.sizes.max_prompt + args.sizes.output_len > args.max_model_len:
        p.error(f"--max-model-len {args.max_model_len} is below the longest request")
    return args


def _dtype(name: str) -> torch.dtype:
    return torch.bfloat16 if name == "bfloat16" else torch.float32


def workload(loaded: LoadedModel, args: argparse.Namespace
             ) -> tuple[list[list[int]], list[int]]:
    corpus_ids = list(loaded.tokenizer.encode(tput.corpus_text(), add_special_tokens=False))
    return (tput.make_prompts(corpus_ids, args.sizes, args.seed),
            corpus_ids[:args.sizes.batch1_prompt])


# -- per-step figures ---------------------------------------------------------------------


class StepRecorder:
    """Reads the engine's figures after each step() by wrapping that bound method on this
    one engine instance (as throughput.KVProbe wraps schedule()): the step's timings, its
    collectives (rank 0's count and seconds), tokens run and tokens sampled."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.steps: list[tuple[float, ...]] = []
        executor = getattr(engine, "executor", None)  # none before tensor parallelism
        original = engine.step

        def step() -> Any:
            tokens, sampled = engine.num_computed_tokens, engine.num_generated_tokens
            outputs = original()
            tokens = engine.num_computed_tokens - tokens
            if tokens:  # an empty step leaves last_timings as they were
                t = engine.last_timings
                count, seconds = executor.collective_stats() if executor else (0, 0.0)
                self.steps.append((t.schedule_s, t.forward_s, t.sample_s, t.update_s, count,
                                   seconds, tokens, engine.num_generated_tokens - sampled))
            return outputs

        engine.step = step

    def close(self) -> None:
        del self.engine.step  # back to the class's method

    def step_seconds(self) -> list[float]:
        """Each step's schedule + forward + sample + update, in order."""
        return [round(sum(row[:4]), 6) for row in self.steps]

    def summary(self, skip_first: int = 0) -> dict[str, Any]:
        rows = self.steps[skip_first:]
        n = len(rows)
        if not n:
            return {"steps": 0}
        cols = list(zip(*rows, strict=True))
        sched, fwd, sample, update, count, coll = (sum(c) for c in cols[:6])
        return {"steps": n, "schedule_ms": 1e3 * sched / n, "forward_ms": 1e3 * fwd / n,
                "sample_ms": 1e3 * sample / n, "update_ms": 1e3 * update / n,
                "step_ms": 1e3 * (sched + fwd + sample + update) / n,
                "collectives_per_step": count / n, "collective_ms_per_step": 1e3 * coll / n,
                "collective_us_each": 1e6 * coll / count if count else None,
                "collective_share_of_forward": coll / fwd if fwd else None,
                "tokens_per_step": sum(cols[6]) / n, "sampled_per_step": sum(cols[7]) / n}


def same_outputs(a: list[list[int]], b: list[list[int]]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def digest(outputs: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(outputs).encode()).hexdigest()[:16]


# -- part 1: tp=1 and tp=2 ----------------------------------------------------------------


def run_tp(tp: int, args: argparse.Namespace, loaded: LoadedModel, prompts: list[list[int]],
           batch1_prompt: list[int]) -> dict[str, Any]:
    sizes = args.sizes
    start = time.perf_counter()
    llm = LLM(dtype=args.dtype, loaded=loaded, max_model_len=args.max_model_len,
              tensor_parallel_size=tp)
    try:
        startup = time.perf_counter() - start
        log(f"tp={tp}: engine up in {startup:.1f} s; warm-up")
        tput.kvscope_generate(llm, prompts[0][:32], 4)
        recorder = StepRecorder(llm.engine)
        log(f"tp={tp}: engine-core run")
        batch = tput.run_kvscope(llm, prompts, sizes.output_len, args.max_model_len)
        batch_steps = recorder.summary()
        log(f"  {sizes.num_requests * sizes.output_len / batch['wall_s']:.1f} output tok/s "
            f"in {batch['wall_s']:.1f} s")
        log(f"tp={tp}: batch-1 decode")
        recorder.close()
        b1 = tput.decode_rate(functools.partial(tput.kvscope_generate, llm, batch1_prompt),
                              sizes.batch1_tokens)
        recorder = StepRecorder(llm.engine)  # one more pass, to see its steps
        tput.kvscope_generate(llm, batch1_prompt, sizes.batch1_tokens)
        recorder.close()
        b1_steps = recorder.summary(skip_first=1)  # the decode steps, not the prefill
    finally:
        llm.shutdown()
        del llm
        gc.collect()
    return {"tp": tp, "startup_s": startup, "wall_s": batch["wall_s"],
            "output_tok_s": sizes.num_requests * sizes.output_len / batch["wall_s"],
            "steps": batch["steps"], "outputs": batch["outputs"],
            "outputs_sha256": digest(batch["outputs"]), "step_figures": batch_steps,
            "batch1": {**b1, "step_figures": b1_steps}}


# -- part 2: the commit before the refactor against the working tree ----------------------


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One tp=1 engine-core run in this process, kvscope from PYTHONPATH."""
    from kvscope.kernels.build import cpu_kernels

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    kernels = cpu_kernels()  # build (or load) the C++ kernels now, not inside the timed run
    build_s = time.perf_counter() - start
    loaded = load_model(None, _dtype(args.dtype))
    if args.prepare:
        return {"label": args.worker, "build_s": build_s, "kernels": kernels is not None,
                "kvscope": str(Path(kvscope.__file__).parent)}
    prompts, _ = workload(loaded, args)
    llm = LLM(dtype=args.dtype, loaded=loaded, max_model_len=args.max_model_len)
    tput.kvscope_generate(llm, prompts[0][:32], 4)
    recorder = StepRecorder(llm.engine)
    batch = tput.run_kvscope(llm, prompts, args.sizes.output_len, args.max_model_len)
    recorder.close()
    return {"label": args.worker, "wall_s": batch["wall_s"],
            "output_tok_s": args.sizes.num_requests * args.sizes.output_len / batch["wall_s"],
            "steps": batch["steps"], "step_figures": recorder.summary(),
            "step_s": recorder.step_seconds(), "outputs": batch["outputs"],
            "outputs_sha256": digest(batch["outputs"]),
            "kernels": kernels is not None, "kvscope": str(Path(kvscope.__file__).parent),
            "load_avg_1min_before": os.getloadavg()[0]}


def _git(*argv: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *argv], check=True, text=True,
                          capture_output=True).stdout.rstrip("\n")


@contextlib.contextmanager
def source_trees(baseline: str) -> Iterator[tuple[dict[str, Path], dict[str, Any]]]:
    """Two checkouts, each with its own kernel cache beside it: a git worktree of
    `baseline`, and a copy of the working tree's kvscope/ (tracked and untracked files
    as they are now, so edits made during the run do not reach it)."""
    with tempfile.TemporaryDirectory(prefix="kvscope-tp-bench-") as tmp:
        base_dir, work_dir = Path(tmp) / "baseline", Path(tmp) / "working"
        files = _git("ls-files", "-co", "--exclude-standard", "--", "kvscope").splitlines()
        content = hashlib.sha256()
        for name in sorted(files):
            src = ROOT / name
            if src.is_file():
                dst = work_dir / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
                content.update(name.encode() + b"\0" + src.read_bytes())
        info = {"baseline": _git("rev-parse", baseline), "head": _git("rev-parse", "HEAD"),
                "working_tree_changes": _git("status", "--short", "--", "kvscope").splitlines(),
                "working_tree_sha256": content.hexdigest()[:16]}
        _git("worktree", "add", "--detach", "-q", str(base_dir), baseline)
        try:
            yield {baseline: base_dir, "working tree": work_dir}, info
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(base_dir)], check=False)


def run_tree(label: str, tree: Path, args: argparse.Namespace, prepare: bool) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree),
           "KVSCOPE_CACHE": str(tree.parent / f"cache-{tree.name}")}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", label,
           "--dtype", args.dtype, "--threads", str(args.threads), "--seed", str(args.seed),
           "--max-model-len", str(args.max_model_len),
           "--num-requests", str(args.sizes.num_requests),
           "--output-len", str(args.sizes.output_len), *(["--quick"] if args.quick else []),
           *(["--prepare"] if prepare else [])]
    proc = subprocess.run(cmd, env=env, cwd=tree, text=True, capture_output=True,
                          timeout=3600, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
    if not lines:
        raise RuntimeError(f"{label} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len(RESULT_MARKER):])
    if Path(result["kvscope"]).resolve() != (tree / "kvscope").resolve():
        raise RuntimeError(f"{label} imported kvscope from {result['kvscope']}, not {tree}")
    return result


def compare_trees(args: argparse.Namespace) -> dict[str, Any]:
    with source_trees(args.baseline) as (trees, info):
        labels = list(trees)
        for label in labels:
            log(f"refactor: preparing {label} (kernel build, model load; not timed)")
            prep = run_tree(label, trees[label], args, prepare=True)
            log(f"  kernels {'built/loaded' if prep['kernels'] else 'UNAVAILABLE'} in "
                f"{prep['build_s']:.1f} s")
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
        for r in range(args.rounds):
            for label in labels if r % 2 == 0 else labels[::-1]:  # ABBA: drift hits both
                log(f"refactor: round {r + 1}/{args.rounds}: {label}")
                res = run_tree(label, trees[label], args, prepare=False)
                log(f"  {res['output_tok_s']:.1f} output tok/s in {res['wall_s']:.1f} s")
                runs[label].append(res)
    best = {label: min(rs, key=lambda x: x["wall_s"]) for label, rs in runs.items()}
    new, old = best["working tree"], best[args.baseline]
    same = same_outputs(new["outputs"], old["outputs"])
    floor = {label: step_floor([x.pop("step_s") for x in rs]) for label, rs in runs.items()}
    for rs in runs.values():
        for res in rs:
            del res["outputs"]  # their digests stay
    ratio_floor = (floor[args.baseline] / floor["working tree"]
                   if floor["working tree"] and floor[args.baseline] else None)
    return {**info, "rounds": args.rounds, "runs": runs, "best": best,
            "median_output_tok_s": {label: statistics.median(x["output_tok_s"] for x in rs)
                                    for label, rs in runs.items()},
            "step_floor_s": floor, "ratio_best": new["output_tok_s"] / old["output_tok_s"],
            "ratio_step_floor": ratio_floor, "same_outputs": same}


def step_floor(rounds: list[list[float]]) -> float | None:
    """Sum over steps of the fastest round's time for that step: every round runs the
    same deterministic schedule, so this keeps each step's undisturbed time and drops
    the moments another process took the cores. None if the rounds' steps differ."""
    if len({len(r) for r in rounds}) != 1:
        return None
    return sum(min(times) for times in zip(*rounds, strict=True))


# -- gloo alone: what one all-reduce costs here with no model around it ------------------


GLOO_REPS = 200


def gloo_rank(rank: int, init_method: str, sizes: list[int], dtype: torch.dtype
              ) -> dict[str, Any]:
    """One of two ranks: all-reduce tensors of each size (elements) back to back,
    one thread per process as the tp=2 workers have; rank 0 reports the mean per call."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=2)
    try:
        means = {}
        for n in sizes:
            x = torch.ones(n, dtype=dtype)
            for _ in range(20):
                dist.all_reduce(x)
            dist.barrier()
            start = time.perf_counter()
            for _ in range(GLOO_REPS):
                dist.all_reduce(x)
            means[str(n)] = (time.perf_counter() - start) / GLOO_REPS
    finally:
        dist.destroy_process_group()
    return {"rank": rank, "mean_s": means}


def gloo_floor(sizes: list[int], dtype: str) -> dict[str, float]:
    """Mean seconds per gloo all-reduce of each size between two processes here."""
    from kvscope.executor.multiproc import free_tcp_init_method

    init = free_tcp_init_method()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--gloo-init", init,
           "--gloo-sizes", ",".join(map(str, sizes)), "--dtype", dtype]
    procs = [subprocess.Popen([*cmd, "--gloo-rank", str(rank)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for rank in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    lines = [ln for ln in outs[0][0].splitlines() if ln.startswith(RESULT_MARKER)]
    if not lines:
        raise RuntimeError(f"the gloo probe failed:\n{outs[0][1][-2000:]}")
    return json.loads(lines[-1][len(RESULT_MARKER):])["mean_s"]


# -- part 3: the projection ---------------------------------------------------------------


def project(steps: dict[str, Any], arch: Any, itemsize: int, tp: int, latency_us: float,
            bus_gbs: float) -> dict[str, Any]:
    """Time per step of the same collectives with NCCL: per collective a fixed latency,
    plus its bytes over the bus bandwidth (ring: an all-reduce moves 2(n-1)/n of its
    buffer per rank, an all-gather (n-1)/n of its output)."""
    tokens, sampled = steps["tokens_per_step"], steps["sampled_per_step"]
    reduce_bytes = (2 * arch.num_layers + 1) * tokens * arch.hidden_size * itemsize
    gather_bytes = sampled * arch.vocab_size * itemsize
    moved = reduce_bytes * 2 * (tp - 1) / tp + gather_bytes * (tp - 1) / tp
    count = steps["collectives_per_step"]
    ms = count * latency_us / 1e3 + moved / (bus_gbs * 1e9) * 1e3
    return {"collectives_per_step": count, "bytes_per_step": reduce_bytes + gather_bytes,
            "nccl_ms_per_step": ms, "nccl_us_each": 1e3 * ms / count if count else None,
            "gloo_ms_per_step": steps["collective_ms_per_step"],
            "gloo_us_each": steps["collective_us_each"]}


# -- the table ----------------------------------------------------------------------------


def _f(x: float | None, spec: str, width: int) -> str:
    return f"{'-' if x is None else format(x, spec):>{width}}"


HEADER = (f"{'run':<27}{'tp':>3}{'wall s':>8}{'out tok/s':>11}{'ratio':>8}{'steps':>7}"
          f"{'coll/step':>10}{'coll ms':>9}{'fwd ms':>8}{'coll%fwd':>9}{'sched':>7}"
          f"{'sample':>8}{'update':>8}{'same':>6}")


def _row(name: str, tp: int | str, wall: float | None, tok_s: float | None,
         ratio: float | None, steps: dict[str, Any], same: float | None) -> str:
    share = steps.get("collective_share_of_forward")
    return (f"{name:<27}{tp:>3}{_f(wall, '.2f', 8)}{_f(tok_s, '.1f', 11)}"
            f"{'-' if ratio is None else f'{ratio:.2f}x':>8}{steps.get('steps', 0):>7}"
            f"{_f(steps.get('collectives_per_step'), '.1f', 10)}"
            f"{_f(steps.get('collective_ms_per_step'), '.1f', 9)}"
            f"{_f(steps.get('forward_ms'), '.1f', 8)}"
            f"{'-' if not share else f'{100 * share:.0f}%':>9}"
            f"{_f(steps.get('schedule_ms'), '.2f', 7)}{_f(steps.get('sample_ms'), '.2f', 8)}"
            f"{_f(steps.get('update_ms'), '.2f', 8)}"
            f"{'-' if same is None else f'{100 * same:.0f}%':>6}")


def render(results: dict[str, Any]) -> str:
    w, tp = results["workload"], results["tp"]
    ref = tp[0]
    lines = [
        f"kvscope tensor parallelism: {w['num_requests']} requests, prompts "
        f"{w['min_prompt']}-{w['max_prompt']} tokens ({w['prompt_tokens']} in all), "
        f"{w['output_len']} output tokens each, greedy, {results['dtype']}; "
        f"{results['threads']} threads at tp=1, {results['threads']}//tp per rank at tp>1",
        f"CPU: {results['machine']['cpu']}, {results['machine']['cpu_count']} cores; "
        f"flags: {' '.join(results['machine']['simd_flags']) or 'none of note'}",
        "",
        "step columns are means per step, ms: coll = rank 0's time in collectives, fwd = "
        "executor call (incl. coll), same = outputs equal to tp=1's / the working tree's",
        HEADER,
    ]
    for r in tp:
        lines.append(_row(f"engine-core {w['num_requests']}x{w['output_len']}", r["tp"],
                          r["wall_s"], r["output_tok_s"], r["output_tok_s"] / ref["output_tok_s"],
                          r["step_figures"], r["same_as_tp1"]))
    for r in tp:
        b1, b1_ref = r["batch1"], ref["batch1"]["decode_tok_s"]
        rate = b1["decode_tok_s"]
        lines.append(_row(f"batch-1 decode {b1['tokens']} tok", r["tp"], b1["time_n_s"], rate,
                          rate / b1_ref if rate and b1_ref else None, b1["step_figures"], None))
    cmp = results.get("refactor")
    if cmp:
        base = cmp["best"][results["baseline"]]
        lines.append(f"step-contract refactor, tp=1, engine-core, best of {cmp['rounds']} "
                     "interleaved rounds (own process each), ratio = vs "
                     f"{results['baseline']}:")
        for label, res in cmp["best"].items():
            name = (f"{label} (before refactor)" if label == results["baseline"]
                    else f"working tree @{cmp['head'][:7]}"
                    + (f"+{n}" if (n := len(cmp["working_tree_changes"])) else ""))
            lines.append(_row(name, 1, res["wall_s"], res["output_tok_s"],
                              res["output_tok_s"] / base["output_tok_s"], res["step_figures"],
                              None if label == results["baseline"] else cmp["same_outputs"]))
        med = cmp["median_output_tok_s"]
        base_med = med[results["baseline"]]
        floor, ratio = cmp["step_floor_s"], cmp["ratio_step_floor"]
        lines.append(f"  working tree / {results['baseline']}: {cmp['ratio_best']:.3f} (best "
                     f"rounds), {med['working tree'] / base_med:.3f} (median rounds: "
                     + ", ".join(f"{v:.1f}" for v in med.values()) + " tok/s)"
                     + ("" if ratio is None else
                        f", {ratio:.3f} (step floor: {floor['working tree']:.2f} s vs "
                        f"{floor[results['baseline']]:.2f} s, each step's fastest round)"))
        verdict = cmp["ratio_best"] if ratio is None else ratio
        lines.append("  verdict (step floor, else best): " + (
            f"the working tree LOSES {100 * (1 - verdict):.1f}%, more than 3%"
            if verdict < 0.97 else f"within 3% ({verdict:.3f})"))
    floor = results["gloo_alone"]["mean_s_by_elements"]
    itemsize = _dtype(results["dtype"]).itemsize
    lines.append("gloo all-reduce alone (measured: 2 processes, 1 thread each, no model, "
                 f"mean of {results['gloo_alone']['reps']}): " + ", ".join(
                     f"{1e6 * t:.0f} us for {int(n) * itemsize / 1e3:.1f} KB"
                     for n, t in floor.items()))
    p = results["projection"]
    a = p["assumptions"]
    lines += [
        "",
        f"PROJECTION (computed, not measured): the same collectives at tp={p['tp']} with "
        f"NCCL on NVLink-connected GPUs, assuming {a['latency_us']:.0f} us per collective "
        f"(NCCL's small-message latency, ~10-20 us) + bytes / {a['bus_gbs']:.0f} GB/s "
        "(ring: all-reduce moves 2(n-1)/n of its buffer); GPU compute not projected:",
    ]
    for name, q in p["runs"].items():
        less = q["gloo_ms_per_step"] / q["nccl_ms_per_step"] if q["nccl_ms_per_step"] else 0
        lines.append(
            f"  {name:<15} {q['collectives_per_step']:.0f} collectives, "
            f"{q['bytes_per_step'] / 1e6:.2f} MB per step: ~{q['nccl_ms_per_step']:.2f} ms "
            f"(~{q['nccl_us_each']:.0f} us each) with NCCL vs {q['gloo_ms_per_step']:.1f} ms "
            f"({q['gloo_us_each']:.0f} us each) measured with gloo here, {less:.0f}x less")
    load = results["machine"]["load_avg_1min_before"]
    if load >= 0.5:
        lines.append(f"note: 1-min load average was {load:.2f} before the run: other "
                     "processes shared the CPU, so these figures are noisy")
    return "\n".join(lines)


def simd_flags() -> list[str]:
    """The CPU's vector-ISA flags that decide the kernels (AVX2, AVX-512, bf16, AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(ln for ln in f if ln.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return []
    return sorted(x for x in flags if x.startswith(("avx", "amx", "fma")) or "bf16" in x)


# -- the run ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, loaded: LoadedModel | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, return every figure. `loaded` reuses a model
    already in memory (tests); its dtype must match --dtype."""
    args = parse_args(argv)
    if args.gloo_rank is not None:
        result = gloo_rank(args.gloo_rank, args.gloo_init,
                           [int(n) for n in args.gloo_sizes.split(",")], _dtype(args.dtype))
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return result
    if args.worker:
        result = worker(args)
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return result
    sizes = args.sizes
    load_before = os.getloadavg()[0]
    if load_before >= 0.5:
        log(f"warning: load average {load_before:.2f} before starting; figures will be noisy")
    torch.set_num_threads(args.threads)
    dtype = _dtype(args.dtype)
    if loaded is None:
        log("loading the bundled model")
        loaded = load_model(None, dtype)
    prompts, batch1_prompt = workload(loaded, args)
    prompt_tokens = sum(map(len, prompts))
    log(f"workload: {len(prompts)} prompts, {prompt_tokens} prompt tokens, "
        f"{sizes.num_requests * sizes.output_len} output tokens")

    runs = [run_tp(tp, args, loaded, prompts, batch1_prompt) for tp in (1, 2)]
    tp1_outputs = runs[0]["outputs"]
    for r in runs:
        r["same_as_tp1"] = same_outputs(r.pop("outputs"), tp1_outputs)

    # the messages of the two runs' mean step: an all-reduce of tokens x hidden
    hidden = loaded.arch.hidden_size
    probe_sizes = sorted({max(1, round(r["step_figures"]["tokens_per_step"])) * hidden
                          for r in (runs[1], runs[1]["batch1"])})
    log(f"gloo all-reduce alone, 2 processes x 1 thread: {probe_sizes} floats")
    floor = gloo_floor(probe_sizes, args.dtype)

    refactor = None if args.skip_baseline else compare_trees(args)

    itemsize = dtype.itemsize
    tp2 = runs[1]
    projection = {
        "tp": 2, "computed_not_measured": True,
        "assumptions": {"latency_us": args.nccl_latency_us, "bus_gbs": args.nccl_bus_gbs,
                        "dtype_bytes": itemsize},
        "runs": {name: project(steps, loaded.arch, itemsize, 2, args.nccl_latency_us,
                               args.nccl_bus_gbs)
                 for name, steps in (("engine-core", tp2["step_figures"]),
                                     ("batch-1 decode", tp2["batch1"]["step_figures"]))
                 if steps.get("steps") and steps.get("collectives_per_step")},
    }
    results = {
        "dtype": args.dtype, "threads": args.threads, "max_model_len": args.max_model_len,
        "baseline": args.baseline,
        "workload": {"num_requests": sizes.num_requests, "min_prompt": sizes.min_prompt,
                     "max_prompt": sizes.max_prompt, "output_len": sizes.output_len,
                     "prompt_tokens": prompt_tokens,
                     "output_tokens": sizes.num_requests * sizes.output_len,
                     "batch1_prompt": len(batch1_prompt), "seed": args.seed,
                     "prompt_ids_sha256": tput.ids_digest(prompts),
                     "text": tput.TEXT_SOURCE.format(platform.python_version())},
        "tp": runs, "refactor": refactor, "projection": projection,
        "gloo_alone": {"reps": GLOO_REPS, "dtype": args.dtype, "threads_per_process": 1,
                       "mean_s_by_elements": floor},
        "machine": {"cpu": tput.cpu_name(), "cpu_count": os.cpu_count(),
                    "simd_flags": simd_flags(), "torch": torch.__version__,
                    "python": platform.python_version(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
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
