"""`kvscope bench sweep`: measure a grid of engine settings on one short serving
workload and write every point as JSON, the Tuning Lab's recorded curve.

Each flag of the grid takes one or more values and the grid is their product; each
point runs through `tuning.measure_setting`, the function the Tuning Lab's live route
calls too. The file records the command that remakes it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kvscope.bench import tuning
from kvscope.bench.tuning import SETTING_KEYS, TuningRun

SWEEP_KIND = "kvscope-tuning-sweep"
SWEEP_VERSION = 1
RECORDED_SWEEP = Path(__file__).resolve().parent / "data" / "tuning-sweep.json"
DEFAULT_GRID: dict[str, list[Any]] = {
    "max_num_seqs": [1, 2, 4, 8],
    "max_num_batched_tokens": [64, 256],
    "num_blocks": [64],
    "enable_prefix_caching": [True, False],
    "speculative": ["off", "ngram"],
    "request_rate": [None, 4.0],
}
# the flag of each knob, and how a value is written on the command line
FLAGS = {"max_num_seqs": "--max-num-seqs", "max_num_batched_tokens": "--max-num-batched-tokens",
         "num_blocks": "--num-blocks", "enable_prefix_caching": "--prefix-caching",
         "speculative": "--speculative", "request_rate": "--request-rate"}
WORKLOAD_FLAGS = {"num_requests": "--num-requests", "input_len": "--input-len",
                  "output_len": "--output-len", "shared_prefix_len": "--shared-prefix-len",
                  "seed": "--seed"}


def grid_points(grid: dict[str, list[Any]], workload: dict[str, Any]) -> list[TuningRun]:
    """Every combination of the grid's values (in the order of SETTING_KEYS, the last
    varying fastest), each with the workload; a bad combination fails before any runs."""
    keys = list(SETTING_KEYS)
    runs = []
    for values in itertools.product(*(grid[k] for k in keys)):
        try:
            runs.append(TuningRun(**dict(zip(keys, values, strict=True)), **workload))
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise ValueError(f"grid point {dict(zip(keys, values, strict=True))}: {exc}") from exc
    return runs


def run_sweep(loaded: Any, runs: list[TuningRun], repeats: int = 1,
              progress: bool = True) -> list[dict[str, Any]]:
    """Measure every point, in order, each on its own fresh engine. With `repeats` > 1
    each point is measured that many times and the run of median output throughput is
    kept (a busy machine's spikes fall on the others); every run's throughput is kept
    beside it so the spread shows."""
    points = []
    for number, run in enumerate(runs, 1):
        t0 = time.perf_counter()
        tries = [tuning.measure_setting(loaded, run) for _ in range(repeats)]
        tries.sort(key=lambda p: p["metrics"]["output_throughput"])
        point = tries[len(tries) // 2]
        if repeats > 1:
            point["repeats"] = [p["metrics"]["output_throughput"] for p in tries]
        points.append(point)
        if progress:
            m = point["metrics"]
            print(f"[{number}/{len(runs)}] {describe_setting(run.setting())}: "
                  f"TTFT {m['ttft_ms']['mean']:.0f} ms, TPOT {m['tpot_ms']['mean']:.1f} ms, "
                  f"{m['output_throughput']:.1f} tok/s ({time.perf_counter() - t0:.1f} s)",
                  file=sys.stderr, flush=True)
    return points


def describe_setting(setting: dict[str, Any]) -> str:
    rate = setting["request_rate"]
    return (f"seqs={setting['max_num_seqs']} tokens={setting['max_num_batched_tokens']} "
            f"blocks={setting['num_blocks']} "
            f"prefix={'on' if setting['enable_prefix_caching'] else 'off'} "
            f"spec={setting['speculative']} rate={'all' if rate is None else rate}")


def command_line(grid: dict[str, list[Any]], workload: dict[str, Any], model: str | None,
                 dtype: str, repeats: int, output: str) -> str:
    """The `kvscope bench sweep` command that measures this grid again."""
    words = ["kvscope", "bench", "sweep"]
    if model:
        words += ["--model", model]
    words += ["--dtype", dtype]
    for key, flag in FLAGS.items():
        words += [flag, *(_flag_value(v) for v in grid[key])]
    for key, flag in WORKLOAD_FLAGS.items():
        words += [flag, str(workload[key])]
    return shlex.join([*words, "--repeats", str(repeats), "--output", output])


def _flag_value(value: Any) -> str:
    if value is None:
        return "inf"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def sweep_document(points: list[dict[str, Any]], grid: dict[str, list[Any]],
                   workload: dict[str, Any], command: str) -> dict[str, Any]:
    """The file: what was measured, on what, how to remake it, and every point (the
    machine and workload, the same for all, once at the top)."""
    machine = points[0]["machine"] if points else {}
    return {"kind": SWEEP_KIND, "version": SWEEP_VERSION,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": command, "grid": grid, "workload": workload, "machine": machine,
            "load_average": _load_average(),
            "block_size": tuning.BLOCK_SIZE, "ngram_tokens": tuning.NGRAM_TOKENS,
            "points": [{k: v for k, v in p.items() if k not in ("machine", "workload")}
                       for p in points]}


def _load_average() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages when the sweep ended: how busy
    it was (a quiet 2-core machine reads below 1)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _rate(text: str) -> float | None:
    """A request rate: requests per second, or "inf" (every request at once) as None."""
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number or inf; got {text!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError(f"a request rate must be > 0 (or inf); got {text}")
    return None if math.isinf(value) else value


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off; got {text!r}")
    return text == "on"


def cmd_bench_sweep(args: argparse.Namespace) -> int:
    from kvscope.config import EngineConfig
    from kvscope.model.loader import load_model

    if not 1 <= args.repeats <= 9:
        raise ValueError(f"--repeats must be from 1 to 9; got {args.repeats}")
    grid = {key: list(dict.fromkeys(getattr(args, key))) for key in SETTING_KEYS}
    workload = {key: getattr(args, key) for key in WORKLOAD_FLAGS}
    runs = grid_points(grid, workload)
    config = EngineConfig.from_kwargs(model=args.model, dtype=args.dtype)
    print(f"loading {args.model or 'the bundled model'} ({config.dtype}); "
          f"{len(runs)} points", file=sys.stderr, flush=True)
    loaded = load_model(config.model, config.dtype, False, config.load_quantization(),
                        config.quantized_activations)
    points = run_sweep(loaded, runs, args.repeats, progress=not args.quiet)
    command = command_line(grid, workload, args.model, args.dtype, args.repeats, args.output)
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sweep_document(points, grid, workload, command), indent=1) + "\n")
    print(f"saved {len(points)} points to {path}", file=sys.stderr)
    return 0 if all(p["metrics"]["failed"] == 0 for p in points) else 1


def add_sweep_parser(kinds: argparse._SubParsersAction) -> None:
    """`kvscope bench sweep ...` under `kvscope bench`."""
    sweep = kinds.add_parser("sweep", help="measure a grid of engine settings (the Tuning "
                             "Lab's recorded curve)", description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_argument("--model", default=None,
                       help="HF model directory or .gguf file (default: the bundled model)")
    sweep.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    grid = DEFAULT_GRID
    sweep.add_argument("--max-num-seqs", type=int, nargs="+", default=grid["max_num_seqs"])
    sweep.add_argument("--max-num-batched-tokens", type=int, nargs="+",
                       default=grid["max_num_batched_tokens"])
    sweep.add_argument("--num-blocks", type=int, nargs="+", default=grid["num_blocks"],
                       help=f"KV pool sizes, in blocks of {tuning.BLOCK_SIZE} tokens")
    sweep.add_argument("--prefix-caching", dest="enable_prefix_caching", type=_on_off,
                       nargs="+", default=grid["enable_prefix_caching"], metavar="on|off")
    sweep.add_argument("--speculative", nargs="+", choices=["off", "ngram"],
                       default=grid["speculative"],
                       help=f"ngram: prompt-lookup drafts of {tuning.NGRAM_TOKENS} tokens")
    sweep.add_argument("--request-rate", type=_rate, nargs="+", default=grid["request_rate"],
                       help="Poisson arrivals per second, or inf (all at once, the default)")
    defaults = TuningRun()
    sweep.add_argument("--num-requests", type=int, default=defaults.num_requests)
    sweep.add_argument("--input-len", type=int, default=defaults.input_len,
                       help="prompt tokens per request")
    sweep.add_argument("--output-len", type=int, default=defaults.output_len,
                       help="tokens generated per request (greedy, ignoring EOS)")
    sweep.add_argument("--shared-prefix-len", type=int, default=defaults.shared_prefix_len,
                       help="leading prompt tokens every request shares")
    sweep.add_argument("--seed", type=int, default=defaults.seed,
                       help="seeds the prompts and the arrivals")
    sweep.add_argument("--repeats", type=int, default=1,
                       help="measure each point this many times and keep the run of median "
                            "output throughput")
    sweep.add_argument("--output", default="tuning-sweep.json", metavar="PATH",
                       help="where to write the JSON")
    sweep.add_argument("--quiet", action="store_true", help="no per-point progress lines")
    sweep.set_defaults(func=cmd_bench_sweep)
