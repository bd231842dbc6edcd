"""What engine events cost: throughput on the engine-core workload with no listener,
with the JSONL recorder, and with a live browser-style SSE client, side by side in one
run, against the engine from before events existed.

Each variant runs in its own process, in rounds (A B C D, A B C D, ...) so a noisy
machine hits every variant alike; the table shows the best round of each (the least
disturbed) and its ratio to the baseline.

- `before events`: the engine at a commit before the event code (`--baseline`, checked
  out into a temporary git worktree), driven the same way;
- `no listener`: today's engine, nothing subscribed (every call site skips its event);
- `JSONL recorder`: every event serialised to a file;
- `live SSE client`: the serving path: `kvscope serve`'s app on a loopback port with a
  client reading /scope/api/live while the engine runs the workload.

The workload is throughput.py's (N requests, prompts of 32..512 tokens cut from the same
text, 128 greedy output tokens each, EOS ignored), submitted at once to the async engine.

    .venv/bin/python benchmarks/events_overhead.py [--rounds 3] [--num-requests 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from baseline_tree import ROOT, report, run_worker, worktree

HERE = Path(__file__).resolve().parent
VARIANTS = ("before events", "no listener", "JSONL recorder", "live SSE client")
DEFAULT_BASELINE = "44a12e6"  # the last commit before engine events were typed and emitted


def worker(variant: str, num_requests: int, output_len: int) -> dict[str, Any]:
    """Run the workload once in this process (kvscope imported from sys.path)."""
    import asyncio
    import dataclasses
    import threading
    import time

    import torch

    # kvscope first, from PYTHONPATH (the baseline worktree or this checkout): throughput.py
    # would otherwise put this checkout first on sys.path
    import kvscope
    from kvscope import SamplingParams
    from kvscope.config import EngineConfig
    from kvscope.engine.async_engine import AsyncEngine
    from kvscope.engine.llm_engine import LLMEngine
    from kvscope.model.loader import load_model

    sys.path.insert(0, str(HERE))
    from throughput import FULL, corpus_text, make_prompts

    from kvscope.kernels.build import cpu_kernels

    torch.set_num_threads(2)
    cpu_kernels()  # build (or load) the C++ kernels now, not inside the timed run
    loaded = load_model(None, torch.bfloat16)
    sizes = dataclasses.replace(FULL, num_requests=num_requests, output_len=output_len)
    prompts = make_prompts(loaded.tokenizer.encode(corpus_text()), sizes, 0)
    config = EngineConfig.from_kwargs(dtype=torch.bfloat16, max_model_len=1024)
    sink, cleanup, server = None, None, None
    if variant == "JSONL recorder":
        from kvscope.events import JsonlRecorder

        path = Path(tempfile.mkdtemp()) / "run.jsonl"
        sink = JsonlRecorder(path)
        cleanup = sink.close
    elif variant == "live SSE client":
        from kvscope.scope.live import LiveEvents

        sink = LiveEvents()
    engine = AsyncEngine(LLMEngine(config, sink=sink, loaded=loaded))
    received = [0]
    if variant == "live SSE client":
        server = _start_server(engine, sink)
        _follow_live(server, received, threading.Event())
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)

    async def run() -> float:
        start = time.perf_counter()
        stream = await engine.add_requests([(str(i), p, params) for i, p in enumerate(prompts)])
        async for _ in stream:
            pass
        return time.perf_counter() - start

    wall = asyncio.run(run())
    time.sleep(0.5)  # let the client read the tail
    if server is not None:
        server.should_exit = True
    engine.shutdown()
    if cleanup:
        cleanup()
    return {"variant": variant, "wall_s": wall, "output_tokens": num_requests * output_len,
            "sse_bytes": received[0], "kvscope": str(Path(kvscope.__file__).parent)}


def _start_server(engine: Any, live: Any) -> Any:
    import threading
    import time

    import uvicorn

    from kvscope.serve.app import build_app

    app = build_app(engine, "bench", live=live)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server


def _follow_live(server: Any, received: list[int], ready: Any) -> None:
    """A browser stand-in: read the live stream on another thread until it closes."""
    import threading

    import httpx

    port = server.servers[0].sockets[0].getsockname()[1]

    def read() -> None:
        try:
            with httpx.stream("GET", f"http://127.0.0.1:{port}/scope/api/live",
                              timeout=None) as r:
                for chunk in r.iter_raw():
                    received[0] += len(chunk)
                    ready.set()
        except httpx.HTTPError:
            pass

    threading.Thread(target=read, daemon=True).start()
    ready.wait(30)


def run_variant(variant: str, args: argparse.Namespace, baseline_dir: Path) -> dict[str, Any]:
    before = variant == "before events"
    return run_worker(Path(__file__).resolve(),
                      [variant, "--num-requests", str(args.num_requests),
                       "--output-len", str(args.output_len)],
                      baseline_dir if before else ROOT,
                      f"kvscope-baseline-{args.baseline}" if before else None)


def render(best: dict[str, dict[str, Any]], rounds: int) -> str:
    base = best["before events"]["output_tokens"] / best["before events"]["wall_s"]
    lines = [f"best of {rounds} rounds, {best['no listener']['output_tokens']} output tokens",
             f"{'variant':<18}{'wall s':>8}{'out tok/s':>11}{'vs before':>11}{'overhead':>10}"]
    for name in VARIANTS:
        row = best[name]
        tput = row["output_tokens"] / row["wall_s"]
        lines.append(f"{name:<18}{row['wall_s']:>8.2f}{tput:>11.1f}{tput / base:>10.3f}x"
                     f"{(base / tput - 1) * 100:>9.1f}%")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--baseline", default=DEFAULT_BASELINE, help="git commit before events")
    p.add_argument("--save", type=Path)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        report(worker(args.worker, args.num_requests, args.output_len))
        return
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with worktree(args.baseline) as baseline_dir:
        for r in range(args.rounds):
            for variant in VARIANTS:
                print(f"round {r + 1}: {variant}...", file=sys.stderr, flush=True)
                runs[variant].append(run_variant(variant, args, baseline_dir))
    best = {v: min(rs, key=lambda r: r["wall_s"]) for v, rs in runs.items()}
    print(render(best, args.rounds))
    if args.save:
        args.save.write_text(json.dumps({"runs": runs, "args": {
            k: str(v) for k, v in vars(args).items()}}, indent=2))


if __name__ == "__main__":
    main()
