"""The Batching Lab in a real browser against a real server: pick a preset, run it
(the page sends it twice, static then continuous), and what the page prints must equal
the figures computed here in Python from the two responses' events
(kvscope.bench.batching, independent of the page's JavaScript). One pair of runs serves
every check."""

from __future__ import annotations

from typing import Any

import pytest

from kvscope.bench.batching import figures, page_workloads
from tests.browser.scope_fold import is_lab_run, js_fixed, js_pct, screenshot

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

PAGE = "/lessons/batching-lab.html"
PRESET = "long-tail"
RUN_MS = 120_000  # two runs of up to ~60 steps each on 2 CPU cores


def ms(seconds: float) -> str:
    return f"{js_fixed(1000 * seconds, 1)} ms"


def ratio(x: float) -> str:
    return f"{js_fixed(x, 2)}×"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def run_line(f: dict[str, Any]) -> str:
    return (f"{f['batching']}: {plural(f['steps'], 'step')} in {js_fixed(f['wall'], 2)} s, "
            f"{f['output_tokens']:,} output tokens, {js_fixed(f['tok_per_s'], 1)} tokens/s; "
            f"time to first token mean {ms(f['ttft_mean'])}, p99 {ms(f['ttft_p99'])}; "
            f"end-to-end latency mean {ms(f['e2e_mean'])}, p99 {ms(f['e2e_p99'])}; "
            f"slot utilisation {js_pct(f['utilisation'])} ({f['busy']:,} busy of "
            f"{f['slot_steps']:,} slot-steps)")


def expected_readout(label: str, static: dict[str, Any], continuous: dict[str, Any]) -> str:
    s, c = figures(static, "static"), figures(continuous, "continuous")
    pad = s["padding"]
    n = len(s["run"].reqs)
    same = sum(a["token_ids"] == b["token_ids"]
               for a, b in zip(static["outputs"], continuous["outputs"], strict=True))
    batches = " ".join(f"[{', '.join(b)}]" for b in s["batches"])
    return "\n".join([
        f"workload: {label}; {plural(n, 'request')}, {s['seats']} seats (max_num_seqs)",
        run_line(s),
        run_line(c),
        f"continuous against static: {ratio(c['steps'] / s['steps'])} the steps, "
        f"{ratio(c['wall'] / s['wall'])} the wall time, {ratio(c['tok_per_s'] / s['tok_per_s'])} "
        f"the output tokens/s, {ratio(c['ttft_mean'] / s['ttft_mean'])} the mean time to first "
        f"token, {ratio(c['e2e_mean'] / s['e2e_mean'])} the mean end-to-end latency",
        f"static batches: {batches}; the engine counted {s['engine_idle_slot_steps']:,} idle of "
        f"{s['engine_slot_steps']:,} seat-steps while they ran",
        f"padding a padded static batch would compute (computed, not run): {pad['prompt']:,} "
        f"prompt tokens (each prompt padded to the longest of its batch) + {pad['decode']:,} "
        f"decode slots of finished sequences = {pad['total']:,} tokens, "
        f"{js_pct(pad['total'] / pad['computed'])} of the {pad['computed']:,} it would compute",
        f"same greedy tokens in both runs: {same} of {n} requests",
    ])


def idle_cells(data: dict[str, Any]) -> int:
    """Request-steps a static batch held a finished request's seat."""
    f = figures(data, "static")
    run = f["run"]
    total = 0
    for members in f["batches"]:
        end = max(run.reqs[rid].finished_step for rid in members)
        total += sum(end - run.reqs[rid].finished_step for rid in members)
    return total


@pytest.fixture(scope="module")
def lab(browser, scope_server):
    """The page after one run of the preset, and the two responses and request bodies."""
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  base_url=scope_server.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    responses: list[Any] = []
    page.on("response", lambda r: responses.append(r) if is_lab_run(r) else None)
    page.goto(PAGE)
    expect(page.locator("#readout")).to_have_text("No run yet.")  # runs only when asked
    page.get_by_label("long-tail outputs", exact=True).check()
    expect(page.locator("#preset-blurb")).to_contain_text("Most answers take 3 or 4 tokens")
    button = page.get_by_role("button", name="Run static, then continuous")
    button.click()
    expect(page.locator("#status")).to_contain_text("Both runs done in", timeout=RUN_MS)
    assert len(responses) == 2
    for r in responses:
        assert r.ok, r.text()
    runs = {r.request.post_data_json["batching"]: (r.request.post_data_json, r.json())
            for r in responses}
    yield page, runs, errors
    context.close()
    assert not errors, f"uncaught JavaScript errors: {errors}"


