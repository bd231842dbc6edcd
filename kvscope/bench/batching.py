"""Static against continuous batching, measured from the events of lab runs: the
figures the Batching Lab lesson shows (lessons/batching-lab.html), computed here in
Python on their own so that benchmarks/batching_lab.py can print them and the browser
test can check the page's readout against them.

The workloads are the page's own presets, read from its logic module by node
(`page_workloads`), so a benchmark run measures exactly what the page runs.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOGIC_JS = (Path(__file__).resolve().parent.parent / "scope" / "static" / "js" / "logic"
            / "batching-lab.js")
MODES = ("static", "continuous")

_DUMP = """
import {PRESETS, DEFAULT_SEATS, labBody} from %s;
const out = {};
for (const [name, p] of Object.entries(PRESETS)) {
  out[name] = {label: p.label, bodies: {}};
  for (const mode of ['static', 'continuous']) {
    out[name].bodies[mode] = labBody(p.rows, DEFAULT_SEATS, mode);
  }
}
process.stdout.write(JSON.stringify(out));
"""


def page_workloads() -> dict[str, dict[str, Any]]:
    """Each preset of the page: its label and the lab run body of each mode. Needs node."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is needed to read the Batching Lab's presets from its page logic")
    script = _DUMP % json.dumps(LOGIC_JS.as_uri())
    proc = subprocess.run([node, "--input-type=module", "-e", script], capture_output=True,
                          text=True, check=True, timeout=60)
    return json.loads(proc.stdout)


@dataclass(slots=True)
class Req:
    arrived_step: int
    arrived_at: float
    prompt_len: int
    first_token_at: float | None = None
    finished_at: float | None = None
    finished_step: int | None = None
    outputs: int = 0
    first_scheduled_step: int | None = None


@dataclass(slots=True)
class Run:
    """One run's requests and steps, read from its events."""

    seats: int
    reqs: dict[str, Req] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)  # step, begin, end, busy

    @property
    def order(self) -> list[str]:
        return sorted(self.reqs, key=int)


def read_run(events: list[dict[str, Any]]) -> Run:
    run = Run(seats=events[0]["max_num_seqs"])
    begin = 0.0
    for e in events:
        kind = e["kind"]
        r = run.reqs.get(e.get("request_id", ""))
        if kind == "request_arrived":
            run.reqs[e["request_id"]] = Req(e["step"], e["time"], len(e["prompt_token_ids"]))
        elif kind == "request_scheduled" and r.first_scheduled_step is None:
            r.first_scheduled_step = e["step"]
        elif kind == "step_begin":
            begin = e["time"]
        elif kind == "token_emitted":
            r.first_token_at = e["time"] if r.first_token_at is None else r.first_token_at
            r.outputs += 1
        elif kind == "request_finished":
            r.finished_at, r.finished_step = e["time"], e["step"]
        elif kind == "step_end":
            run.steps.append({"step": e["step"], "begin": begin, "end": e["time"],
                              "busy": len(e["batch"])})
    return run


def static_batches(events: list[dict[str, Any]], seats: int) -> list[list[str]]:
    """The batches of batching="static": whenever no batch is unfinished as a step
    begins, the first `seats` arrived requests that are in no batch yet."""
    queue: list[str] = []
    batches: list[list[str]] = []
    unfinished: set[str] = set()
    for e in events:
        if e["kind"] == "request_arrived":
            queue.append(e["request_id"])
        elif e["kind"] == "request_finished":
            unfinished.discard(e["request_id"])
        elif e["kind"] == "step_begin" and not unfinished and queue:
            batches.append(queue[:seats])
            unfinished = set(queue[:seats])
            del queue[:seats]
    return batches


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the sorted values (numpy's default)."""
    ordered = sorted(values)
    at = (len(ordered) - 1) * q
    lo = math.floor(at)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (at - lo)


def padding(batches: list[list[str]], run: Run) -> dict[str, int]:
    """What padded static batches would compute for nothing: each prompt padded to the
    longest of its batch, each early finisher's decode slots until the batch's longest
    answer is done; and all that such batches would compute."""
    prompt = decode = computed = 0
    for members in batches:
        rs = [run.reqs[rid] for rid in members]
        longest = max(r.prompt_len for r in rs)
        most = max(r.outputs for r in rs)
        prompt += sum(longest - r.prompt_len for r in rs)
        decode += sum(most - r.outputs for r in rs)
        computed += len(rs) * (longest + most - 1)  # the first output token is the prefill's
    return {"prompt": prompt, "decode": decode, "total": prompt + decode, "computed": computed}


def figures(data: dict[str, Any], batching: str) -> dict[str, Any]:
    """The measured figures of one lab run (times in seconds)."""
    events = data["events"]
    run = read_run(events)
    rs = [run.reqs[rid] for rid in run.order]
    wall = run.steps[-1]["end"] - run.steps[0]["begin"]
    outputs = sum(r.outputs for r in rs)
    ttft = [r.first_token_at - r.arrived_at for r in rs]
    e2e = [r.finished_at - r.arrived_at for r in rs]
    busy = sum(s["busy"] for s in run.steps)
    slot_steps = run.seats * len(run.steps)
    batches = static_batches(events, run.seats) if batching == "static" else None
    return {
        "batching": batching, "run": run, "batches": batches, "seats": run.seats,
        "steps": len(run.steps), "wall": wall, "output_tokens": outputs,
        "tok_per_s": outputs / wall,
        "ttft_mean": sum(ttft) / len(ttft), "ttft_p99": percentile(ttft, 0.99),
        "e2e_mean": sum(e2e) / len(e2e), "e2e_p99": percentile(e2e, 0.99),
        "busy": busy, "slot_steps": slot_steps, "utilisation": busy / slot_steps,
        "engine_slot_steps": data.get("num_slot_steps", 0),
        "engine_idle_slot_steps": data.get("num_idle_slot_steps", 0),
        "padding": padding(batches, run) if batches is not None else None,
    }
