"""The Tuning Lab in a real browser against a real server: the recorded sweep is drawn
at once (one mark per point in each chart, one table row each), two live runs add two
live marks, and the readout states exactly the figures of the API's response and of
the nearest recorded point, worked out here in Python from the JSON (not from the
page's JavaScript)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kvscope.bench.sweep import RECORDED_SWEEP
from tests.browser.scope_fold import js_fixed, js_number, js_pct, screenshot

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

PAGE = "/lessons/tuning-lab.html"
RUN_MS = 90_000  # one live point: 8 short requests on 2 CPU cores, waiting included
FIRST = {"max_num_seqs": 8, "max_num_batched_tokens": 256, "num_blocks": 64,
         "enable_prefix_caching": True, "speculative": "off", "request_rate": None}


def ms(x: float | None) -> str:
    return "–" if x is None else f"{js_fixed(x, 1)} ms"


def label(s: dict[str, Any]) -> str:
    rate = "all at once" if s["request_rate"] is None else f"{js_number(s['request_rate'])} req/s"
    return " · ".join([f"seqs {s['max_num_seqs']}", f"budget {s['max_num_batched_tokens']}",
                       f"{s['num_blocks']} blocks",
                       f"prefix {'on' if s['enable_prefix_caching'] else 'off'}",
                       f"ngram {'on' if s['speculative'] == 'ngram' else 'off'}", rate])


def machine_line(m: dict[str, Any]) -> str:
    return (f"{m['cpu']}, {m['torch_threads']} torch threads, kernels {m['kernel_isa']}; "
            f"{m['model']} in {m['dtype']} (weights {m['weights']})")


def expected_readout(number: int, live: dict[str, Any], sweep: dict[str, Any]) -> str:
    m, e, s = live["metrics"], live["engine"], live["setting"]
    acceptance = "–" if e["draft_acceptance_rate"] is None else js_pct(e["draft_acceptance_rate"])
    lines = [
        f"live point {number}: {label(s)}",
        f"measured: {m['completed']} of {m['requests']} requests in "
        f"{js_fixed(m['duration_s'], 2)} s; output {js_fixed(m['output_throughput'], 1)} tok/s, "
        f"{js_fixed(m['request_throughput'], 2)} req/s",
        f"TTFT mean {ms(m['ttft_ms']['mean'])}, p99 {ms(m['ttft_ms']['p99'])}; "
        f"TPOT mean {ms(m['tpot_ms']['mean'])}, p99 {ms(m['tpot_ms']['p99'])}; "
        f"ITL mean {ms(m['itl_ms']['mean'])}, p99 {ms(m['itl_ms']['p99'])}",
        f"engine: {e['steps']} steps, {e['preemptions']} preemptions, prefix-cache hit rate "
        f"{js_pct(e['prefix_cache_hit_rate'])}, draft acceptance {acceptance}",
    ]
    if live["budget_wait_s"] >= 0.01:
        lines.append(f"the run waited {js_fixed(live['budget_wait_s'], 2)} s for the server's own "
                     "requests; its times include that")
    same = next(p for p in sweep["points"] if p["setting"] == s)  # the grid has this setting
    r = same["metrics"]
    lines += [
        f"nearest recorded point: {label(s)} (same setting): TTFT mean {ms(r['ttft_ms']['mean'])}, "
        f"TPOT mean {ms(r['tpot_ms']['mean'])}, {js_fixed(r['output_throughput'], 1)} tok/s",
        f"live ÷ recorded: TTFT {js_fixed(m['ttft_ms']['mean'] / r['ttft_ms']['mean'], 2)}×, "
        f"TPOT {js_fixed(m['tpot_ms']['mean'] / r['tpot_ms']['mean'], 2)}×, "
        f"throughput {js_fixed(m['output_throughput'] / r['output_throughput'], 2)}×",
        f"measured on: {machine_line(live['machine'])}",
    ]
    keys = ("cpu", "dtype", "weights", "torch_threads")
    if all(live["machine"][k] == sweep["machine"][k] for k in keys):
        lines.append("the recorded sweep: the same CPU, threads, dtype and weights")
    else:
        lines.append(f"the recorded sweep: {machine_line(sweep['machine'])} (not the same: "
                     "compare the shapes, not the numbers)")
    return "\n".join(lines)


def is_tuning_run(response: Any) -> bool:
    return response.url.endswith("/scope/api/lab/tuning") and response.request.method == "POST"


def test_the_sweep_is_drawn_and_live_points_land_with_the_apis_figures(page):
    sweep = json.loads(RECORDED_SWEEP.read_text())
    n = len(sweep["points"])
    responses: list[Any] = []
    page.on("response", lambda r: responses.append(r) if is_tuning_run(r) else None)
    page.goto(PAGE)
    expect(page.locator("#sweep-note")).to_contain_text(f"{n} recorded points")
    expect(page.locator("#readout")).to_have_text("No run yet.")  # runs only when asked
    for chart in ("ttft", "tpot"):
        expect(page.locator(f"#chart-{chart} .tl-dot.tl-recorded")).to_have_count(n)
        expect(page.locator(f"#chart-{chart} .tl-dot.tl-live")).to_have_count(0)
    expect(page.locator("#points tbody tr")).to_have_count(n)
    expect(page.locator("#sweep-command code")).to_have_text(sweep["command"])

    page.get_by_label("Seats (max_num_seqs)").fill(str(FIRST["max_num_seqs"]))
    page.get_by_role("button", name="Measure this setting live").click()
    expect(page.locator("#status")).to_contain_text("Live point 1:", timeout=RUN_MS)
    assert len(responses) == 1 and responses[0].ok, responses[0].text()
    body, live = responses[0].request.post_data_json, responses[0].json()
    assert body == {**FIRST, **sweep["workload"]}  # the knobs, on the sweep's workload
    assert live["setting"] == FIRST
    expect(page.locator("#readout")).to_have_text(expected_readout(1, live, sweep))
    expect(page.locator("#chart-ttft .tl-dot.tl-live")).to_have_count(1)
    first_row = page.locator("#points tbody tr").first
    expect(first_row.locator("th")).to_have_text("live 1")
    expect(first_row.locator("td").nth(1)).to_have_text(ms(live["metrics"]["ttft_ms"]["mean"]))
    screenshot(page, "tuning-lab")

    # a second setting adds a second live mark beside the first
    page.get_by_label("speculative decoding (n-gram, 4 draft tokens)").check()
    page.get_by_role("button", name="Measure this setting live").click()
    expect(page.locator("#status")).to_contain_text("Live point 2:", timeout=RUN_MS)
    second = responses[1].json()
    assert second["setting"] == {**FIRST, "speculative": "ngram"}
    expect(page.locator("#readout")).to_have_text(expected_readout(2, second, sweep))
    for chart in ("ttft", "tpot"):
        expect(page.locator(f"#chart-{chart} .tl-dot.tl-live")).to_have_count(2)
    expect(page.locator("#points tbody tr")).to_have_count(n + 2)

    # the keyboard reaches a mark and the page says which setting it is
    page.locator("#chart-ttft .tl-dot.tl-live").first.focus()
    expect(page.locator("#point-detail")).to_contain_text(f"live 1: {label(FIRST)}")
    page.keyboard.press("Tab")
    expect(page.locator("#point-detail")).to_contain_text("live 2: ")

    # a knob out of bounds is refused in the alert, and nothing is sent
    page.get_by_label("Seats (max_num_seqs)").fill("0")
    page.get_by_role("button", name="Measure this setting live").click()
    expect(page.get_by_role("alert")).to_have_text(
        "Reading the knobs failed: max_num_seqs must be a whole number from 1 to 32; got 0")
    assert len(responses) == 2

    # narrow, dark, reduced motion: no horizontal scroll with every point drawn
    page.set_viewport_size({"width": 375, "height": 900})
    page.emulate_media(color_scheme="dark", reduced_motion="reduce")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "tuning-lab-375px")
