"""The tour and the request lifecycle in a real browser against a real server: each
page's readout must say what the run it fetched says, computed here in Python from that
run's events (captured from the page's own request), not through the page's JS."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.browser.scope_fold import fold, is_lab_run, screenshot, stops

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

FOLLOWED = "1"


def mine(events, kind):
    return [e for e in events if e["kind"] == kind and e.get("request_id") == FOLLOWED]


# -- the request lifecycle ------------------------------------------------------------------------


def test_lifecycle_run_lists_every_stage_with_the_values_of_its_events(open_page):
    page = open_page(width=375)
    page.emulate_media(reduced_motion="reduce")
    page.goto("/lessons/request-lifecycle.html")
    readout = page.locator("#readout")
    expect(readout).to_have_text("No run yet.")
    with page.expect_response(is_lab_run) as info:
        page.get_by_role("button", name="Run the engine").click()
    assert info.value.ok, info.value.text()
    events = info.value.json()["events"]
    expect(readout).to_contain_text("stages met:")
    text = readout.inner_text()

    started = events[0]
    steps = [e for e in events if e["kind"] == "step_end"]
    arrival = mine(events, "request_arrived")[0]
    first, again = mine(events, "prefix_cache_lookup")
    chunks = [(e["step"], c) for e in steps for c in e["batch"] if c["request_id"] == FOLLOWED]
    prefill = [c["num_tokens"] for _, c in chunks if c["phase"] == "prefill"]
    verified = mine(events, "drafts_verified")
    (preempted,) = mine(events, "preempted")
    (done,) = mine(events, "request_finished")
    last_freed = mine(events, "blocks_freed")[-1]
    pool = started["num_blocks"]

    assert text.splitlines()[0] == (f"request 1 (lab run, {len(steps)} engine steps, pool of "
                                    f"{pool} blocks of {started['block_size']} tokens)")
    t = r"t = \d+\.\d{3} s"
    hit_ids = ", ".join(map(str, first["block_ids"]))
    prompt_len = len(arrival["prompt_token_ids"])
    expected = [
        rf"arrival, step {arrival['step']}, {t}: arrived with {prompt_len} prompt tokens",
        rf"prefix-cache lookup, step {first['step']}, {t}: {first['hit_tokens']} of "
        rf"{first['queried_tokens']} tokens found in the prefix cache, shared blocks {hit_ids}",
        rf"block allocation, step {first['step']}, {t}: joined the running batch with "
        rf"{first['hit_tokens']} tokens",
        rf"preemption, step {preempted['step']}, {t}: preempted \(recompute\)",
        rf"prefix-cache lookup, step {again['step']}, {t}: back from preemption, looked up again: "
        rf"{again['hit_tokens']} of {again['queried_tokens']} tokens",
        rf"finish, step {done['step']}, {t}: finished \(length\) after "
        rf"{done['num_output_tokens']} output tokens",
        rf"blocks returned, step {done['step']}, {t}: gave back "
        rf"{len(last_freed['block_ids'])} blocks .*"
        rf"the pool then had {steps[-1]['num_free_blocks']} of {pool} blocks free",
    ]
    for line in expected:
        assert re.search(line, text), f"{line!r} not in the readout:\n{text}"
    assert steps[-1]["num_free_blocks"] == pool  # every block is back
    drafts = sum(len(e["draft_token_ids"]) for e in verified)
    accepted = sum(e["num_accepted"] for e in verified)
    assert accepted >= 1 and len(prefill) >= 2
    plain = sum(c["phase"] == "decode" for _, c in chunks)
    assert (f"prefill chunks: {len(prefill)} ({' + '.join(map(str, prefill))} tokens); "
            f"decode steps: {plain} plain, {len(verified)} with drafts; "
            f"drafts: {drafts} proposed, {accepted} accepted; preemptions: 1") in text
    assert "not met" not in text
    # one table row per step it ran in, and one per verifying pass
    expect(page.locator("#rows tr[data-stage=prefill]")).to_have_count(len(prefill))
    expect(page.locator("#rows tr[data-stage=verify]")).to_have_count(len(verified))
    expect(page.locator("#strip svg rect")).to_have_count(len(steps))
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "request-lifecycle-375px")


# -- the tour --------------------------------------------------------------------------------------


def paged_first_line(events):
    """The step after which the pool held the most blocks (the first such), as the tour says it."""
    best, most = None, -1
    for stop in stops(events):
        f = fold(events, stop)
        held = sum(len(t) for t in f.tables.values())
        if held > most:
            best, most = (stop, f), held
    stop, f = best
    return (f"after step {events[stop - 1]['step']}: {len(f.tables)} requests hold {most} "
            f"blocks of one pool of {events[0]['num_blocks']}, each through its own block table")


def test_tour_walks_seven_stops_by_keyboard_with_readouts_from_their_runs(page, scope_server):
    readout = page.locator("#readout")
    with page.expect_response(is_lab_run) as info:
        page.goto("/lessons/tour.html")
    paged = info.value.json()["events"]
    expect(readout).to_contain_text("stop 1 of 7: Paged attention")
    expect(readout).to_contain_text(paged_first_line(paged))
    expect(page.locator("#picture .pool .cell")).to_have_count(paged[0]["num_blocks"])
    expect(page.locator("#stop-link")).to_have_attribute("href", "paged-attention.html")
    one = readout.inner_text()

    next_button = page.locator("#stop-next")
    next_button.focus()
    page.keyboard.press("Enter")  # stop 2: two runs, static and continuous
    expect(readout).to_contain_text("stop 2 of 7: Continuous batching")
    expect(readout).to_contain_text("continuous batching took", timeout=60_000)

    with page.expect_response(is_lab_run) as info:
        page.keyboard.press("ArrowRight")  # stop 3
    events = info.value.json()["events"]
    (lookup,) = [e for e in events if e["kind"] == "prefix_cache_lookup" and e["request_id"] == "1"]
    prompt = next(e for e in events if e["kind"] == "request_arrived" and e["request_id"] == "1")
    n = len(prompt["prompt_token_ids"])
    ids = ", ".join(map(str, lookup["block_ids"]))
    expect(readout).to_contain_text(
        f"request 1: {lookup['hit_tokens']} of {n} prompt tokens found in the prefix cache "
        f"({len(lookup['block_ids'])} blocks: {ids})")
    expect(readout).to_contain_text(f"computed: {n - lookup['hit_tokens']} tokens")
    assert lookup["hit_tokens"] > 0

    with page.expect_response(is_lab_run) as info:
        page.keyboard.press("ArrowRight")  # stop 4
    events = info.value.json()["events"]
    verified = [e for e in events if e["kind"] == "drafts_verified"]
    expect(readout).to_contain_text(
        f"{len(verified)} verifying passes: {sum(len(e['draft_token_ids']) for e in verified)} "
        f"drafts proposed, {sum(e['num_accepted'] for e in verified)} accepted")

    page.keyboard.press("Space")  # the Next button still has the focus: stop 5
    expect(readout).to_contain_text("stop 5 of 7: Chunked prefill")
    expect(readout).to_contain_text("long prompt:")

    engine = httpx.get(scope_server.url + "/scope/api/info").json()["engine"]
    page.keyboard.press("ArrowRight")  # stop 6 waits for its button
    expect(readout).to_contain_text("stop 6 of 7: Tensor parallelism")
    expect(readout).to_contain_text(
        f"computed from the engine's description, not run: each of its {engine['num_layers']} "
        f"layers has {engine['num_heads']} query heads and {engine['num_kv_heads']} KV heads "
        "to split over 2 ranks")
    expect(page.locator("#stop-run")).to_be_visible()

    page.keyboard.press("ArrowRight")  # stop 7: run its two engines with the button
    expect(readout).to_contain_text("stop 7 of 7: Disaggregated prefill/decode")
    expect(readout).to_contain_text(f"{engine['kv_bytes_per_token']:,} bytes")
    expect(next_button).to_be_disabled()
    with page.expect_response(lambda r: r.url.endswith("/scope/api/lab/disaggregation")) as info:
        page.locator("#stop-run").focus()
        page.keyboard.press("Enter")
    data = info.value.json()
    (load,) = [e for e in data["decode"]["events"]
               if e["kind"] == "kv_transferred" and e["direction"] == "load"]
    expect(readout).to_contain_text(
        f"K/V of {load['num_tokens']} prompt tokens moved: {load['num_bytes']:,} bytes",
        timeout=60_000)
    assert load["num_bytes"] == load["num_tokens"] * engine["kv_bytes_per_token"]

    # back to the start by the slider's Home key: stop 1 is drawn again from its run, not rerun
    page.locator("#stop").focus()
    page.keyboard.press("Home")
    expect(readout).to_have_text(one)
    screenshot(page, "tour")
