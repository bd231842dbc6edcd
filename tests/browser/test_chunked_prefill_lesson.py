"""The chunked-prefill lesson in a real browser against a real server: the slider set from
the keyboard, one press of Run, two lab runs (unchunked, then chunked at the slider's
budget). What the page prints (the readout, the table, the bars of both tracks, one step
of each run) must equal the two responses' events, with the figures computed here in
Python (benchmarks/chunked_prefill.py), independently of the page's JavaScript. One pair
of runs serves every check."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.scope_fold import is_lab_run, js_fixed, js_pct, screenshot
from tests.test_chunked_prefill_lab import load_bench

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

PAGE = "/lessons/chunked-prefill.html"
RUN_MS = 180_000  # two engine runs of ~40 steps each on 2 shared cores

bench = load_bench()


def ms(x: float) -> str:
    return f"{js_fixed(x, 1)} ms"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def chunk_text(chunks: list[int]) -> str:
    return f"{plural(len(chunks), 'chunk')} ({', '.join(map(str, chunks))} tokens)"


def steps_text(steps: list[int]) -> str:
    return f"{'step' if len(steps) == 1 else 'steps'} {', '.join(map(str, steps))}"


def stall_text(g: Any) -> str:
    return (f"{ms(g.ms)} (request {g.request_id}, between its tokens of steps {g.from_step} "
            f"and {g.to_step})")


def verdict(u: Any, c: Any) -> list[str]:
    lines = []
    if len(c.chunks) <= 1:
        lines.append(f"At a budget of {c.budget} the long prompt fit in one step: "
                     "nothing was chunked.")
    if c.stall.ms < u.stall.ms:
        lines.append("Chunking cut the longest wait between two tokens of a short request from "
                     f"{ms(u.stall.ms)} to {ms(c.stall.ms)}: "
                     f"{js_fixed(u.stall.ms / c.stall.ms, 1)}× shorter.")
    else:
        lines.append("The longest wait between two tokens was not shorter with chunking here: "
                     f"{ms(u.stall.ms)} unchunked, {ms(c.stall.ms)} chunked.")
    change = c.prefill_ms / u.prefill_ms - 1
    how = (f"chunking did not shorten it; it took {js_pct(change)} longer" if change >= 0 else
           f"{js_pct(-change)} less here, though the same {c.prompt_tokens} prompt tokens went "
           "through the model either way: not work saved, but this machine's noise or cache "
           "effects")
    lines.append(f"The long prompt's prefill took {ms(u.prefill_ms)} unchunked and "
                 f"{ms(c.prefill_ms)} chunked ({plural(len(c.chunks), 'step')}): {how}.")
    return lines


def expected_readout(data: list[dict[str, Any]], figs: list[Any]) -> str:
    u, c = figs
    events = data[0]["events"]
    arrivals = [e for e in events if e["kind"] == "request_arrived"]
    long_arrival = next(e for e in arrivals if e["request_id"] == u.long_id)

    def run(name: str, f: Any) -> list[str]:
        return [f"{name}, token budget {f.budget:,}: {plural(len(f.steps), 'step')}, "
                f"{ms(f.total_ms)} in all",
                f"  long prompt: {chunk_text(f.chunks)} in {steps_text(f.chunk_steps)}, "
                f"prefilled in {ms(f.prefill_ms)}",
                f"  longest wait between two tokens of a short request: {stall_text(f.stall)}"]

    same = all(a["token_ids"] == b["token_ids"]
               for a, b in zip(data[0]["outputs"], data[1]["outputs"], strict=True))
    lines = [f"workload: {plural(len(arrivals) - 1, 'short request')} from step 0, then a "
             f"{u.prompt_tokens}-token prompt (request {u.long_id}) arriving before step "
             f"{long_arrival['step']}",
             *run("unchunked", u), *run("chunked", c),
             f"prefill tokens: {u.prefill_tokens:,} unchunked, {c.prefill_tokens:,} chunked "
             f"({'equal' if u.prefill_tokens == c.prefill_tokens else 'different'})",
             *verdict(u, c),
             "greedy tokens: the same in both runs for every request" if same else "differ"]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def lesson(browser, scope_server):
    """The page after the slider was moved from the keyboard and Run pressed once: the
    page, the two lab responses, their request bodies and the run's figures."""
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  base_url=scope_server.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    responses: list[Any] = []
    page.on("response", lambda r: responses.append(r) if is_lab_run(r) else None)
    page.goto(PAGE)
    readout = page.get_by_label("Chunked prefill readout")
    expect(readout).to_have_text("No run yet.")  # nothing runs until asked
    w = bench.lesson_workload()
    slider = page.get_by_label("Token budget of the chunked run")
    expect(slider).to_have_value(str(w.budget))
    slider.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowLeft")
    budget = w.budget + 16
    expect(slider).to_have_value(str(budget))
    expect(slider).to_have_attribute("aria-valuetext", f"{budget} tokens per step")
    expect(page.locator("#budget-value")).to_have_text(f"{budget} tokens per step")
    button = page.get_by_role("button", name="Run both")
    button.click()
    expect(button).to_be_disabled()  # for both runs
    expect(page.locator("#status")).to_contain_text("Running the")
    expect(page.locator("#status")).to_contain_text("Both runs done", timeout=RUN_MS)
    assert len(responses) == 2 and all(r.ok for r in responses)
    data = [r.json() for r in responses]
    bodies = [r.request.post_data_json for r in responses]
    long_id = str(len(bodies[0]["prompts"]) - 1)
    figs = [bench.figures(d["events"], long_id) for d in data]
    yield page, data, bodies, figs, budget, w
    context.close()
    assert not errors, f"uncaught JavaScript errors: {errors}"


