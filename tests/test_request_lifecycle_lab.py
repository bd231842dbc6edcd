"""The request-lifecycle page's lab workload (logic/request-lifecycle.js lifecycleBody),
run through `run_lab` on the bundled model: the request it follows must meet every
stage the page names, checked here from the events alone (not through the page's JS)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from kvscope.scope.lab import LabRunRequest, run_lab

LOGIC = (Path(__file__).resolve().parent.parent / "kvscope" / "scope" / "static" / "js" / "logic"
         / "request-lifecycle.js")
FOLLOWED = "1"

pytestmark = pytest.mark.skipif(shutil.which("node") is None,
                                reason="node reads the page's workload from its logic module")


@pytest.fixture(scope="module")
def body() -> dict:
    """The request body the page sends, from the page's own module."""
    script = (f"import({json.dumps(LOGIC.as_uri())})"
              ".then((m) => console.log(JSON.stringify(m.lifecycleBody())))")
    out = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def events(loaded_fp32, body) -> list[dict]:
    return run_lab(loaded_fp32, LabRunRequest(**body))["events"]


def mine(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["kind"] == kind and e.get("request_id") == FOLLOWED]


def chunks(events: list[dict]) -> list[tuple[int, dict]]:
    return [(e["step"], c) for e in events if e["kind"] == "step_end"
            for c in e["batch"] if c["request_id"] == FOLLOWED]


def test_the_followed_request_meets_every_event_kind(events):
    kinds = {e["kind"] for e in events if e.get("request_id") == FOLLOWED}
    assert kinds >= {"request_arrived", "prefix_cache_lookup", "blocks_shared", "blocks_allocated",
                     "request_scheduled", "blocks_cached", "drafts_verified", "token_emitted",
                     "preempted", "blocks_freed", "request_finished"}
    order = [e["kind"] for e in events if e.get("request_id") == FOLLOWED]
    told = ("request_arrived", "prefix_cache_lookup", "drafts_verified", "preempted",
            "request_finished")
    first = {k: order.index(k) for k in told}
    assert list(first.values()) == sorted(first.values())  # in the order the page tells them


def test_its_first_lookup_hits_the_earlier_requests_blocks(events, body):
    lookup = mine(events, "prefix_cache_lookup")[0]
    bs = body["block_size"]
    assert lookup["hit_tokens"] == 20
    assert len(lookup["block_ids"]) == 5 == lookup["hit_tokens"] // bs
    cached_by_first = {b for e in events if e["kind"] == "blocks_cached" and e["request_id"] == "0"
                       for b in e["block_ids"]}
    assert set(lookup["block_ids"]) <= cached_by_first
    assert mine(events, "blocks_shared")[0]["block_ids"] == lookup["block_ids"]


def test_its_prompt_is_prefilled_in_chunks_within_the_budget(events, body):
    first_preemption = mine(events, "preempted")[0]["step"]
    before = [c for step, c in chunks(events)
              if step < first_preemption and c["phase"] == "prefill"]
    assert len(before) >= 2
    assert all(c["num_tokens"] <= body["max_num_batched_tokens"] for _, c in chunks(events))
    prompt = len(mine(events, "request_arrived")[0]["prompt_token_ids"])
    assert sum(c["num_tokens"] for c in before) == prompt - 20  # all but the prefix hit


def test_drafts_are_proposed_and_accepted(events):
    verified = mine(events, "drafts_verified")
    assert sum(e["num_accepted"] for e in verified) >= 1
    assert all(e["method"] == "ngram" for e in verified)


def test_it_is_preempted_once_and_comes_back(events):
    (preempted,) = mine(events, "preempted")
    assert preempted["mode"] == "recompute"
    resumed = [e for e in mine(events, "request_scheduled") if e["resumed"]]
    assert len(resumed) == 1 and resumed[0]["step"] > preempted["step"]
    # coming back it finds its own earlier blocks (and the shared opening) in the cache
    assert mine(events, "prefix_cache_lookup")[1]["hit_tokens"] > 20


def test_it_finishes_and_every_block_returns_to_the_pool(events, body):
    (done,) = mine(events, "request_finished")
    assert done["num_output_tokens"] == body["max_tokens_each"][1]
    last_free = mine(events, "blocks_freed")[-1]
    assert events.index(last_free) < events.index(done)
    final = [e for e in events if e["kind"] == "step_end"][-1]
    assert final["step"] == done["step"]  # it is the last request to finish
    assert final["num_free_blocks"] == body["num_blocks"] == events[0]["num_blocks"]