def test_the_readout_lanes_and_table_equal_the_two_runs(lab):
    page, runs, _ = lab
    workload = page_workloads()[PRESET]
    (static_body, static), (continuous_body, continuous) = runs["static"], runs["continuous"]
    # the page sent the preset, static first, and the two bodies differ only in batching
    assert static_body == workload["bodies"]["static"]
    assert continuous_body == workload["bodies"]["continuous"]
    expect(page.locator("#readout")).to_have_text(
        expected_readout(workload["label"], static, continuous))
    s, c = figures(static, "static"), figures(continuous, "continuous")
    assert s["steps"] == static["num_steps"] and c["steps"] == continuous["num_steps"]
    assert c["steps"] < s["steps"]
    # one lane per request in each run, every lane as long as the longer run
    for run in ("static", "continuous"):
        lanes = page.locator(f"#lanes-{run} .bl-lane")
        expect(lanes).to_have_count(len(static["outputs"]))
        expect(lanes.first.locator(".bl-cell")).to_have_count(s["steps"])
    expect(page.locator("#lanes-continuous .bl-lane").first.locator(".bl-over")).to_have_count(
        s["steps"] - c["steps"])
    expect(page.locator("#lanes-static .bl-idle")).to_have_count(idle_cells(static))
    expect(page.locator("#lanes-continuous .bl-idle")).to_have_count(0)
    prefill_chunks = sum(ch["phase"] == "prefill" for e in static["events"]
                         if e["kind"] == "step_end" for ch in e["batch"])
    expect(page.locator("#lanes-static .bl-prefill")).to_have_count(prefill_chunks)
    # the side-by-side table
    rows = page.locator("#figures tbody tr")
    expect(rows).to_have_count(9)
    expect(rows.nth(0)).to_have_text(
        f"steps{s['steps']}{c['steps']}{ratio(c['steps'] / s['steps'])}")
    expect(rows.nth(3).locator("td").nth(0)).to_have_text(ms(s["ttft_mean"]))
    expect(rows.nth(3).locator("td").nth(1)).to_have_text(ms(c["ttft_mean"]))
    pad = s["padding"]
    expect(rows.nth(8).locator("td").first).to_have_text(
        f"{pad['total']} tokens: {pad['prompt']} prompt + {pad['decode']} decode")
    expect(page.locator("#requests tbody tr")).to_have_count(len(static["outputs"]))
    expect(page.locator("#requests tbody tr td:last-child")).to_have_text(
        ["yes"] * len(static["outputs"]))
    screenshot(page, "batching-lab")

    # narrow, dark, reduced motion: no horizontal scroll with both runs drawn
    page.set_viewport_size({"width": 375, "height": 900})
    page.emulate_media(color_scheme="dark", reduced_motion="reduce")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "batching-lab-375px")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.emulate_media(color_scheme="light", reduced_motion="no-preference")


def test_the_keyboard_steps_both_runs_and_errors_show_in_the_alert(lab):
    page, runs, _ = lab
    s, c = figures(runs["static"][1], "static"), figures(runs["continuous"][1], "continuous")
    slider = page.get_by_label("Step of the two runs", exact=True)
    detail = page.locator("#step-detail li")
    slider.focus()
    page.keyboard.press("End")
    n = s["steps"]
    expect(slider).to_have_attribute(
        "aria-valuetext", f"step {n} of {n}: static {s['run'].steps[-1]['busy']} of "
                          f"{s['seats']} seats busy, continuous done")
    expect(detail.nth(1)).to_have_text(
        f"continuous: the run had ended after {plural(c['steps'], 'step')}")
    expect(detail.nth(0)).to_contain_text(f"static, step {s['run'].steps[-1]['step']}: decode")
    page.keyboard.press("Home")
    expect(detail.nth(0)).to_contain_text("static, step 0: prefill 0 (")
    expect(detail.nth(1)).to_contain_text("continuous, step 0: prefill 0 (")
    page.get_by_role("button", name="Next", exact=True).focus()
    page.keyboard.press("Enter")
    expect(slider).to_have_value("1")
    expect(detail.nth(0)).to_contain_text("static, step 1: decode")

    readout = page.locator("#readout")
    before = readout.inner_text()
    alert = page.get_by_role("alert")
    # a workload the editor cannot take: nothing is sent, the reason is in the alert
    page.locator("#workload").fill("12, 8, 0\n12, 99, 0")
    expect(page.get_by_label("custom", exact=True)).to_be_checked()
    page.get_by_role("button", name="Run static, then continuous").click()
    expect(alert).to_have_text("Reading the workload failed: line 2: output tokens must be "
                               "between 1 and 64; got 99")
    # a failed run keeps the previous pictures
    page.locator("#workload").fill("12, 8, 0\n10, 4, 0")
    page.route("**/scope/api/lab/run", lambda route: route.abort())
    try:
        page.get_by_role("button", name="Run static, then continuous").click()
        expect(alert).to_contain_text("The static run failed: could not reach the server")
        expect(page.locator("#status")).to_have_text(
            "The pictures below still show the previous runs.")
        expect(readout).to_have_text(before)
        expect(page.get_by_role("button", name="Run static, then continuous")).to_be_enabled()
    finally:
        page.unroute("**/scope/api/lab/run")
