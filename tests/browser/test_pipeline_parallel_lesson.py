"""The pipeline parallelism lesson: the page runs the real engine with two pipeline
stages (two worker processes, layers 0-14 and 15-29) and up to two batches in flight.
What it prints (each stage's layers, extra weights and KV pool, every step's batch and
stage times, the bubble computed from those times, the selected step and what the
other stage computed meanwhile) must equal what the run's response says, computed here
in Python independently of the page. One run serves every check: each starts two
worker processes."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from kvscope.distributed.pipeline import bubble as engine_bubble
from tests.browser.scope_fold import is_lab_run, js_fixed, js_pct, screenshot

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

PAGE = "/lessons/pipeline-parallelism.html"
RUN_MS = 180_000  # two worker processes start per run; the first run of a process is slow


def span(r: list[int]) -> str:
    start, stop = r
    return f"{start}" if stop - start == 1 else f"{start}–{stop - 1}"


def ms(seconds: float) -> str:
    return f"{js_fixed(1000 * seconds, 1)} ms"


def shape(dims: list[int]) -> str:
    return "×".join(str(d) for d in dims)


def in_flight(n: int) -> str:
    return f"{n} {'batch' if n == 1 else 'batches'} in flight"


def js_bytes(n: float) -> str:
    """format.js bytes(): a binary unit, 2, 1 or 0 decimals."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    i, v = 0, n
    while abs(v) >= 1024 and i < len(units) - 1:
        v /= 1024
        i += 1
    if i == 0:
        return f"{round(v):,} B"
    return f"{js_fixed(v, 0 if v >= 100 else 1 if v >= 10 else 2)} {units[i]}"


def batch_text(batch: list[dict[str, Any]]) -> str:
    groups: list[tuple[str, list[str]]] = []
    for chunk in batch:
        if groups and groups[-1][0] == chunk["phase"]:
            groups[-1][1].append(chunk["request_id"])
        else:
            groups.append((chunk["phase"], [chunk["request_id"]]))
    return ", ".join(f"{', '.join(ids)} ({phase})" for phase, ids in groups)


def steps_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    steps = [e for e in events if e["kind"] == "step_end"]
    for s in steps:
        s["stages"] = sorted(s["stages"], key=lambda t: t["stage"])
    return steps


def measured(events: list[dict[str, Any]], num_stages: int) -> dict[str, Any]:
    """The span, each stage's busy seconds, the time two stages computed at once and
    the bubble fraction, from every step's stage times."""
    spans = [t for s in steps_of(events) for t in s["stages"]]
    first = min(t["start"] for t in spans)
    last = max(t["end"] for t in spans)
    busy = [0.0] * num_stages
    for t in spans:
        busy[t["stage"]] += t["end"] - t["start"]
    marks = sorted([(t["start"], 1) for t in spans] + [(t["end"], -1) for t in spans])
    depth, previous, together = 0, first, 0.0
    for at, delta in marks:
        if depth >= 2:
            together += at - previous
        depth += delta
        previous = at
    total = sum(busy)
    return {"first": first, "span": last - first, "busy": busy, "total": total,
            "together": together, "fraction": 1 - total / (num_stages * (last - first))}