def test_the_readout_table_and_tracks_equal_the_two_runs(lesson):
    page, data, bodies, figs, budget, w = lesson
    for body, b in zip(bodies, (bench.UNCHUNKED_BUDGET, budget), strict=True):
        expected = bench.lab_request(w, b).model_dump()
        assert body == {k: expected[k] for k in body}
        assert set(body) == {"prompts", "arrive_at_step", "max_tokens", "max_num_batched_tokens",
                             "max_num_seqs", "block_size", "num_blocks", "enable_prefix_caching"}
    u, c = figs
    assert u.chunks == [u.prompt_tokens] and len(c.chunks) > 1
    assert max(c.chunks) <= budget and u.prefill_tokens == c.prefill_tokens
    assert [o["token_ids"] for o in data[0]["outputs"]] == \
        [o["token_ids"] for o in data[1]["outputs"]]
    # what the page prints
    expect(page.get_by_label("Chunked prefill readout")).to_have_text(expected_readout(data, figs))
    rows = page.locator("#figures tbody tr")
    expect(rows.filter(has_text="longest wait").locator("td")).to_have_text(
        [ms(u.stall.ms), ms(c.stall.ms)])
    expect(rows.filter(has_text="prefill time").locator("td")).to_have_text(
        [ms(u.prefill_ms), ms(c.prefill_ms)])
    expect(rows.filter(has_text="prefill tokens").locator("td")).to_have_text(
        [f"{u.prefill_tokens:,}", f"{c.prefill_tokens:,}"])
    expect(page.locator("#verdict p")).to_have_text(verdict(u, c))
    for track, f in (("#track-unchunked", u), ("#track-chunked", c)):
        expect(page.locator(f"{track} rect.cp-bar")).to_have_count(len(f.steps))
        long_bars = page.locator(f"{track} rect.cp-long")
        expect(long_bars).to_have_count(len(f.chunks))
        steps = long_bars.evaluate_all("els => els.map(e => Number(e.dataset.step))")
        assert steps == f.chunk_steps
        expect(page.locator(f"{track} rect.cp-stall-bar")).to_have_attribute(
            "data-step", str(f.stall.to_step))
    expect(page.locator("#unchunked-h")).to_have_text("Unchunked: token budget 1024")
    expect(page.locator("#chunked-h")).to_have_text(f"Chunked: token budget {c.budget}")
    # the stepper opens on the unchunked run's long step, selected in both tracks
    long_step = u.chunk_steps[0]
    expect(page.locator("rect.cp-bar.selected")).to_have_count(2)
    expect(page.locator("#step-unchunked .cp-head")).to_contain_text(
        f"Step {long_step}: {ms(u.steps[long_step]['ms'])}, {u.steps[long_step]['tokens']} tokens.")
    screenshot(page, "chunked-prefill")


def test_the_keyboard_steps_through_both_runs_and_a_failure_is_shown(lesson):
    page, _, _, figs, _, _ = lesson
    _, c = figs
    slider = page.get_by_label("Engine step")
    slider.focus()
    page.keyboard.press("End")
    last = c.steps[-1]["step"]
    expect(slider).to_have_attribute("aria-valuetext",
                                     f"step {last + 1} of {last + 1}: engine step {last}")
    expect(page.locator("#step-unchunked li")).to_have_text(
        [f"This run had ended before engine step {last}."])
    expect(page.locator("#step-chunked .cp-head")).to_contain_text(f"Step {last}: ")
    page.keyboard.press("Home")
    first = c.chunk_steps[0]
    for _ in range(first):
        page.keyboard.press("ArrowRight")
    chunk = c.chunks[0]
    expect(page.locator("#step-chunked .cp-head")).to_contain_text(
        f"Step {first}: {ms(c.steps[first]['ms'])}, {c.steps[first]['tokens']} tokens.")
    expect(page.locator("#step-chunked .cp-head")).to_contain_text(
        f"request {c.long_id} prefill {chunk} tokens (positions 0–{chunk - 1})")
    expect(page.locator("#step-chunked li").filter(has_text=f"request {c.long_id} arrived")) \
        .to_have_count(1)
    # a click on a bar selects its step in both runs
    page.locator(f"#track-chunked rect.cp-bar[data-step='{c.chunk_steps[1]}']").click()
    expect(page.locator("#step-chunked .cp-head")).to_contain_text(
        f"Step {c.chunk_steps[1]}: ")
    expect(page.locator(f"#track-unchunked rect.selected[data-step='{c.chunk_steps[1]}']")) \
        .to_have_count(1)
    # narrow and dark, with both runs drawn: no horizontal scroll
    page.set_viewport_size({"width": 375, "height": 900})
    page.emulate_media(color_scheme="dark", reduced_motion="reduce")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "chunked-prefill-375px")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.emulate_media(color_scheme="light", reduced_motion="no-preference")
    # a failed run is shown in the alert and keeps the picture
    readout = page.get_by_label("Chunked prefill readout")
    before = readout.inner_text()
    page.route("**/scope/api/lab/run", lambda route: route.abort())
    try:
        page.get_by_role("button", name="Run both").click()
        expect(page.get_by_role("alert")).to_contain_text(
            "The unchunked run failed: could not reach the server")
        expect(page.locator("#status")).to_have_text(
            "The picture below still shows the previous run.")
        expect(readout).to_have_text(before)
        expect(page.get_by_role("button", name="Run both")).to_be_enabled()
    finally:
        page.unroute("**/scope/api/lab/run")
