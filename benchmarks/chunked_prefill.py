"""Chunked prefill on the bundled model: the chunked-prefill lesson's workload (read from
its page, lessons/chunked-prefill.html) run through the lesson's own code path
(`kvscope.scope.lab.run_lab`) unchunked and at a few token budgets, side by side.

A few short requests decode from step 0; a long prompt arrives a few steps later. The
unchunked run has a budget of 1024 tokens (the lesson pool's whole capacity), so the
long prompt is prefilled in one step; each chunked run has a smaller budget, which the
decoding requests take first and the prompt fills. For each run the table gives the
longest gap between two tokens of the short requests (from the engine's token_emitted
times), the long prompt's prefill time (the measured times of the steps that carried
its chunks, the decode tokens riding in them included), the number of steps, and each
of the first two as a ratio to the unchunked run. Each time is the best of `--repeats`
runs (on a shared machine other work only ever adds time; every sample is kept in the
JSON, with the median), the configurations taking turns so that a noisy moment does not
fall on one of them only. Every run's greedy tokens are compared.

    .venv/bin/python benchmarks/chunked_prefill.py [--budgets 16,32,64,128] [--repeats 3]
        [--dtype float32] [--save benchmarks/results/chunked-prefill.json]
    .venv/bin/python benchmarks/chunked_prefill.py --quick   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from kvscope.model.loader import LoadedModel, load_model
from kvscope.scope.lab import LabRunRequest, run_lab
from kvscope.scope.lab_limits import LabBudget, LabLimits

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "kvscope" / "scope" / "static" / "lessons" / "chunked-prefill.html"
# the page's unchunked budget and pool (static/js/logic/chunked-prefill.js, runBody)
UNCHUNKED_BUDGET = 1024
POOL = {"block_size": 16, "num_blocks": 64}
# no time limit worth the name: the first engine of a process may build the C++ kernels,
# and a busy machine may stretch a run past the lesson's 30 s
PATIENT = LabLimits(timeout_s=900.0)


# -- the lesson's workload ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Workload:
    shorts: list[str]
    long: str
    budget: int  # the page's default chunked budget (its slider)
    max_tokens: int
    arrive_at: int


class _FormDefaults(HTMLParser):
    """The text of every <textarea> and the value of every <input>, by id."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "textarea":
            self._textarea = a.get("id")
            self.values[self._textarea or ""] = ""
        elif tag == "input" and a.get("id"):
            self.values[a["id"]] = a.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self.values[self._textarea] += data


def lesson_workload(page: Path = PAGE) -> Workload:
    """The workload the lesson page runs when nobody edits its form."""
    form = _FormDefaults()
    form.feed(page.read_text(encoding="utf-8"))
    v = form.values
    shorts = [line.strip() for line in v["short-prompts"].split("\n") if line.strip()]
    return Workload(shorts=shorts, long=" ".join(v["long-prompt"].split()),
                    budget=int(v["budget"]), max_tokens=int(v["max-tokens"]),
                    arrive_at=int(v["arrive-at"]))


def lab_request(w: Workload, budget: int) -> LabRunRequest:
    """One run of the lesson, as its page asks for it (runBody)."""
    return LabRunRequest(prompts=[*w.shorts, w.long],
                         arrive_at_step=[0] * len(w.shorts) + [w.arrive_at],
                         max_tokens=w.max_tokens, max_num_batched_tokens=budget,
                         max_num_seqs=8, enable_prefix_caching=False, **POOL)


# -- the figures of one run ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gap:
    ms: float
    request_id: str
    from_step: int
    to_step: int


@dataclass(slots=True)
class Figures:
    budget: int
    long_id: str
    prompt_tokens: int
    steps: list[dict[str, Any]] = field(default_factory=list)  # step, ms, tokens, chunk
    chunks: list[int] = field(default_factory=list)  # the long prompt's, in step order
    chunk_steps: list[int] = field(default_factory=list)
    prefill_ms: float = 0.0
    prefill_tokens: int = 0  # every request's prefill tokens
    total_ms: float = 0.0
    stall: Gap | None = None


def step_ms(e: dict[str, Any]) -> float:
    """A step's measured time, added in the page's order (the same float)."""
    return e["schedule_ms"] + e["forward_ms"] + e["sample_ms"] + e["update_ms"]


def longest_gap(events: list[dict[str, Any]], skip: str) -> Gap | None:
    """The longest time between two consecutive tokens of one request other than
    `skip` (the first of equals)."""
    last: dict[str, dict[str, Any]] = {}
    best: Gap | None = None
    for e in events:
        if e["kind"] != "token_emitted" or e["request_id"] == skip:
            continue
        before = last.get(e["request_id"])
        if before is not None:
            gap = (e["time"] - before["time"]) * 1000
            if best is None or gap > best.ms:
                best = Gap(gap, e["request_id"], before["step"], e["step"])
        last[e["request_id"]] = e
    return best


def figures(events: list[dict[str, Any]], long_id: str) -> Figures:
    started = next(e for e in events if e["kind"] == "engine_started")
    arrived = next(e for e in events
                   if e["kind"] == "request_arrived" and e["request_id"] == long_id)
    f = Figures(budget=started["max_num_batched_tokens"], long_id=long_id,
                prompt_tokens=len(arrived["prompt_token_ids"]))
    for e in events:
        if e["kind"] != "step_end":
            continue
        ms = step_ms(e)
        chunk = next((c["num_tokens"] for c in e["batch"]
                      if c["request_id"] == long_id and c["phase"] == "prefill"), 0)
        f.steps.append({"step": e["step"], "ms": ms, "tokens": e["num_tokens"], "chunk": chunk})
        f.total_ms += ms
        if chunk:
            f.prefill_ms += ms
            f.chunks.append(chunk)
            f.chunk_steps.append(e["step"])
        f.prefill_tokens += sum(c["num_tokens"] for c in e["batch"] if c["phase"] == "prefill")
    f.stall = longest_gap(events, long_id)
    return f