def expected_readout(data: dict[str, Any], index: int) -> str:
    events = data["events"]
    start = events[0]
    p = start["pipeline_parallel_size"]
    steps = steps_of(events)
    requests = sum(e["kind"] == "request_arrived" for e in events)
    per_stage = sum(r["stage"] == 0 for r in start["ranks"])
    lines = [f"pipeline_parallel_size {p}: {start['num_layers']} layers over {p} stages, "
             f"{per_stage} worker process{'' if per_stage == 1 else 'es'} each; "
             f"{len(steps)} steps, {requests} requests"]
    element = start["kv_bytes_per_token"] / (2 * start["num_layers"] * start["num_kv_heads"]
                                             * start["head_dim"])
    for stage in range(p):
        r = next(r for r in start["ranks"] if r["stage"] == stage and r["tp_rank"] == 0)
        holds = [name for key, name in (("embed_tokens", "embedding"),
                                        ("lm_head", "final norm and LM head"))
                 if key in r["weights"]]
        elements = 1
        for d in r["kv_pool_shape"]:
            elements *= d
        lines.append(f"stage {stage}: layers {span(r['layers'])}"
                     f"{''.join(', ' + h for h in holds)}; KV pool {shape(r['kv_pool_shape'])} "
                     f"({js_bytes(elements * element)})")
    for s in steps:
        lines.append(f"step {s['step']}: {in_flight(s['batches_in_flight'])}, requests "
                     f"{batch_text(s['batch'])}, "
                     + ", ".join(f"stage {t['stage']} {ms(t['end'] - t['start'])}"
                                 for t in s["stages"]))
    m = measured(events, p)
    full = sum(s["batches_in_flight"] >= p for s in steps)
    lines += [
        f"steps with {in_flight(p)}: {full} of {len(steps)}",
        f"span {ms(m['span'])}, from the first stage start to the last stage end",
        "busy (computed): " + ", ".join(f"stage {i} {ms(b)} ({js_pct(b / m['span'])} of the span)"
                                        for i, b in enumerate(m["busy"])),
        f"two stages at once (computed): {ms(m['together'])} "
        f"({js_pct(m['together'] / m['span'])} of the span)",
        f"bubble {js_pct(m['fraction'])} (computed: 1 − busy {ms(m['total'])} / ({p} stages × "
        f"span {ms(m['span'])}))",
    ]

    def rel(t: dict[str, Any]) -> str:
        return (f"{js_fixed(1000 * (t['start'] - m['first']), 1)}–"
                f"{js_fixed(1000 * (t['end'] - m['first']), 1)} ms")

    chosen = steps[index]
    lines.append(f"selected: step {chosen['step']} ("
                 + ", ".join(f"stage {t['stage']} {rel(t)}" for t in chosen["stages"])
                 + ", after the first stage start)")
    for t in chosen["stages"]:
        others = []
        for o in steps:
            if o is chosen:
                continue
            for u in o["stages"]:
                seconds = min(t["end"], u["end"]) - max(t["start"], u["start"])
                if u["stage"] != t["stage"] and seconds > 0:
                    others.append(f"stage {u['stage']} computed step {o['step']} for {ms(seconds)}")
        lines.append(f"  while stage {t['stage']} computed it: "
                     + ("; ".join(others) if others else "no other stage computed"))
    return "\n".join(lines)


@pytest.fixture(scope="module")
def pipeline_run(browser, scope_server):
    """The page after one run on two stages, and the run's response."""
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  base_url=scope_server.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(PAGE)
    readout = page.get_by_label("Pipeline-parallel run readout")
    # nothing runs until asked: starting two workers takes seconds
    expect(readout).to_have_text("No run yet.")
    expect(page.get_by_role("button", name="Previous")).to_be_disabled()
    button = page.get_by_role("button", name="Run on two stages")
    with page.expect_response(is_lab_run, timeout=RUN_MS) as info:
        button.click()
        expect(button).to_be_disabled()  # while the server works
        expect(page.locator("#status")).to_contain_text("Running")
    response = info.value
    assert response.ok, response.text()
    yield page, response.json(), response.request.post_data_json, errors
    context.close()
    assert not errors, f"uncaught JavaScript errors: {errors}"


def test_the_run_has_two_stages_and_two_batches_in_flight(pipeline_run):
    _, data, body, _ = pipeline_run
    assert body["pipeline_parallel_size"] == 2 and len(body["prompts"]) == 5
    assert body["max_tokens"] == 12
    start = data["events"][0]
    assert start["kind"] == "engine_started" and start["pipeline_parallel_size"] == 2
    r0, r1 = start["ranks"]
    assert (r0["stage"], r0["layers"], r1["stage"], r1["layers"]) == (0, [0, 15], 1, [15, 30])
    assert "embed_tokens" in r0["weights"] and "lm_head" not in r0["weights"]
    assert "lm_head" in r1["weights"] and "embed_tokens" not in r1["weights"]
    assert r0["kv_pool_shape"][0] == r1["kv_pool_shape"][0] == 15
    steps = steps_of(data["events"])
    assert all([t["stage"] for t in s["stages"]] == [0, 1] for s in steps)
    assert all(t["start"] < t["end"] for s in steps for t in s["stages"])
    assert any(s["batches_in_flight"] == 2 for s in steps)
    # a request is in at most one unfinished batch: two batches in flight never share one
    for a, b in itertools.pairwise(steps):
        if b["batches_in_flight"] == 2:
            assert not {c["request_id"] for c in a["batch"]} & {c["request_id"] for c in b["batch"]}
    # stage 0 took a batch while stage 1 still computed the one before: they overlapped
    m = measured(data["events"], 2)
    assert m["together"] > 0
    # the engine's own arithmetic agrees with the one here
    spans = [(t["stage"], t["start"], t["end"]) for s in steps for t in s["stages"]]
    ours = engine_bubble(spans, 2)
    assert abs(ours["bubble_fraction"] - m["fraction"]) < 1e-12
    assert all(len(o["token_ids"]) == 12 for o in data["outputs"])
    assert data["final"]["num_free_blocks"] == start["num_blocks"]


