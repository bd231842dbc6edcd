"""Just enough of the engine's bookkeeping, rebuilt in Python from a run's events, to
say what a scope page must print at a given position: block tables, refcounts, cached
blocks, statuses, computed tokens and counters, forked sequences, copies on write,
beam-search steps and verified drafts. Independent of the page's own JavaScript
reducer, so a wrong page fails the browser tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any


@dataclass
class Req:
    status: str = "waiting"
    prompt_len: int = 0
    max_tokens: int | None = None
    outputs: int = 0
    computed: int = 0
    finish_reason: str | None = None
    finished_step: int | None = None
    token_ids: list[int] = field(default_factory=list)
    parent: str | None = None  # the sequence it was forked from
    verifications: list[dict[str, Any]] = field(default_factory=list)  # drafts_verified events


@dataclass
class Folded:
    refs: list[int] = field(default_factory=list)
    hashes: list[str | None] = field(default_factory=list)
    tables: dict[str, list[int]] = field(default_factory=dict)
    swapped: dict[str, list[int]] = field(default_factory=dict)
    reqs: dict[str, Req] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    preemptions: int = 0
    swap_outs: int = 0
    swap_ins: int = 0
    copies: int = 0  # copy_on_write events
    beam_steps: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # group → records
    step: int = 0
    engine: dict[str, Any] | None = None

    @property
    def free(self) -> int:
        """Blocks nobody holds (free or cached-evictable)."""
        return sum(r == 0 for r in self.refs)

    def req(self, rid: str) -> Req:
        if rid not in self.reqs:
            self.reqs[rid] = Req()
            self.order.append(rid)
        return self.reqs[rid]


def fold(events: list[dict[str, Any]], upto: int) -> Folded:
    f = Folded()
    for e in events[:upto]:
        apply(f, e)
    return f


def folds(events: list[dict[str, Any]]) -> Iterator[Folded]:
    """The state after each event in turn (one object, updated in place)."""
    f = Folded()
    for e in events:
        apply(f, e)
        yield f


def apply(f: Folded, e: dict[str, Any]) -> None:
    kind = e["kind"]
    f.step = e["step"]
    rid = e.get("request_id")
    if kind == "engine_started":
        f.engine = e
        f.refs = [0] * e["num_blocks"]
        f.hashes = [None] * e["num_blocks"]
    elif kind == "request_arrived":
        r = f.req(rid)
        r.status, r.prompt_len = "waiting", len(e["prompt_token_ids"])
        r.max_tokens = e["max_tokens"]
    elif kind == "request_scheduled":
        r = f.req(rid)
        r.status, r.computed = "running", e["num_computed_tokens"]
    elif kind == "request_finished":
        r = f.req(rid)
        r.status, r.finish_reason, r.finished_step = "finished", e["reason"], e["step"]
        f.swapped.pop(rid, None)
    elif kind == "step_end":
        f.steps.append(e)
        for chunk in e["batch"]:
            if chunk["request_id"] in f.reqs:
                r = f.reqs[chunk["request_id"]]
                r.computed = chunk["start"] + chunk["num_tokens"]
                drafts = chunk.get("num_draft_tokens", 0)
                if drafts:  # of the drafts, only the accepted ones count as computed
                    last = r.verifications[-1]
                    assert last["step"] == e["step"]
                    r.computed -= drafts - last["num_accepted"]
    elif kind == "blocks_allocated":
        for b in e["evicted"]:
            f.hashes[b] = None
        for b in e["block_ids"]:
            f.refs[b] = 1
            f.tables.setdefault(rid, []).append(b)
    elif kind == "blocks_shared":
        for b in e["block_ids"]:
            f.refs[b] += 1
            f.tables.setdefault(rid, []).append(b)
    elif kind == "blocks_trimmed":
        for b in e["block_ids"]:
            f.refs[b] -= 1
        del f.tables[rid][-len(e["block_ids"]):]
    elif kind == "drafts_verified":
        f.req(rid).verifications.append(e)
    elif kind == "blocks_freed":
        for b in e["block_ids"]:
            f.refs[b] -= 1
        f.tables.pop(rid, None)
    elif kind == "blocks_cached":
        for b, h in zip(e["block_ids"], e["hashes"], strict=True):
            f.hashes[b] = h
    elif kind == "preempted":
        r = f.req(rid)
        f.preemptions += 1
        r.status = "swapped" if e["mode"] == "swap" else "preempted"
        if e["mode"] != "swap":
            r.computed = 0
    elif kind == "swapped_out":
        f.swapped[rid] = [slot for _, slot in e["copies"]]
        f.swap_outs += 1
    elif kind == "swapped_in":
        f.swapped.pop(rid, None)
        f.swap_ins += 1
    elif kind == "token_emitted":
        r = f.req(rid)
        r.outputs += 1
        r.token_ids.append(e["token_id"])
    elif kind == "sequence_forked":
        parent = f.req(e["parent_id"])
        r = f.req(rid)
        r.status, r.parent, r.computed = "running", e["parent_id"], e["num_computed_tokens"]
        r.prompt_len, r.max_tokens = parent.prompt_len, parent.max_tokens
        r.outputs, r.token_ids = parent.outputs, list(parent.token_ids)
        f.tables[rid] = list(e["block_ids"])
        for b in e["block_ids"]:
            f.refs[b] += 1
    elif kind == "copy_on_write":
        for b in e["evicted"]:
            f.hashes[b] = None
        table = f.tables[rid]
        table[table.index(e["src_block_id"])] = e["dst_block_id"]
        f.refs[e["src_block_id"]] -= 1
        f.refs[e["dst_block_id"]] = 1
        f.copies += 1
    elif kind == "beam_step":
        for beam in e["beams"]:
            r = f.req(beam["request_id"])
            r.outputs += 1
            r.token_ids.append(beam["token_id"])
        f.beam_steps.setdefault(rid, []).append(e)


def stops(events: list[dict[str, Any]]) -> list[int]:
    """Positions right after each step_end (what "next step" moves between)."""
    return [i + 1 for i, e in enumerate(events) if e["kind"] == "step_end"]


def step_at(events: list[dict[str, Any]], pos: int) -> int:
    return events[pos - 1]["step"] if pos else 0


def js_fixed(x: float, digits: int) -> str:
    """Number.prototype.toFixed: the exact binary value rounded half away from zero."""
    text = str(Decimal(x).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))
    return text[1:] if text.startswith("-") and float(text) == 0 and x == 0 else text


def js_number(x: Any) -> str:
    """A JSON number as JavaScript's String(x) writes it (1.0 -> "1", 1e-05 ->
    "0.00001", 1e21 -> "1e+21")."""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if x == 0:
        return "0"
    sign, digits, exp = Decimal(repr(x)).normalize().as_tuple()
    s = "".join(map(str, digits))
    k, n = len(s), exp + len(s)  # the value is 0.s × 10^n
    if k <= n <= 21:
        out = s + "0" * (n - k)
    elif 0 < n <= 21:
        out = f"{s[:n]}.{s[n:]}"
    elif -6 < n <= 0:
        out = "0." + "0" * -n + s
    else:
        e = n - 1
        out = s[0] + (f".{s[1:]}" if k > 1 else "") + f"e{'+' if e > 0 else '-'}{abs(e)}"
    return ("-" if sign else "") + out


def js_pct(x: float) -> str:
    return f"{js_fixed(100 * x, 1)}%"


def ids(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


# -- page helpers ------------------------------------------------------------------------

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def is_lab_run(response: Any) -> bool:
    return response.url.endswith("/scope/api/lab/run") and response.request.method == "POST"
