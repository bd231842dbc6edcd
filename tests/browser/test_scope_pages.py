"""The scope's pages in a real browser against a real server: each page starts its
engine run through the API, and what it prints must equal what the run's events say
(folded here in Python, independently of the page's JavaScript)."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.browser.scope_fold import fold, ids, is_lab_run, js_pct, screenshot, step_at, stops

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

LESSONS = ["tokens", "embeddings", "attention-heads", "rope", "transformer-block",
           "sampling", "prefill-decode", "chunked-prefill", "why-kv-cache", "kv-cache",
           "paged-attention", "attention-math", "fragmentation", "prefix-caching", "preemption",
           "parallel-sampling", "beam-search", "speculative-decoding", "tensor-parallelism",
           "pipeline-parallelism", "data-parallel", "disaggregation",
           "expert-context-parallelism", "batching-lab", "tuning-lab", "gpu-memory", "cuda-graphs"]
# lessons whose engine run waits for the reader's button (starting their workers, or
# stepping several replicas, takes seconds)
RUN_ON_REQUEST = {"tensor-parallelism", "pipeline-parallelism", "data-parallel",
                  "disaggregation", "chunked-prefill", "batching-lab", "tuning-lab", "cuda-graphs"}
# the pages that tie the lessons together (chrome.js GUIDES); their own tests drive them
GUIDES = ["glossary", "concept-cards", "recap", "tour", "request-lifecycle"]


def slider(page):
    return page.locator(".player input[type=range].position")


def goto_lab(page, path: str) -> dict:
    """Open a lesson page and return the lab run it starts on load."""
    with page.expect_response(is_lab_run) as info:
        page.goto(path)
    response = info.value
    assert response.ok, response.text()
    return response.json()


# -- index ---------------------------------------------------------------------------------


def test_index_links_to_the_monitor_and_every_lesson(page, scope_server):
    page.goto("/")
    hrefs = page.locator("#lessons a").evaluate_all("els => els.map(a => a.getAttribute('href'))")
    assert hrefs == [f"lessons/{name}.html" for name in LESSONS]
    assert page.locator("main a[href='monitor.html']").count() == 1
    for href in ["monitor.html", *hrefs]:
        assert httpx.get(f"{scope_server.url}/{href}").status_code == 200
    # nothing is waiting for the engine any more: the "coming" section is hidden
    expect(page.locator("#coming li")).to_have_count(0)
    expect(page.locator("#coming-section")).to_be_hidden()
    expect(page.locator("#lessons a").nth(LESSONS.index("beam-search"))).to_have_text("Beam search")
    info = httpx.get(scope_server.url + "/scope/api/info").json()
    expect(page.locator("#server")).to_contain_text(
        f"Server model: {info['model']} (serving live). {info['engine']['num_layers']} layers")
    # the shared navigation is on every page, with the current page marked
    expect(page.locator("nav.site-nav a[aria-current=page]")).to_have_text("Home")
    screenshot(page, "index")


# -- paged attention -------------------------------------------------------------------------


def paged_readout(events: list[dict], pos: int) -> str:
    if pos == 0:
        return f"event 0 of {len(events)}: before the engine started"
    f = fold(events, pos)
    lines = [f"step {step_at(events, pos)}, event {pos} of {len(events)}",
             f"block size: {f.engine['block_size']} tokens",
             f"free blocks: {f.free} of {len(f.refs)}"]
    for rid in f.order:
        r = f.reqs[rid]
        lines.append(f"request {rid} ({r.status}, {r.computed} tokens computed): "
                     f"[{ids(f.tables.get(rid, []))}]")
    return "\n".join(lines)


def test_paged_attention_block_tables_follow_the_run(page):
    run = goto_lab(page, "/lessons/paged-attention.html")
    events = run["events"]
    readout = page.locator("#readout")
    # it opens after step 0
    expect(readout).to_have_text(paged_readout(events, stops(events)[0]))
    # several requests interleaved in one pool, mid-run
    middle = stops(events)[len(stops(events)) // 2]
    f = fold(events, middle)
    assert len(f.tables) >= 2, "the workload should interleave requests"
    slider(page).fill(str(middle))
    expect(readout).to_have_text(paged_readout(events, middle))
    # the grid: one cell per physical block, coloured by the owner, labelled for screen readers
    cells = page.locator("#pool .cell")
    expect(cells).to_have_count(len(f.refs))
    for rid, table in f.tables.items():
        for logical, block in enumerate(table):
            cell = page.locator(f"#pool .cell[data-block='{block}']")
            expect(cell).to_have_attribute("data-owners", rid)
            expect(cell).to_have_attribute(
                "aria-label", f"block {block}: request {rid}, position {logical} in its table")
    assert page.locator("#pool .cell[data-kind=free]").count() == f.free
    # an odd position between steps, and the end, where every block is back
    slider(page).fill(str(middle + 3))
    expect(readout).to_have_text(paged_readout(events, middle + 3))
    page.get_by_role("button", name="End", exact=True).click()
    expect(readout).to_have_text(paged_readout(events, len(events)))
    assert run["final"]["num_free_blocks"] == len(f.refs)
    expect(readout).to_contain_text(f"free blocks: {len(f.refs)} of {len(f.refs)}")
    slider(page).fill(str(middle))
    screenshot(page, "paged-attention")


def test_keyboard_alone_drives_the_scrubber(page):
    run = goto_lab(page, "/lessons/paged-attention.html")
    events = run["events"]
    readout = page.locator("#readout")
    at = stops(events)[0]
    expect(readout).to_have_text(paged_readout(events, at))

    def tab_to(selector: str) -> None:
        for _ in range(60):
            page.keyboard.press("Tab")
            if page.evaluate(f"document.activeElement.matches({selector!r})"):
                return
        raise AssertionError(f"Tab never reached {selector}")

    tab_to("button[data-act=next-step]")
    # focus is visible
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    page.keyboard.press("Enter")
    at = stops(events)[1]
    expect(readout).to_have_text(paged_readout(events, at))
    page.keyboard.press("Space")
    at = stops(events)[2]
    expect(readout).to_have_text(paged_readout(events, at))
    tab_to(".player input[type=range]")
    page.keyboard.press("ArrowRight")
    at += 1
    expect(readout).to_have_text(paged_readout(events, at))
    expect(slider(page)).to_have_attribute(
        "aria-valuetext", f"step {step_at(events, at)}, event {at} of {len(events)}")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    at -= 2
    expect(readout).to_have_text(paged_readout(events, at))
    page.keyboard.press("End")
    expect(readout).to_have_text(paged_readout(events, len(events)))
    page.keyboard.press("Home")
    expect(readout).to_have_text(paged_readout(events, 0))


# -- KV cache ----------------------------------------------------------------------------------


def test_kv_cache_bytes_per_token_and_growth(page, scope_server):
    run = goto_lab(page, "/lessons/kv-cache.html")
    events = run["events"]
    sizes = httpx.get(scope_server.url + "/scope/api/kv-sizes").json()
    dtype_bytes = sizes["loaded"]["dtype_bytes"]
    per_token = 2 * 30 * 3 * 64 * dtype_bytes  # SmolLM2-135M: 30 layers, 3 KV heads, dim 64
    assert events[0]["kv_bytes_per_token"] == per_token
    expect(page.locator("#formula")).to_have_text(
        f"2 × 30 layers × 3 KV heads × 64 head dim × {dtype_bytes} bytes "
        f"({sizes['loaded']['dtype']}) = {per_token} bytes per token")

    def expected(pos: int) -> str:
        f = fold(events, pos)
        bs = f.engine["block_size"]
        lines = [f"KV bytes per token: 2 × 30 × 3 × 64 × {dtype_bytes} = {per_token}",
                 f"step {step_at(events, pos)}, event {pos} of {len(events)}"]
        for rid in f.order:
            r = f.reqs[rid]
            in_cache = r.computed if rid in f.tables else 0
            done = ", blocks returned to the pool" if r.status == "finished" else ""
            blocks = len(f.tables.get(rid, []))
            lines.append(f"request {rid} ({r.status}{done}): {in_cache} tokens in cache × "
                         f"{per_token} B = {in_cache * per_token} B (prompt {r.prompt_len} "
                         f"tokens, {r.outputs} generated)")
            lines.append(f"  blocks held: {blocks} × {bs} slots × {per_token} B = "
                         f"{blocks * bs * per_token} B")
        return "\n".join(lines)

    readout = page.locator("#readout")
    last = stops(events)[-2]
    expect(readout).to_have_text(expected(last))
    # one decode step later in the middle of the run: exactly one more token's K and V
    mid = stops(events)[len(stops(events)) // 2]
    slider(page).fill(str(mid))
    expect(readout).to_have_text(expected(mid))
    before = fold(events, mid).reqs["0"].computed
    page.get_by_role("button", name="Next step", exact=True).click()
    after_pos = stops(events)[len(stops(events)) // 2 + 1]
    expect(readout).to_have_text(expected(after_pos))
    assert fold(events, after_pos).reqs["0"].computed == before + 1
    # the well-known models: one row each, labelled as computed from config
    rows = page.locator("#models tbody tr")
    expect(rows).to_have_count(1 + len(sizes["models"]))
    for i, model in enumerate(sizes["models"], start=1):
        expect(rows.nth(i).locator("th")).to_have_text(model["name"])
        expect(rows.nth(i).locator("td").last).to_have_text(model["source"])
        assert "computed from" in model["source"]
    expect(page.locator("#models caption")).to_contain_text("the others are computed from config")
    slider(page).fill(str(last))
    screenshot(page, "kv-cache")


# -- attention math ------------------------------------------------------------------------


def floats_after(readout: str, label: str) -> list[float]:
    line = next(line for line in readout.splitlines() if line.startswith(label))
    return [float(x) for x in line[len(label):].split(",")]


def test_attention_math_steps_through_blocks_to_the_same_result(page):
    page.goto("/lessons/attention-math.html")
    expect(page.locator("#readout")).to_contain_text("phase: block 1 of")  # the first load
    page.locator("#layer").fill("5")
    page.locator("#head").fill("4")
    page.locator("#block-size").fill("4")
    page.locator("#position").fill("-1")
    with page.expect_response(lambda r: r.url.endswith("/scope/api/lab/attention")) as info:
        page.get_by_role("button", name="Compute attention").click()
    data = info.value.json()
    assert (data["layer"], data["head"], data["block_size"]) == (5, 4, 4)
    readout = page.locator("#readout")
    expect(readout).to_contain_text(f"layer 5, head 4 (KV head {data['kv_head']})")
    n = len(data["blocks"])
    assert n >= 3
    for i, block in enumerate(data["blocks"]):
        expect(readout).to_contain_text(f"phase: block {i + 1} of {n}")
        expect(readout).to_contain_text(
            f"logical block {i} → physical block {block['block_id']}, "
            f"positions {block['start']}–{block['end'] - 1}")
        text = readout.inner_text()
        assert floats_after(text, "scores: ") == block["scores"]
        assert floats_after(text, "block max: ") == [block["block_max"]]
        assert floats_after(text, "block sum exp: ") == [block["block_sum_exp"]]
        expect(page.locator("#blocks .blk.current")).to_contain_text(
            f"logical {i} → physical {block['block_id']}")
        page.get_by_role("button", name="Next", exact=True).click()
    expect(readout).to_contain_text(f"phase: softmax over all {len(data['weights'])} scores")
    assert floats_after(readout.inner_text(), "weights: ") == data["weights"]
    page.get_by_role("button", name="Next", exact=True).click()
    expect(readout).to_contain_text("phase: weighted sum of values")
    text = readout.inner_text()
    assert floats_after(text, "max abs diff, block-wise vs contiguous: ") == [data["max_abs_diff"]]
    assert floats_after(text, "max abs diff, online vs block-wise: ") == [
        data["max_abs_diff_online"]]
    assert floats_after(text, "output block-wise (first 8): ") == data["output_blockwise"][:8]
    assert data["max_abs_diff"] < 1e-4
    expect(page.get_by_role("button", name="Next", exact=True)).to_be_disabled()
    # the step slider works from the keyboard too
    page.locator("#phase").focus()
    page.keyboard.press("Home")
    expect(readout).to_contain_text(f"phase: block 1 of {n}")
    expect(page.locator("#phase")).to_have_attribute(
        "aria-valuetext", f"step 1 of {n + 2}: block 1 of {n}")
    screenshot(page, "attention-math")


# -- fragmentation -------------------------------------------------------------------------


def frag_lines(name: str, verb: str, reserved: int, used: int) -> str:
    waste = 1 - used / reserved if reserved else 0
    return f"{name}: {reserved} slots {verb}, {used} hold tokens, {js_pct(waste)} unused"


def frag_readout(events: list[dict], pos: int) -> str:
    f = fold(events, pos)
    mml = f.engine["max_model_len"]
    lines = [f"event {pos} of {len(events)}"]

    def schemes(d: dict) -> list[str]:
        return [frag_lines("paged", "allocated", d["allocated_slots"], d["filled_slots"]),
                frag_lines(f"contiguous, max_model_len ({mml}) each", "reserved",
                           d["reserved_max_model_len"], d["tokens_held"]),
                frag_lines("contiguous, prompt + max_tokens each", "reserved",
                           d["reserved_own_length"], d["tokens_held"])]

    last = f.steps[-1]
    lines.append(f"after step {last['step']} ({last['num_running']} running, "
                 f"{last['num_waiting']} waiting):")
    lines += [f"  {line}" for line in schemes(last["fragmentation"])]
    lines.append(f"  external waste, paged: none by construction (any of the {f.free} free "
                 "blocks can extend any request); contiguous: not simulated")
    keys = ["allocated_slots", "filled_slots", "reserved_max_model_len", "reserved_own_length",
            "tokens_held"]
    total = {k: sum(s["fragmentation"][k] for s in f.steps) for k in keys}
    lines.append(f"run so far (slot-steps, steps {f.steps[0]['step']}–{last['step']}):")
    lines += [f"  {line}" for line in schemes(total)]
    return "\n".join(lines)


def test_fragmentation_numbers_are_the_engines(page):
    run = goto_lab(page, "/lessons/fragmentation.html")
    events = run["events"]
    readout = page.locator("#readout")
    expect(readout).to_have_text(frag_readout(events, stops(events)[-2]))
    slider(page).fill(str(stops(events)[2]))
    expect(readout).to_have_text(frag_readout(events, stops(events)[2]))
    # paged allocation wastes less than reserving max_model_len, at every step
    for s in (e for e in events if e["kind"] == "step_end" and e["fragmentation"]["tokens_held"]):
        frag = s["fragmentation"]
        assert frag["paged_waste"] < frag["contiguous_waste"]
    expect(page.locator("#now li")).to_have_count(3)
    slider(page).fill(str(stops(events)[-2]))
    screenshot(page, "fragmentation")


# -- prefix caching ---------------------------------------------------------------------------


def test_prefix_caching_hits_for_a_typed_suffix(page):
    goto_lab(page, "/lessons/prefix-caching.html")
    suffix = " Question: is the rye loaf still warm?"
    page.locator("#suffix").fill(suffix)
    with page.expect_response(is_lab_run) as info:
        page.locator("#suffix").press("Enter")
    events = info.value.json()["events"]
    arrived = next(e for e in events if e["kind"] == "request_arrived" and e["request_id"] == "1")
    assert arrived["prompt"].endswith(suffix)
    lookup = next(e for e in events
                  if e["kind"] == "prefix_cache_lookup" and e["request_id"] == "1")
    assert lookup["hit_tokens"] > 0 and lookup["block_ids"]
    readout = page.locator("#readout")
    expect(readout).to_contain_text(f"hit tokens: {lookup['hit_tokens']}\n")
    expect(readout).to_contain_text(f"hit blocks: {ids(lookup['block_ids'])}\n")
    expect(readout).to_contain_text(
        f"lookup at admission (step {lookup['step']}): {lookup['hit_tokens']} of "
        f"{lookup['queried_tokens']} tokens hit")
    for i, (block, h) in enumerate(zip(lookup["block_ids"], lookup["hashes"], strict=True)):
        expect(readout).to_contain_text(f"  block {i}: {h[:12]} hit: shares physical block {block}")
    # the first miss is hashed and cached by request 1 itself
    cached = [e for e in events if e["kind"] == "blocks_cached" and e["request_id"] == "1"]
    first_miss = len(lookup["block_ids"])
    own = {e["first_index"] + j: (b, h) for e in cached
           for j, (b, h) in enumerate(zip(e["block_ids"], e["hashes"], strict=True))}
    if first_miss in own:
        block, h = own[first_miss]
        expect(readout).to_contain_text(
            f"  block {first_miss}: {h[:12]} miss: computed into block {block}, then cached")
    # the pool outlines exactly the hit blocks
    expect(page.locator("#pool .cell.hl")).to_have_count(len(lookup["block_ids"]))
    outlined = page.locator("#pool .cell.hl").evaluate_all(
        "els => els.map(e => Number(e.dataset.block))")
    assert outlined == sorted(lookup["block_ids"])
    # block texts come back from the real tokenizer
    expect(page.locator("#blocks .blk").first).to_contain_text("You are the assistant")
    screenshot(page, "prefix-caching")


# -- preemption -----------------------------------------------------------------------------


def preemption_readout(events: list[dict], pos: int) -> str:
    f = fold(events, pos)
    lines = [f"mode: {f.engine['preemption_mode']}",
             f"step {step_at(events, pos)}, event {pos} of {len(events)}",
             "statuses: " + ", ".join(f"{rid} {f.reqs[rid].status}" for rid in f.order),
             f"preemptions: {f.preemptions} (swap outs {f.swap_outs}, swap ins {f.swap_ins})"]
    seen = events[:pos]
    at = max((i for i, e in enumerate(seen) if e["kind"] == "preempted"), default=None)
    if at is None:
        lines.append("victim: none yet")
    else:
        p = seen[at]
        rid = p["request_id"]
        lines.append(f"victim: request {rid} ({p['mode']}, step {p['step']})")
        out = next(e for e in reversed(seen[:at]) if e.get("request_id") == rid
                   and e["kind"] in ("swapped_out", "blocks_freed"))
        if out["kind"] == "swapped_out":
            moved = ", ".join(f"{b}→slot {s}" for b, s in out["copies"])
            lines.append(f"  out: blocks copied to swap: {moved}")
        else:
            lines.append(f"  out: blocks freed, K/V dropped: {ids(out['block_ids'])}")
        back = next((e for e in seen[at + 1:] if e.get("request_id") == rid and (
            e["kind"] == "swapped_in" or (e["kind"] == "request_scheduled" and e["resumed"]))),
            None)
        if back is None:
            lines.append("  back: not yet")
        elif back["kind"] == "swapped_in":
            moved = ", ".join(f"slot {s}→{b}" for s, b in back["copies"])
            lines.append(f"  back: step {back['step']}, copied back: {moved}")
        else:
            lines.append(f"  back: step {back['step']}, admitted again with "
                         f"{back['num_computed_tokens']} tokens computed: recomputes its "
                         "prompt and generated tokens")
    swapped = [rid for rid in f.order if f.reqs[rid].status == "swapped"]
    lines.append(f"free blocks: {f.free} of {len(f.refs)}; swapped out: "
                 f"{', '.join(swapped) if swapped else 'none'}")
    return "\n".join(lines)


def test_preemption_recompute_then_swap(page):
    run = goto_lab(page, "/lessons/preemption.html")
    events = run["events"]
    assert events[0]["preemption_mode"] == "recompute"
    first = next(i for i, e in enumerate(events) if e["kind"] == "preempted")
    readout = page.locator("#readout")
    at = next(s for s in stops(events) if s > first)
    expect(readout).to_have_text(preemption_readout(events, at))
    expect(readout).to_contain_text("  back: not yet")
    # later the victim is admitted again and recomputes
    victim = events[first]["request_id"]
    resumed = next(i for i, e in enumerate(events) if i > first and e.get("request_id") == victim
                   and e["kind"] == "request_scheduled" and e["resumed"])
    slider(page).fill(str(resumed + 1))
    expect(readout).to_have_text(preemption_readout(events, resumed + 1))
    expect(readout).to_contain_text("admitted again with 0 tokens computed")

    with page.expect_response(is_lab_run) as info:
        page.get_by_label("swap to host memory").check()
    events = info.value.json()["events"]
    assert events[0]["preemption_mode"] == "swap"
    first = next(i for i, e in enumerate(events) if e["kind"] == "preempted")
    at = next(s for s in stops(events) if s > first)
    expect(readout).to_have_text(preemption_readout(events, at))
    expect(readout).to_contain_text("  out: blocks copied to swap: ")
    f = fold(events, at)
    victim = events[first]["request_id"]
    slots = page.locator("#swap .cell.used")
    expect(slots).to_have_count(len(f.swapped[victim]))
    swapped_in = next(i for i, e in enumerate(events) if i > first and e["kind"] == "swapped_in")
    slider(page).fill(str(swapped_in + 1))
    expect(readout).to_have_text(preemption_readout(events, swapped_in + 1))
    page.get_by_role("button", name="End", exact=True).click()
    expect(readout).to_have_text(preemption_readout(events, len(events)))
    assert fold(events, len(events)).preemptions == sum(e["kind"] == "preempted" for e in events)
    slider(page).fill(str(at))
    screenshot(page, "preemption")


# -- robustness --------------------------------------------------------------------------------


def test_a_failed_run_shows_the_servers_message(page):
    goto_lab(page, "/lessons/paged-attention.html")
    error = page.get_by_role("alert")
    expect(error).to_be_hidden()
    page.locator("#num-blocks").fill("2")  # too small for these prompts: the API answers 400
    with page.expect_response(is_lab_run) as info:
        page.get_by_role("button", name="Run the engine").click()
    response = info.value
    assert response.status == 400
    message = response.json()["error"]["message"]
    assert message
    expect(error).to_be_visible()
    expect(error).to_have_text(f"The engine run failed (HTTP 400): {message}")
    expect(page.get_by_role("button", name="Run the engine")).to_be_enabled()
    # a network failure is reported the same way
    page.route("**/scope/api/lab/run", lambda route: route.abort())
    page.locator("#num-blocks").fill("24")
    page.get_by_role("button", name="Run the engine").click()
    expect(error).to_contain_text("The engine run failed: could not reach the server")
    page.unroute("**/scope/api/lab/run")
    screenshot(page, "error")


@pytest.mark.parametrize("path", ["/", "/monitor.html"]
                         + [f"/lessons/{n}.html" for n in LESSONS + GUIDES])
def test_narrow_screen_has_no_horizontal_scroll(open_page, path):
    page = open_page(width=375)
    page.emulate_media(reduced_motion="reduce")
    page.goto(path)
    if path.removeprefix("/lessons/").removesuffix(".html") in GUIDES:
        expect(page.locator("main h1")).to_be_visible()
    elif path.removeprefix("/lessons/").removesuffix(".html") in RUN_ON_REQUEST:
        expect(page.locator("#readout")).to_have_text("No run yet.")  # its own test runs it
        expect(page.locator("#run")).to_be_enabled()
    elif path.startswith("/lessons/"):
        not_drawn = re.compile(r"^(No run yet\.|No result yet\.|)$")
        expect(page.locator("#readout")).not_to_have_text(not_drawn)
        # animations are off when the reader asks for reduced motion
        cell = page.locator(".pool .cell").first
        if cell.count():
            assert cell.evaluate("e => getComputedStyle(e).transitionDuration") == "0s"
    elif path == "/":
        expect(page.locator("#server")).to_contain_text("Server model")
    else:
        expect(page.locator("#readout")).to_contain_text("step ")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    if path in ("/lessons/preemption.html", "/lessons/beam-search.html",
                "/lessons/speculative-decoding.html"):
        screenshot(page, f"{path.split('/')[-1].removesuffix('.html')}-375px")


# -- the live monitor ----------------------------------------------------------------------------


def test_monitor_shows_a_real_completion_arrive_and_finish(page, scope_server):
    page.goto("/monitor.html")
    expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    expect(page.locator("#readout")).to_contain_text("step ")  # the snapshot arrived
    response = httpx.post(scope_server.url + "/v1/completions", timeout=120, json={
        "model": "smollm2-test", "prompt": "The scope watches the engine", "max_tokens": 6,
        "temperature": 0})
    assert response.status_code == 200
    body = response.json()
    rid = f"{body['id']}-0"  # the server names the engine request of prompt i "<id>-<i>"
    line = (f"{rid}: finished (length), prompt {body['usage']['prompt_tokens']} tokens, "
            f"{body['usage']['completion_tokens']} generated")
    expect(page.locator("#readout")).to_contain_text(line)
    expect(page.locator("#columns section").filter(has_text="finished")).to_contain_text(
        f"{rid[:12]}")
    # scrub back two steps, to a moment it was running, then follow live again
    page.get_by_role("button", name="Previous step", exact=True).click()
    page.get_by_role("button", name="Previous step", exact=True).click()
    expect(page.get_by_label("Follow live")).not_to_be_checked()
    expect(page.locator("#readout")).to_contain_text(f"{rid}: running")
    page.get_by_label("Follow live").check()
    expect(page.locator("#readout")).to_contain_text(line)
    screenshot(page, "monitor")


def test_monitor_replays_a_recording(page, scope_server, tmp_path):
    run = httpx.post(scope_server.url + "/scope/api/lab/run", timeout=120, json={
        "prompts": ["Replay me", "And me too"], "max_tokens": 4, "block_size": 4,
        "num_blocks": 16}).json()
    events = run["events"]
    path = tmp_path / "run.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    scope = scope_server.server.config.app.state.scope
    scope.replay = path
    try:
        page.emulate_media(reduced_motion="reduce")  # no autoplay: start at the beginning
        page.goto("/monitor.html")
        expect(page.locator("#conn")).to_contain_text(
            f"Replaying a recorded run: {len(events)} events")
        page.get_by_role("button", name="End", exact=True).click()
        readout = page.locator("#readout")
        f = fold(events, len(events))
        expect(readout).to_contain_text(f"step {f.step}, event {len(events)} of {len(events)}")
        for rid in f.order:
            r = f.reqs[rid]
            expect(readout).to_contain_text(
                f"{rid}: finished (length), prompt {r.prompt_len} tokens, 4 generated")
        mid = stops(events)[1]
        slider(page).fill(str(mid))
        f = fold(events, mid)
        for rid in f.order:
            r = f.reqs[rid]
            expect(readout).to_contain_text(
                f"{rid}: {r.status}, prompt {r.prompt_len} tokens, {r.outputs} generated")
    finally:
        scope.replay = None


# -- the timeline under every page --------------------------------------------------------------


def test_scrubbing_back_and_forth_equals_a_fresh_fold(page):
    """The player restores checkpoints when moving back; whatever the path to a
    position, the state must be the reducer's fold of the events up to it."""
    page.goto("/")
    result = page.evaluate("""async () => {
        const {Timeline} = await import('/js/timeline.js');
        const {fold} = await import('/js/state.js');
        const response = await fetch('/scope/api/lab/run', {method: 'POST',
          headers: {'Content-Type': 'application/json'},
          body: JSON.stringify({prompts: ['One two three', 'Four five six seven'], max_tokens: 20,
                                block_size: 2, num_blocks: 14, preemption_mode: 'swap'})});
        const {events} = await response.json();
        const t = new Timeline(events, {checkpointEvery: 13});
        const n = events.length;
        const path = [n, 5, n - 1, 0, Math.floor(n / 2), 14, 13, 27, n, 1];
        const bad = path.filter((p) => {
          t.seek(p);
          return JSON.stringify(t.state) !== JSON.stringify(fold(events, p));
        });
        return {n, bad, preempted: events.filter((e) => e.kind === 'preempted').length};
    }""")
    assert result["bad"] == []
    assert result["n"] > 100 and result["preempted"] > 0