def test_the_readout_and_pictures_equal_the_run(pipeline_run):
    page, data, _, _ = pipeline_run
    readout = page.get_by_label("Pipeline-parallel run readout")
    steps = steps_of(data["events"])
    first_full = next(i for i, s in enumerate(steps) if s["batches_in_flight"] == 2)
    expect(readout).to_have_text(expected_readout(data, first_full))
    expect(page.locator("#status")).to_contain_text("Done in")
    expect(page.get_by_role("button", name="Run on two stages")).to_be_enabled()
    # the stages, the timeline (one bar per stage per step), the table and the outputs
    expect(page.locator("#stages .pp-stage")).to_have_count(2)
    expect(page.locator("#stages .pp-stage").first).to_contain_text("embed_tokens 49152×576")
    expect(page.locator("#gantt .pp-bar")).to_have_count(2 * len(steps))
    selected = page.locator("#gantt .pp-bar.selected")
    expect(selected).to_have_count(2)
    expect(selected.first).to_have_attribute("data-step", str(steps[first_full]["step"]))
    expect(page.locator("#zoom .pp-bar.selected")).to_have_text(
        [str(steps[first_full]["step"])] * 2)
    expect(page.locator("#steps tbody tr")).to_have_count(len(steps))
    expect(page.locator("#steps tbody tr[aria-current=true] th")).to_have_text(
        str(steps[first_full]["step"]))
    m = measured(data["events"], 2)
    expect(page.locator("#bubble .pp-fraction")).to_contain_text(f"Bubble: {js_pct(m['fraction'])}")
    expect(page.locator("#outputs li .text")).to_have_text([o["text"] for o in data["outputs"]])
    screenshot(page, "pipeline-parallelism")

    # narrow and dark: no horizontal scroll with the run drawn
    page.set_viewport_size({"width": 375, "height": 900})
    page.emulate_media(color_scheme="dark")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "pipeline-parallelism-375px")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.emulate_media(color_scheme="light")


def test_the_keyboard_steps_through_the_run(pipeline_run):
    page, data, _, _ = pipeline_run
    readout = page.get_by_label("Pipeline-parallel run readout")
    steps = steps_of(data["events"])
    n = len(steps)
    slider = page.get_by_label("Step of the run")
    slider.focus()
    page.keyboard.press("End")
    expect(readout).to_have_text(expected_readout(data, n - 1))
    expect(slider).to_have_attribute(
        "aria-valuetext", f"step {n} of {n}: engine step {steps[-1]['step']}, "
                          f"{in_flight(steps[-1]['batches_in_flight'])}")
    expect(page.get_by_role("button", name="Next")).to_be_disabled()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    expect(readout).to_have_text(expected_readout(data, n - 3))
    expect(page.locator("#gantt .pp-bar.selected").first).to_have_attribute(
        "data-step", str(steps[n - 3]["step"]))
    page.keyboard.press("Home")
    expect(readout).to_have_text(expected_readout(data, 0))
    expect(page.get_by_role("button", name="Previous")).to_be_disabled()
    # the Next button, from the keyboard
    page.get_by_role("button", name="Next").focus()
    page.keyboard.press("Enter")
    page.keyboard.press("Enter")
    expect(readout).to_have_text(expected_readout(data, 2))
    expect(page.locator("#steps tbody tr[aria-current=true] th")).to_have_text(
        str(steps[2]["step"]))
    # a click on a bar selects its step too
    page.locator(f"#gantt .pp-bar[data-index='{n // 2}']").first.click()
    expect(readout).to_have_text(expected_readout(data, n // 2))


def test_a_failed_run_keeps_the_previous_picture(pipeline_run):
    page, _, _, _ = pipeline_run
    readout = page.get_by_label("Pipeline-parallel run readout")
    before = readout.inner_text()
    page.route("**/scope/api/lab/run", lambda route: route.abort())
    try:
        page.get_by_role("button", name="Run on two stages").click()
        expect(page.get_by_role("alert")).to_contain_text(
            "The pipeline-parallel run failed: could not reach the server")
        expect(page.locator("#status")).to_have_text(
            "The picture below still shows the previous run.")
        expect(readout).to_have_text(before)
        expect(page.get_by_role("button", name="Run on two stages")).to_be_enabled()
    finally:
        page.unroute("**/scope/api/lab/run")
