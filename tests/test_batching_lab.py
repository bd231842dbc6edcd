"""The Batching Lab's runs: every preset of the page (read from its logic module by
node) through the scope's lab run, once with batching="static" and once with
continuous batching, on the bundled model (fp32). Asserted from the events: the static
batcher never admits a request while a request of another batch is unfinished, its
seat counters match the steps it ran, both modes give every request the same greedy
tokens, and continuous batching takes fewer steps on every preset."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
from pydantic import ValidationError

from kvscope.bench.batching import MODES, figures, page_workloads, read_run, static_batches
from kvscope.scope.lab import LabRunRequest, run_lab
from kvscope.scope.lab_limits import LabBudget, LabLimits

pytestmark = pytest.mark.skipif(shutil.which("node") is None,
                                reason="node reads the presets from the page's logic")

LIMITS = LabLimits(timeout_s=300, yield_to_serving=False)


@pytest.fixture(scope="module")
def runs(loaded_fp32) -> dict[str, dict[str, Any]]:
    """Each preset's body and lab response, per mode (one run each, shared by every test)."""
    out: dict[str, dict[str, Any]] = {}
    for name, workload in page_workloads().items():
        out[name] = {}
        for mode in MODES:
            body = workload["bodies"][mode]
            out[name][mode] = {"body": body, "data": run_lab(loaded_fp32, LabRunRequest(**body),
                                                             LabBudget(LIMITS))}
    return out


def test_the_page_has_the_four_presets_and_both_runs_share_the_workload(runs):
    assert set(runs) == {"balanced", "prompt-heavy", "long-tail", "bursty"}
    for preset in runs.values():
        static, continuous = preset["static"]["body"], preset["continuous"]["body"]
        assert (static["batching"], continuous["batching"]) == MODES
        assert {**static, "batching": None} == {**continuous, "batching": None}
        assert static["max_num_seqs"] < len(static["prompts"])  # more requests than seats
    assert any(a > 0 for a in runs["bursty"]["static"]["body"]["arrive_at_step"])
    tail = runs["long-tail"]["static"]["body"]["max_tokens_each"]
    assert max(tail) >= 4 * sorted(tail)[len(tail) // 2]  # a few answers much longer


def first_schedulings(events: list[dict[str, Any]]) -> list[tuple[int, str]]:
    seen: set[str] = set()
    out = []
    for i, e in enumerate(events):
        if e["kind"] == "request_scheduled" and e["request_id"] not in seen:
            seen.add(e["request_id"])
            out.append((i, e["request_id"]))
    return out


@pytest.mark.parametrize("preset", ["balanced", "prompt-heavy", "long-tail", "bursty"])
def test_static_admits_nobody_while_another_batch_is_unfinished(runs, preset):
    events = runs[preset]["static"]["data"]["events"]
    seats = events[0]["max_num_seqs"]
    batches = static_batches(events, seats)
    batch_of = {rid: n for n, members in enumerate(batches) for rid in members}
    arrived = [e["request_id"] for e in events if e["kind"] == "request_arrived"]
    assert [rid for members in batches for rid in members] == arrived  # in arrival order
    assert all(1 <= len(b) <= seats for b in batches) and len(batches) >= 2
    finished_at = {e["request_id"]: i for i, e in enumerate(events)
                   if e["kind"] == "request_finished"}
    for at, rid in first_schedulings(events):
        running = [q for i, q in first_schedulings(events) if i < at and finished_at[q] > at]
        assert all(batch_of[q] == batch_of[rid] for q in running), (rid, running)
        # and every earlier batch has finished entirely
        earlier = [q for q, n in batch_of.items() if n < batch_of[rid]]
        assert all(finished_at[q] < at for q in earlier), (rid, earlier)
    # continuous batching does admit a request while others run (the contrast)
    events = runs[preset]["continuous"]["data"]["events"]
    finished_at = {e["request_id"]: i for i, e in enumerate(events)
                   if e["kind"] == "request_finished"}
    firsts = first_schedulings(events)
    overlapping = [rid for at, rid in firsts
                   if any(i < at < finished_at[q] for i, q in firsts if q != rid)]
    assert overlapping


@pytest.mark.parametrize("preset", ["balanced", "prompt-heavy", "long-tail", "bursty"])
def test_the_static_seat_counters_are_the_steps_its_batches_ran(runs, preset):
    data = runs[preset]["static"]["data"]
    events = data["events"]
    run = read_run(events)
    batches = static_batches(events, run.seats)
    seats = 0
    for s in run.steps:  # the batch of a step: the one whose members ran in it
        members = next(b for b in batches if any(
            run.reqs[rid].first_scheduled_step is not None
            and run.reqs[rid].first_scheduled_step <= s["step"] <= run.reqs[rid].finished_step
            for rid in b))
        seats += len(members)
    busy = sum(s["busy"] for s in run.steps)
    assert data["num_slot_steps"] == seats
    assert data["num_idle_slot_steps"] == seats - busy > 0
    f = figures(data, "static")
    assert f["padding"]["decode"] <= data["num_idle_slot_steps"]
    assert runs[preset]["continuous"]["data"]["num_slot_steps"] == 0


@pytest.mark.parametrize("preset", ["balanced", "prompt-heavy", "long-tail", "bursty"])
def test_both_modes_give_the_same_greedy_tokens_and_continuous_needs_fewer_steps(runs, preset):
    static, continuous = runs[preset]["static"], runs[preset]["continuous"]
    lengths = static["body"]["max_tokens_each"]
    for a, b, n in zip(static["data"]["outputs"], continuous["data"]["outputs"], lengths,
                       strict=True):
        assert a["request_id"] == b["request_id"]
        assert a["token_ids"] == b["token_ids"]
        assert len(a["token_ids"]) == n  # each request got its own output length
    s, c = figures(static["data"], "static"), figures(continuous["data"], "continuous")
    assert c["steps"] < s["steps"]
    assert c["steps"] == continuous["data"]["num_steps"]
    assert c["utilisation"] > s["utilisation"]
    assert s["output_tokens"] == c["output_tokens"] == sum(lengths)


def test_max_tokens_each_and_batching_are_checked():
    base: dict[str, Any] = {"prompts": ["a", "b"]}
    assert LabRunRequest(**base, max_tokens_each=[1, 64], batching="static").batching == "static"
    for bad, match in [({"max_tokens_each": [3]}, "one value per prompt"),
                       ({"max_tokens_each": [3, 65]}, "between 1 and 64"),
                       ({"max_tokens_each": [0, 3]}, "between 1 and 64"),
                       ({"batching": "dynamic"}, "batching")]:
        with pytest.raises(ValidationError, match=match):
            LabRunRequest(**base, **bad)
