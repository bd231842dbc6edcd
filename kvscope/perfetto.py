"""Export a recorded run as a Chrome trace (JSON), which Perfetto and chrome://tracing
open: engine steps as slices on one track (with their schedule / forward / sample /
update parts nested inside), each request as its own track with a slice per step it
took part in, preemptions and finishes as instants, and the free KV blocks as a
counter."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ENGINE_PID, REQUESTS_PID = 1, 2
STEP_PARTS = ("schedule_ms", "forward_ms", "sample_ms", "update_ms")


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)


def to_chrome_trace(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    out: list[dict[str, Any]] = [
        _meta("process_name", ENGINE_PID, 0, "kvscope engine"),
        _meta("thread_name", ENGINE_PID, 0, "steps"),
        _meta("process_name", REQUESTS_PID, 0, "requests"),
    ]
    tracks: dict[str, int] = {}
    step_start: dict[int, float] = {}
    for e in events:
        kind = e["kind"]
        if kind == "step_begin":
            step_start[e["step"]] = e["time"]
        elif kind == "step_end":
            out.extend(_step_slices(e, step_start.get(e["step"], e["time"]), tracks))
            out.append({"ph": "C", "name": "free KV blocks", "pid": ENGINE_PID, "tid": 0,
                        "ts": _us(e["time"]), "args": {"free": e["num_free_blocks"]}})
        elif kind == "request_arrived":
            tid = tracks.setdefault(e["request_id"], len(tracks) + 1)
            out.append(_meta("thread_name", REQUESTS_PID, tid, f"request {e['request_id']}"))
            out.append(_instant("arrived", REQUESTS_PID, tid, e["time"],
                                {"prompt_tokens": len(e["prompt_token_ids"])}))
        elif kind in ("preempted", "request_finished", "request_aborted", "swapped_in"):
            tid = tracks.setdefault(e["request_id"], len(tracks) + 1)
            args = {k: v for k, v in e.items() if k in ("mode", "reason")}
            out.append(_instant(kind.removeprefix("request_"), REQUESTS_PID, tid, e["time"], args))
    return {"traceEvents": out, "displayTimeUnit": "ms"}


def _step_slices(e: dict[str, Any], begin: float,
                 tracks: dict[str, int]) -> list[dict[str, Any]]:
    ts = _us(begin)
    total_ms = sum(e[part] for part in STEP_PARTS)
    slices = [{"ph": "X", "name": f"step {e['step']}", "cat": "step", "pid": ENGINE_PID,
               "tid": 0, "ts": ts, "dur": round(total_ms * 1e3, 3),
               "args": {"num_tokens": e["num_tokens"], "num_requests": len(e["batch"]),
                        "num_free_blocks": e["num_free_blocks"],
                        "batch": e["batch"]}}]
    at = ts
    for part in STEP_PARTS:  # the parts ran one after another, in this order
        dur = round(e[part] * 1e3, 3)
        slices.append({"ph": "X", "name": part.removesuffix("_ms"), "cat": "step_part",
                       "pid": ENGINE_PID, "tid": 0, "ts": at, "dur": dur})
        at += dur
    for chunk in e["batch"]:  # each request's share, on its own track
        tid = tracks.setdefault(chunk["request_id"], len(tracks) + 1)
        slices.append({"ph": "X", "name": chunk["phase"], "cat": "request_chunk",
                       "pid": REQUESTS_PID, "tid": tid, "ts": ts,
                       "dur": round(total_ms * 1e3, 3),
                       "args": {"start": chunk["start"], "num_tokens": chunk["num_tokens"],
                                "step": e["step"]}})
    return slices


def _meta(name: str, pid: int, tid: int, value: str) -> dict[str, Any]:
    return {"ph": "M", "name": name, "pid": pid, "tid": tid, "args": {"name": value}}


def _instant(name: str, pid: int, tid: int, time_s: float,
             args: dict[str, Any]) -> dict[str, Any]:
    return {"ph": "i", "s": "t", "name": name, "pid": pid, "tid": tid, "ts": _us(time_s),
            "args": args}


def export_chrome_trace(events_path: str | Path, trace_path: str | Path) -> int:
    """Convert a JSONL recording into a trace file; returns the number of steps."""
    from kvscope.events import read_jsonl

    events = read_jsonl(events_path)
    trace = to_chrome_trace(events)
    Path(trace_path).write_text(json.dumps(trace))
    return sum(1 for e in events if e["kind"] == "step_end")