def run(loaded: LoadedModel, w: Workload, budget: int) -> tuple[dict[str, Any], Figures]:
    """One lesson run at `budget`: the lab's response and its figures."""
    req = lab_request(w, budget)
    result = run_lab(loaded, req, LabBudget(PATIENT))
    return result, figures(result["events"], str(len(req.prompts) - 1))


def warm_up(loaded: LoadedModel) -> None:
    """A tiny lab run, so that no measured run pays for building kernels or first calls."""
    run_lab(loaded, LabRunRequest(prompts=["Warm up the model"], max_tokens=4),
            LabBudget(PATIENT))


# -- the benchmark -------------------------------------------------------------------------------


def simd_flags() -> list[str]:
    """The CPU's vector-ISA flags (they decide the kernels and the dtype)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(ln for ln in f if ln.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return []
    return sorted(x for x in flags if x.startswith(("avx", "amx", "fma")) or "bf16" in x)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", default="16,32,64,128",
                   help="token budgets of the chunked runs, comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="runs of each configuration")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--quick", action="store_true", help="one repeat at the page's budget")
    p.add_argument("--save", type=Path, help="write every figure as JSON here")
    return p.parse_args(argv)


def measure(loaded: LoadedModel, w: Workload, budgets: list[int],
            repeats: int) -> dict[int, dict[str, Any]]:
    """Each budget `repeats` times, taking turns; the best and the median of each time."""
    samples: dict[int, list[Figures]] = {b: [] for b in budgets}
    tokens: dict[int, list[list[int]]] = {}
    for r in range(repeats):
        for b in budgets:
            result, f = run(loaded, w, b)
            samples[b].append(f)
            tokens.setdefault(b, [o["token_ids"] for o in result["outputs"]])
            print(f"repeat {r + 1}/{repeats}, budget {b}: stall {f.stall.ms:.1f} ms, "
                  f"prefill {f.prefill_ms:.1f} ms", file=sys.stderr)
    base = tokens[budgets[0]]
    return {b: {"budget": b, "chunks": fs[0].chunks, "steps": len(fs[0].steps),
                "prompt_tokens": fs[0].prompt_tokens, "prefill_tokens": fs[0].prefill_tokens,
                "stall_ms": min(f.stall.ms for f in fs),
                "prefill_ms": min(f.prefill_ms for f in fs),
                "total_ms": min(f.total_ms for f in fs),
                "stall_median_ms": statistics.median(f.stall.ms for f in fs),
                "prefill_median_ms": statistics.median(f.prefill_ms for f in fs),
                "stall_samples_ms": [f.stall.ms for f in fs],
                "prefill_samples_ms": [f.prefill_ms for f in fs],
                "same_tokens": tokens[b] == base}
            for b, fs in samples.items()}


def render(results: dict[str, Any]) -> str:
    rows = results["runs"]
    base = rows[0]
    w = results["workload"]
    lines = [f"chunked prefill: {len(w['shorts'])} short requests decoding, a "
             f"{base['prompt_tokens']}-token prompt arriving before step {w['arrive_at']}, "
             f"{w['max_tokens']} tokens each; {results['dtype']}; {results['machine']}; "
             f"best of {results['repeats']}",
             f"CPU flags: {' '.join(results['cpu_flags'])}", "",
             f"{'run':<22}{'chunks':>7}{'stall ms':>10}{'x unch.':>9}{'prefill ms':>12}"
             f"{'x unch.':>9}{'steps':>7}{'all steps ms':>14}{'prefill tok':>13}"]
    for r in rows:
        name = "unchunked (1024)" if r["budget"] == UNCHUNKED_BUDGET else f"budget {r['budget']}"
        lines.append(f"{name:<22}{len(r['chunks']):>7}{r['stall_ms']:>10.1f}"
                     f"{r['stall_ms'] / base['stall_ms']:>8.2f}x{r['prefill_ms']:>12.1f}"
                     f"{r['prefill_ms'] / base['prefill_ms']:>8.2f}x{r['steps']:>7}"
                     f"{r['total_ms']:>14.1f}{r['prefill_tokens']:>13}")
    same = all(r["same_tokens"] for r in rows)
    lines += ["", "stall: the longest gap between two tokens of a short request; prefill: the "
              "summed times of the steps that carried the long prompt's chunks",
              f"greedy tokens equal in every run: {'yes' if same else 'NO'}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, loaded: LoadedModel | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    w = lesson_workload()
    budgets = [w.budget] if args.quick else [int(b) for b in args.budgets.split(",")]
    repeats = 1 if args.quick else args.repeats
    dtype = torch.float32 if args.dtype == "float32" else torch.bfloat16
    loaded = loaded or load_model(None, dtype)
    warm_up(loaded)
    runs = measure(loaded, w, [UNCHUNKED_BUDGET, *budgets], repeats)
    results = {"workload": asdict(w), "dtype": args.dtype, "repeats": repeats,
               "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "cpu_flags": simd_flags(), "runs": list(runs.values())}
    print(render(results))
    if args.save:
        args.save.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
